"""Differential privacy for codream, at two granularities (see protocols/privacy.md).

- client-level (`secure+dp` aggregation): clip, distributed integer noise; each client's own
  `ClientLedger` charges the rounds it takes part in, unamplified (the server knows the cohorts);
- example-level (`example_level.DPSGDTrainer`): DP-SGD through Opacus on each client.

Accounting is Opacus' (RDP and PRV) behind the `Accountant` ABC; `calibration` turns a target budget
into a noise multiplier; `ledger` enforces the budget and records it round by round; `report` renders it.
Heavy modules (the aggregator, Opacus training, plots) are imported on demand.
"""

from .accountant import (
    Accountant,
    Mechanism,
    PrivacyEvent,
    accountant_names,
    create_accountant,
    register_accountant,
)
from .analysis.composition import effective_noise_multiplier, per_release_noise_multiplier
from .calibration import (
    ClientLevelSchedule,
    ExampleLevelSchedule,
    NoisePlan,
    calibrate_noise_multiplier,
    epsilon_for,
    plan_noise,
)
from .client_ledger import (
    ClientBudgetSummary,
    ClientCharge,
    ClientLedger,
    client_ledger_path,
    client_round_event,
)
from .clipping import ClipCounter, ClipStats, clip_contributions
from .engines import PRVAccountant, RDPAccountant
from .label_histogram import NoisyLabelHistogram, label_histogram_event, release_label_histogram
from .ledger import Granularity, LedgerRound, PrivacyLedger
from .noise import (
    DistributedNoise,
    NoiseKind,
    ShareCalibration,
    noise_generator,
    sample_discrete_gaussian,
    sample_skellam,
)

__all__ = [
    "Accountant",
    "ClientBudgetSummary",
    "ClientCharge",
    "ClientLedger",
    "ClientLevelSchedule",
    "ClipCounter",
    "ClipStats",
    "DistributedNoise",
    "ExampleLevelSchedule",
    "Granularity",
    "LedgerRound",
    "Mechanism",
    "NoiseKind",
    "NoisePlan",
    "NoisyLabelHistogram",
    "PRVAccountant",
    "PrivacyEvent",
    "PrivacyLedger",
    "RDPAccountant",
    "ShareCalibration",
    "accountant_names",
    "calibrate_noise_multiplier",
    "client_ledger_path",
    "client_round_event",
    "clip_contributions",
    "create_accountant",
    "effective_noise_multiplier",
    "epsilon_for",
    "label_histogram_event",
    "noise_generator",
    "per_release_noise_multiplier",
    "plan_noise",
    "register_accountant",
    "release_label_histogram",
    "sample_discrete_gaussian",
    "sample_skellam",
]
