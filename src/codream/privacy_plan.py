"""The DP side of a run: calibrated noise, the ledger, and epsilon after each round.

`PrivacyPlan` turns a `RunConfig`'s privacy settings into the noise the seam or the DP-SGD trainers
use, before anything runs (a target that the schedule cannot meet is refused at build time), and reads
the budget spent back from the ledger after every round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .exceptions import ConfigError
from .runconfig import RunConfig

__all__ = ["PrivacyPlan"]


class PrivacyPlan:
    """The DP side of a run: calibrated noise, the ledger, and epsilon after each round.

    For secure+dp it calibrates the per-round noise multiplier to the target (default epsilon 8) over
    the whole planned schedule, for a client that takes part in every round: the server knows each
    round's cohort, so sampling amplifies nothing against it, and each client's own ledger composes
    the rounds it was in (one event per round over its releases), unamplified. A resumed run keeps
    the multiplier it started with, so extending ``--rounds`` cannot quietly weaken the noise; each
    client's ledger then refuses rounds past the target.
    For plain and secure everything is None.
    """

    DEFAULT_EPSILON = 8.0

    def __init__(self, rc: RunConfig, fed_cfg: Any, *, saved: Mapping[str, Any] | None = None) -> None:
        self.rc = rc
        self.example = rc.privacy_unit == "example"
        if self.example:
            self._init_example(rc, fed_cfg)
            return
        self.granularity = "client"
        self.enabled = rc.aggregation == "secure+dp"
        self.delta = rc.delta if self.enabled else None
        self.target_epsilon = rc.epsilon
        self.noise_multiplier: float | None = rc.noise_multiplier
        self.releases_per_round = int(getattr(fed_cfg, "releases_per_round", 1))
        # The cohort's share of the clients (1: every client in every round). It is reported, never
        # accounted: the server knows every cohort, so a client's rounds compose unamplified.
        cohort = getattr(fed_cfg, "clients_per_round", None)
        self.sample_rate = 1.0 if cohort is None else cohort / rc.clients
        self.planned_epsilon: float | None = None
        self.ledger: Any = None
        if not self.enabled:
            return
        if self.noise_multiplier is None and self.target_epsilon is None:
            self.target_epsilon = self.DEFAULT_EPSILON
        if saved and saved.get("noise_multiplier") is not None:
            self.noise_multiplier = float(saved["noise_multiplier"])
            self.planned_epsilon = saved.get("planned_epsilon")
        elif self.noise_multiplier is None:
            self._calibrate()

    def _init_example(self, rc: RunConfig, fed_cfg: Any) -> None:
        """Example-level DP: every client trains with DP-SGD; its noise is calibrated to its data size."""
        from .privacy.ledger import PrivacyLedger

        dc = fed_cfg.distill
        self.granularity = "example"
        self.enabled = True
        self.delta = rc.delta
        self.target_epsilon = rc.epsilon
        if rc.noise_multiplier is None and rc.epsilon is None:
            self.target_epsilon = self.DEFAULT_EPSILON
        self.noise_multiplier = rc.noise_multiplier
        self.releases_per_round = int(getattr(fed_cfg, "releases_per_round", 1))
        self.sample_rate = None  # each client's own batch / data size, set when its trainer is built
        self.batch_size = dc.ce_batch_size
        self.lr, self.momentum = dc.lr, dc.momentum
        self.round_steps = dc.ce_steps_per_round
        # Planned DP-SGD steps per client: the warm-up and every round's interleaved CE steps (never fewer
        # than a client takes; a client outside a round's cohort takes fewer).
        self.dp_steps = dc.warmup_steps + rc.rounds * self.round_steps
        self.planned_epsilon = None
        # The conditional method's class weights come from one charged DP label histogram per client.
        self.label_noise_multiplier = None
        self.label_events: tuple[Any, ...] = ()
        if str(getattr(fed_cfg.method, "value", fed_cfg.method)) == "conditional":
            from .privacy.label_histogram import DEFAULT_LABEL_NOISE_MULTIPLIER, label_histogram_event

            self.label_noise_multiplier = DEFAULT_LABEL_NOISE_MULTIPLIER
            self.label_events = (label_histogram_event(DEFAULT_LABEL_NOISE_MULTIPLIER),)
        self.ledger = PrivacyLedger(
            delta=rc.delta, target_epsilon=self.target_epsilon, granularity="example", accountant="prv"
        )
        self._planned: dict[int, Any] = {}
        self._trainers: dict[int, Any] = {}

    def _example_plan(self, data_size: int) -> Any:
        from .privacy.calibration import ExampleLevelSchedule, plan_noise

        if data_size not in self._planned:
            batch = min(self.batch_size, data_size)
            schedule = ExampleLevelSchedule(
                local_steps=self.dp_steps,
                batch_size=batch,
                data_size=data_size,
                extra_events=self.label_events,
            )
            try:
                self._planned[data_size] = plan_noise(
                    schedule, target_epsilon=self.target_epsilon, delta=self.delta, accountant="prv"
                )
            except ConfigError as exc:
                raise ConfigError(
                    f"--epsilon {self.target_epsilon:g} cannot be met by {self.dp_steps} DP-SGD steps "
                    f"on {data_size} examples at delta {self.delta:g} ({exc}); raise --epsilon or take "
                    "fewer steps"
                ) from None
        return self._planned[data_size]

    def example_noise_multiplier(self, data_size: int) -> float:
        """Example-level: the DP-SGD noise multiplier of a client holding `data_size` examples."""
        if self.noise_multiplier is not None and self.target_epsilon is None:
            return float(self.noise_multiplier)
        plan = self._example_plan(data_size)
        self.planned_epsilon = max(self.planned_epsilon or 0.0, plan.epsilon)
        return float(plan.noise_multiplier)

    def example_node_config(self, data_size: int) -> dict[str, object]:
        """Example-level: what a Flower node holding `data_size` examples needs in its own node config
        to train exactly as the same client does in process (`federation.flower.engine.ExampleDP`)."""
        own: dict[str, object] = {
            "privacy-unit": "example",
            "dp-sgd-noise-multiplier": self.example_noise_multiplier(data_size),
            "delta": float(self.delta),
        }
        if self.target_epsilon is not None:
            own["target-epsilon"] = float(self.target_epsilon)
        if self.label_noise_multiplier is not None:
            own["dp-label-noise-multiplier"] = float(self.label_noise_multiplier)
        return own

    def trainer_factory(self) -> Any:
        """For example-level DP, the factory of each client's DP-SGD trainer; None otherwise."""
        if not self.example:
            return None
        from .privacy.example_level import DPSGDTrainer

        def factory(model: Any, x: Any, y: Any, generator: Any) -> Any:
            n = int(x.shape[0])
            z = self.example_noise_multiplier(n)
            trainer = DPSGDTrainer(
                model,
                x,
                y,
                generator,
                noise_multiplier=z,
                batch_size=min(self.batch_size, n),
                lr=self.lr,
                momentum=self.momentum,
                delta=self.delta,
                label_noise_multiplier=self.label_noise_multiplier,
                target_epsilon=self.target_epsilon,
            )
            self._trainers[len(self._trainers)] = trainer
            return trainer

        return factory

    def before_round(self, round_index: int) -> None:
        """Example-level: refuse a round whose DP-SGD steps would take a client past the target."""
        if self.example and self._trainers and self.target_epsilon is not None:
            from .privacy.example_level import check_example_round

            check_example_round(self.ledger, self._trainers, steps=self.round_steps, round_index=round_index)

    def describe(self) -> str:
        """The line a run prints about its noise before the first round."""
        if self.example:
            zs = sorted({round(t.noise_multiplier, 4) for t in self._trainers.values()})
            return (
                f"example-level DP: DP-SGD on every client, noise multiplier {', '.join(map(str, zs))} over "
                f"{self.dp_steps} planned steps, target epsilon {_fmt_opt(self.target_epsilon)} at delta "
                f"{self.delta:g} (GroupNorm models)"
            )
        # The round's z_eff, the number `codream privacy epsilon --noise-multiplier` takes; its releases
        # each carry sqrt(releases) times more (they compose into the one accounted event).
        per_release = self.noise_multiplier * math.sqrt(self.releases_per_round)
        return (
            f"secure+dp: noise multiplier {self.noise_multiplier:.4g} per round (z_eff; each of its "
            f"{self.releases_per_round} releases {per_release:.4g}), target epsilon "
            f"{_fmt_opt(self.target_epsilon)} at delta {self.delta:g}"
        )

    def after_round(self, round_index: int) -> None:
        """Example-level: record every client's epsilon; the run's is their maximum."""
        if self.example and self._trainers:
            from .privacy.example_level import record_example_round

            record_example_round(self.ledger, self._trainers, round_index=round_index)

    def _calibrate(self) -> None:
        from .privacy.calibration import ClientLevelSchedule, plan_noise

        schedule = ClientLevelSchedule(
            rounds=self.rc.rounds, sample_rate=1.0, releases_per_round=self.releases_per_round
        )
        try:
            plan = plan_noise(schedule, target_epsilon=self.target_epsilon, delta=self.rc.delta)
        except ConfigError as exc:
            raise ConfigError(
                f"--epsilon {self.target_epsilon:g} cannot be met over {self.rc.rounds} rounds at delta "
                f"{self.rc.delta:g} ({exc}); raise --epsilon or --delta, or run fewer --rounds"
            ) from None
        self.noise_multiplier = plan.noise_multiplier
        self.planned_epsilon = plan.epsilon

    def aggregator_options(self) -> dict[str, Any]:
        if not self.enabled or self.example:
            return {}
        return {
            "noise_multiplier": self.noise_multiplier,
            "delta": self.rc.delta,
            "target_epsilon": self.target_epsilon,
        }

    def bind(self, aggregator: Any) -> None:
        """Find the run's ledger the secure+dp seam keeps: every client's own epsilon, round by round
        (example-level keeps its own)."""
        if self.enabled and not self.example:
            self.ledger = getattr(aggregator, "ledger", None)

    def attach(self, path: Path) -> None:
        """Let the ledger rewrite `path` after every round (it exists only once the run dir does)."""
        if self.ledger is not None:
            self.ledger.path = path

    def epsilon(self) -> float | None:
        if not self.enabled or self.ledger is None:
            return None
        return float(self.ledger.spent)

    def summary(self) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        out: dict[str, Any] = {
            "granularity": self.granularity,
            "delta": self.rc.delta,
            "target_epsilon": self.target_epsilon,
            "noise_multiplier": self.noise_multiplier,
            "planned_epsilon": self.planned_epsilon,
            "sample_rate": self.sample_rate,
            "releases_per_round": self.releases_per_round,
            "epsilon": self.epsilon(),
        }
        if self.example and self._trainers:
            trainers = list(self._trainers.values())
            out["noise_multiplier"] = max(t.noise_multiplier for t in trainers)
            out["sample_rate"] = max(t.sample_rate for t in trainers)
            out["dp_sgd_steps"] = self.dp_steps
        if self.ledger is not None:
            out["accountant"] = getattr(self.ledger, "accountant_name", None)
            out["ledger"] = self.ledger.to_dict()
            last = self.ledger.rounds[-1].client_epsilons if self.ledger.rounds else {}
            if last:
                out["client_epsilon_max"] = max(last.values())
                out["client_epsilon_mean"] = sum(last.values()) / len(last)
        if not self.example:
            # The server knows who took part: a client's contribution replaced by nothing is the
            # neighbouring relation the guarantee holds for, and no amplification by sampling applies.
            out["relation"] = "zero-out"
            out["accounting"] = "per client, over the rounds it took part in, unamplified"
        return out

    def state_dict(self) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        return {
            "noise_multiplier": self.noise_multiplier,
            "planned_epsilon": self.planned_epsilon,
            "ledger": self.ledger.state_dict() if self.ledger is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        if state and state.get("ledger") is not None and self.ledger is not None:
            self.ledger.load_state_dict(state["ledger"])


def _fmt_opt(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"
