"""Reading ``GET /metrics`` the way Prometheus does: with prometheus-client's own parser.

``scrape(client)`` returns the samples; ``Samples.value(name, **labels)`` sums the samples of
that name whose labels include ``labels`` (0 when there is none, as for a series not yet seen).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Samples:
    samples: list[tuple[str, dict[str, str], float]]

    def value(self, name: str, **labels: str) -> float:
        return sum(
            value
            for sample_name, sample_labels, value in self.samples
            if sample_name == name and labels.items() <= sample_labels.items()
        )

    def names(self) -> set[str]:
        return {name for name, _, _ in self.samples}

    def label_values(self) -> set[str]:
        return {value for _, labels, _ in self.samples for value in labels.values()}


def scrape(client: httpx.Client, **kwargs: Any) -> Samples:
    answer = client.get("/metrics", **kwargs)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return Samples(
        [
            (sample.name, dict(sample.labels), sample.value)
            for family in text_string_to_metric_families(answer.text)
            for sample in family.samples
        ]
    )
