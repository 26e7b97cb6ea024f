"""A small deterministic stand-in for the learning loop, for the CLI tests (see conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class FakeMetrics:
    """The fields of `RoundMetrics.to_dict()` the CLI reads."""

    accuracies: list[float]
    aggregation: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        agg = self.aggregation
        return {
            "accuracies": self.accuracies,
            "participants": agg["participants"],
            "survivors": agg["survivors"],
            "aggregation": {**agg, "clipped": 0, "overflowed": 0},
        }


class FakeFederation:
    """Random-walk "accuracies" from a seeded generator: resuming must restore the generator."""

    def __init__(self, config, aggregator) -> None:
        self.config = config
        self.gen = torch.Generator().manual_seed(config.seed)
        self.round = 0
        self.k = config.num_clients

    def run_round(self, progress=None) -> FakeMetrics:
        for i in range(3):
            if progress:
                progress("dream steps", i + 1, 3)
        self.round += 1
        acc = torch.rand(self.k, generator=self.gen).tolist()
        ids = list(range(self.k))
        return FakeMetrics(
            acc, {"participants": ids, "survivors": ids, "bytes_sent_per_client": dict.fromkeys(ids, 80)}
        )

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "round": self.round}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.round = state["round"]

    @property
    def last_dreams(self):
        g = torch.Generator().manual_seed(self.round)
        x = torch.randn(12, 1, 8, 8, generator=g)
        y = torch.softmax(torch.randn(12, 10, generator=g), dim=1)
        return x, y
