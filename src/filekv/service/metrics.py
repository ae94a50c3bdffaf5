"""Prometheus metrics: what ``GET /metrics`` exposes, in one registry per application.

Every application builds its own ``CollectorRegistry`` (``Metrics``), never prometheus-client's
global default one: ``create_app`` is a factory, and the tests build many applications in one
process. Three kinds of source, each measured where it is cheapest:

- Per request (``record``, called by ``RequestMiddleware``): ``filekv_http_requests_total``
  by method, route template and status, ``filekv_http_request_duration_seconds`` by method and
  route template, ``filekv_locked_responses_total`` (each 423), kept as plain numbers by
  ``RequestCounts`` (a dict lookup and a few additions a request) and turned into metric
  families on scrape. The route is the template the request matched (``/keys/{key}``,
  ``RouteTemplates``), never the raw path: a key would make a label value each.
- From the engine's background work, through ``Store.observe`` (the engine imports nothing of
  this): ``filekv_fsync_duration_seconds`` and ``filekv_group_commit_batch_size`` per group-
  commit round, ``filekv_compaction_duration_seconds`` per compaction.
- Read when scraped (``_StateCollector``), so no request pays for them: the store's counts and
  sizes from ``Store.stats()``, the transaction lock from the ``TransactionManager``, the login
  failures and live tokens from the ``AuthService``. The scrape runs on the event loop, where the
  transaction manager lives.

Cardinality is bounded: methods outside ``METHODS`` count as ``OTHER``, routes are the
application's own (or ``unmatched``), statuses are three digits.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, MutableMapping
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from starlette.datastructures import State

    from filekv.engine import Store

__all__ = ["METHODS", "UNMATCHED", "Metrics", "RequestCounts", "RouteTemplates"]

METHODS: Final = frozenset({"DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"})
UNMATCHED: Final = "unmatched"  # the route label of a request no route matched (404)

# Seconds. A key read or write takes a fraction of a millisecond in the application; a login
# (argon2) about 25 ms; a commit or a batch waits for an fsync (milliseconds).
REQUEST_BUCKETS: Final = (
    0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
FSYNC_BUCKETS: Final = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
_BUCKET_LABELS: Final = tuple(
    floatToGoString(bound)  # type: ignore[no-untyped-call]
    for bound in REQUEST_BUCKETS
)
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
COMPACTION_BUCKETS: Final = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


class RouteTemplates:
    """The template of the route a request matched (``/keys/{key}``), from its ASGI scope.

    FastAPI's router leaves ``scope["route"]`` only for its own APIRoutes; the plain Starlette
    routes of the hot path leave their ``endpoint``, which is looked up in a table of every
    route's endpoint and template, made at the first request (all routes are in by then).
    """

    def __init__(self, router: Any) -> None:
        self._router = router
        self._by_endpoint: dict[Any, str] | None = None

    def of(self, scope: MutableMapping[str, Any]) -> str:
        route = scope.get("route")
        if route is not None:
            return getattr(route, "path_format", UNMATCHED)
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return UNMATCHED
        table = self._by_endpoint
        if table is None:
            table = self._by_endpoint = self._table()
        return table.get(endpoint, UNMATCHED)

    def _table(self) -> dict[Any, str]:
        table: dict[Any, str] = {}
        for route in self._router.routes:
            endpoint = getattr(route, "endpoint", None) or getattr(route, "app", None)
            template = getattr(route, "path_format", None)
            if endpoint is not None and template is not None:
                table.setdefault(endpoint, template)
        return table


class RequestCounts(Collector):
    """The per-request metrics, kept as plain numbers and turned into metric families on scrape.

    prometheus-client's own ``Counter`` and ``Histogram`` take a lock per increment and walk the
    buckets in Python (5 µs a request, together, measured on these machines); here a request
    costs two dict lookups, a C ``bisect`` and three additions. No lock is needed: the
    middleware that counts and the ``/metrics`` route that reads both run on the event loop.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = {}  # (method, route, status) -> requests
        # (method, route) -> a count per bucket of REQUEST_BUCKETS and one past them (+Inf),
        # then the sum of the seconds
        self.durations: dict[tuple[str, str], list[float]] = {}
        self.locked = 0
        # (method as sent, route, status) -> the labels of its count and its duration histogram
        self._bound: dict[tuple[str, str, int], tuple[tuple[str, str, str], list[float]]] = {}

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request; ``route`` is its template (``RouteTemplates``)."""
        bound = self._bound.get((method, route, status))
        if bound is None:
            bound = self._bind(method, route, status)
        labels, histogram = bound
        self.counts[labels] += 1
        histogram[bisect_left(REQUEST_BUCKETS, seconds)] += 1  # le: the first bound >= seconds
        histogram[-1] += seconds
        if status == 423:
            self.locked += 1

    def _bind(
        self, method: str, route: str, status: int
    ) -> tuple[tuple[str, str, str], list[float]]:
        label_method = method if method in METHODS else "OTHER"
        labels = (label_method, route, str(status))
        self.counts.setdefault(labels, 0)
        histogram = self.durations.setdefault(
            (label_method, route), [0.0] * (len(REQUEST_BUCKETS) + 2)
        )
        # Keyed by the method as sent: the parser only passes the methods it knows (a few
        # dozen), so this dict stays small even when clients send strange ones.
        bound = self._bound[(method, route, status)] = (labels, histogram)
        return bound

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "filekv_http_requests",
            "HTTP requests answered, by method, route template and status.",
            labels=("method", "route", "status"),
        )
        for labels, count in self.counts.items():
            requests.add_metric(labels, count)
        yield requests
        durations = HistogramMetricFamily(
            "filekv_http_request_duration_seconds",
            "Seconds from a request's arrival in the application to the end of its answer.",
            labels=("method", "route"),
        )
        for (method, route), histogram in self.durations.items():
            cumulative = list(accumulate(histogram[:-1]))
            buckets = [(_BUCKET_LABELS[i], cumulative[i]) for i in range(len(REQUEST_BUCKETS))]
            buckets.append(("+Inf", cumulative[-1]))
            durations.add_metric([method, route], buckets, sum_value=histogram[-1])
        yield durations
        yield CounterMetricFamily(
            "filekv_locked_responses",
            "Answers 423 Locked: writes and transactions refused while another client held "
            "the transaction.",
            value=self.locked,
        )


class Metrics:
    """The application's registry, its instruments and the exposition of ``GET /metrics``."""

    def __init__(self, state: State) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = RequestCounts()
        registry.register(self.requests)
        self.fsync_seconds = Histogram(
            "filekv_fsync_duration_seconds",
            "Seconds each group-commit fsync took.",
            buckets=FSYNC_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "filekv_group_commit_batch_size",
            "Records made durable by each group-commit fsync.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.compaction_seconds = Histogram(
            "filekv_compaction_duration_seconds",
            "Seconds each compaction took.",
            buckets=COMPACTION_BUCKETS,
            registry=registry,
        )
        registry.register(_StateCollector(state))
        self.record = self.requests.record

    # -- the engine --------------------------------------------------------------------------

    def watch(self, store: Store) -> None:
        """Have the store report its fsync rounds and compactions here."""
        store.observe(fsync=self._fsync_round, compaction=self.compaction_seconds.observe)

    def _fsync_round(self, seconds: float, records: int) -> None:
        self.fsync_seconds.observe(seconds)
        self.batch_size.observe(records)

    # -- exposition --------------------------------------------------------------------------

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The registry in the format ``accept`` asks for (Prometheus text by default)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class _StateCollector(Collector):
    """The gauges and counters read from the store, the transaction lock and the auth service."""

    def __init__(self, state: State) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        state = self._state
        store: Store | None = getattr(state, "store", None)
        if store is not None and not store.closed:
            stats = store.stats()
            yield _gauge("filekv_keys", "Keys stored.", stats.keys)
            yield _gauge(
                "filekv_disk_bytes", "Bytes of every segment and hint file.", stats.disk_bytes
            )
            yield _gauge(
                "filekv_live_bytes",
                "Bytes the live entries would take once compacted, each as its own record "
                "(above disk_bytes after batches and transactions, which share record headers).",
                stats.live_bytes,
            )
            yield _gauge(
                "filekv_revision", "The store's revision (its latest write).", stats.revision
            )
            yield _gauge("filekv_segments", "Segment files.", stats.segments)
            yield CounterMetricFamily(
                "filekv_compactions",
                "Compactions finished since the server started.",
                value=stats.compactions,
            )
            yield CounterMetricFamily(
                "filekv_recovered_truncations",
                "Torn tails cut off segments when the store was opened at start-up.",
                value=stats.recovered_truncations,
            )
        transactions = getattr(state, "transactions", None)
        if transactions is not None:
            lock = transactions.lock_state()
            yield _gauge(
                "filekv_transaction_active", "1 while a client holds the transaction.", lock.active
            )
            yield _gauge(
                "filekv_transaction_depth", "Levels of the open transaction (0: none).", lock.depth
            )
            yield _gauge(
                "filekv_transaction_held_seconds",
                "Seconds the open transaction has been held (0: none).",
                lock.held_seconds,
            )
        auth = getattr(state, "auth", None)
        if auth is not None:
            yield CounterMetricFamily(
                "filekv_login_failures",
                "Logins refused for a wrong user name or password.",
                value=auth.login_failures,
            )
            yield _gauge(
                "filekv_tokens_active", "Login tokens issued and not expired nor revoked.",
                auth.tokens_active(),
            )  # fmt: skip


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
