"""What ``RequestMiddleware`` adds to one request, in process: request id, metrics, access log.

    python bench/request_overhead.py [--requests 200000] [--repeats 7]

The middleware wraps a stand-in for a key route (an ASGI app that sends a ready 200 answer, as
the hot routes do, and leaves an ``endpoint`` in the scope as the router would); each variant
is called directly on one event loop, in rounds interleaved with the bare app, so the only
difference is the middleware. The access log variant writes its lines to a real file. The
figures are microseconds of CPU per request (process time: steady when other work shares the
machine), the median of the rounds; ``bench/http.py --metrics-cost`` measures the same end to
end, over HTTP.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, where bench/http.py would shadow the
# standard library's ``http`` package (imported by httpx, through filekv's modules).
_HERE = str(Path(__file__).resolve().parent)
if sys.path and sys.path[0] in (_HERE, ""):
    sys.path.append(sys.path.pop(0))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from _common import CpuWatch, describe_load, machine_info  # noqa: E402
from starlette.datastructures import State  # noqa: E402

from filekv.service.logs import AccessLog  # noqa: E402
from filekv.service.metrics import Metrics, RouteTemplates  # noqa: E402
from filekv.service.middleware import RequestMiddleware  # noqa: E402


async def _endpoint(scope: Any, receive: Any, send: Any) -> None:
    scope["endpoint"] = _endpoint
    scope["path_params"] = {"key": "key:000000000042"}
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"60")],
        }
    )
    await send({"type": "http.response.body", "body": b"{}" * 30, "more_body": False})


class _Route:
    endpoint = staticmethod(_endpoint)
    path_format = "/keys/{key}"


class _Router:
    def __init__(self) -> None:
        self.routes = [_Route()]


def _scope() -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": "/keys/key:000000000042",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"), (b"accept", b"*/*")],
        "client": ("127.0.0.1", 50000),
    }


async def _noop(message: Any) -> None:
    return None


async def _receive() -> Any:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _time(app: Any, requests: int) -> float:
    # CPU time, not wall time: other work on the machine barely moves it (one thread here).
    start = time.process_time()
    for _ in range(requests):
        await app(_scope(), _receive, _noop)
    return (time.process_time() - start) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="filekv-overhead-"))
    log_fd = os.open(folder / "access.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def write(data: bytes) -> None:
        os.write(log_fd, data)

    templates = RouteTemplates(_Router())
    variants: dict[str, Any] = {
        "bare app (no middleware)": _endpoint,
        "request id only (metrics=false, log_level=warning)": RequestMiddleware(
            _endpoint, templates=templates
        ),
        "+ metrics (metrics=true, log_level=warning)": RequestMiddleware(
            _endpoint, templates=templates, metrics=Metrics(State())
        ),
        "+ metrics + JSON access log to a file (the defaults)": RequestMiddleware(
            _endpoint,
            templates=templates,
            metrics=Metrics(State()),
            access_log=AccessLog(log_format="json", log_keys=False, write=write),
        ),
    }
    watch = CpuWatch()
    samples: dict[str, list[float]] = {name: [] for name in variants}

    async def run() -> None:
        for app in variants.values():  # warm-up: the children and tables are made once
            await _time(app, 1000)
        for _ in range(args.repeats):
            for name, app in variants.items():
                samples[name].append(await _time(app, args.requests))

    asyncio.run(run())
    os.close(log_fd)
    lines = sum(1 for _ in (folder / "access.log").open("rb"))
    (folder / "access.log").unlink()
    folder.rmdir()

    for key, value in machine_info(Path(tempfile.gettempdir())).items():
        print(f"{key:>14}: {value}")
    print(f"{'command':>14}: python {' '.join(sys.argv)}")
    print(f"{'other load':>14}: {describe_load(watch.summary())}")
    print(f"{'access log':>14}: {lines:,} lines written")
    bare = statistics.median(samples["bare app (no middleware)"])
    print(f"\n{'variant':<54} {'CPU us/req':>10} {'added':>8}   all rounds")
    for name, values in samples.items():
        median = statistics.median(values)
        rounds = " ".join(f"{v:.2f}" for v in values)
        print(f"{name:<54} {median:>10.2f} {median - bare:>8.2f}   {rounds}")


if __name__ == "__main__":
    main()
