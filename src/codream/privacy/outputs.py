"""Which run outputs a DP run's guarantee covers, and which it does not.

A round's record (`codream.cli.run.round_record`, with the engine's own metrics under "federation")
mixes values of three kinds: what the server learns anyway (participants, survivors, bytes, timings,
the schedule), post-processing of what was released under DP (aggregated soft labels' coverage,
the server student's accuracy; under example-level DP also everything computed by the DP models),
and values computed from a client's private data *outside* the accounted mechanisms. In a DP run the
third kind is not written beside the released values: `split_record` moves it to a separate file of
the run directory (`client_private.jsonl`, see `PRIVATE_README`), which is for the operator of a
simulation and stays with the clients in a deployment.

What lies outside depends on the unit of privacy:

- client-level (`secure+dp`): the clients' models are trained on their private data without noise,
  so everything measured on them is outside: test and validation accuracies, cross-entropy,
  warm-up, KD and dream losses.
- example-level (DP-SGD): the models are DP, so their test accuracies and their KD and dream losses
  on released dreams are post-processing; only the losses of DP-SGD's own private batches
  (cross-entropy, warm-up) read private data directly.

Clip and saturation counts of releases are not released under client-level DP (the seam keeps them
on the client) and are counts of post-processed releases under example-level DP.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..exceptions import ConfigError

__all__ = [
    "COVERED_ENGINE_KEYS",
    "OUTSIDE_GUARANTEE",
    "PRIVATE_FILE",
    "PRIVATE_README",
    "describe_outside",
    "learned_outside",
    "merge_record",
    "outside_keys",
    "split_record",
]

#: The run-directory file the values outside the guarantee go to in a DP run.
PRIVATE_FILE = "client_private.jsonl"

_ACCURACY = (
    "accuracy",
    "accuracy_mean",
    "accuracy_std",
    "warmup_accuracy",
    "val_accuracy",
    "val_accuracy_mean",
    "warmup_val_accuracy",
)
_ENGINE_ACCURACY = (
    "accuracies",
    "mean_accuracy",
    "std_accuracy",
    "best_accuracies",
    "best_mean_accuracy",
    "val_accuracies",
    "mean_val_accuracy",
)
_PRIVATE_BATCH_LOSSES = ("ce_loss", "warmup_loss")
_MODEL_LOSSES = ("kd_loss", "dream_loss_start", "dream_loss_end")

#: The engine's round metrics (`federation.simulation.RoundMetrics`) every granularity's guarantee covers:
#: public facts of the protocol, and post-processing of released sums (soft-label coverage and
#: confidence, the server student trained on released dreams).
COVERED_ENGINE_KEYS = (
    "round",
    "student_accuracy",
    "class_coverage",
    "label_confidence",
    "survivors",
    "bytes_sent_per_client",
    "seconds",
    "dream_seconds",
    "dream_steps_per_second",
    "aggregation",
    "participants",
    "evaluated",
    "exchanges",
    "seconds_per_exchange",
)

#: Per unit of privacy: (top-level keys, keys of the engine's "federation" record) outside the guarantee.
OUTSIDE_GUARANTEE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "client": (_ACCURACY, _ENGINE_ACCURACY + _PRIVATE_BATCH_LOSSES + _MODEL_LOSSES),
    "example": ((), _PRIVATE_BATCH_LOSSES),
}

PRIVATE_README = """# What this run directory holds

This run used differential privacy ({granularity}-level). `metrics.jsonl`, `metrics.csv` and
`privacy_ledger.json` hold only values the guarantee covers: what the server learns anyway
(participants, survivors, bytes, timings) and post-processing of what was released under DP.

`{private}` holds, per round, the values computed from the clients' private data outside the
accounted mechanisms: {values}. They are **outside the privacy guarantee**: they are here for the
operator of a simulation, and in a deployment they must stay with the clients. `summary.json`,
`summary.md` and the plots are computed from both files (`summary.json` lists these values under
`outside_guarantee`), and `run.log` keeps the console's lines, which print the round accuracies:
they are operator outputs too, not releases.
"""


def outside_keys(granularity: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(top-level keys, "federation" keys) of a round record outside the guarantee of `granularity`.

    Raises:
        ConfigError: for a granularity other than "client" or "example".
    """
    try:
        return OUTSIDE_GUARANTEE[granularity]
    except KeyError:
        raise ConfigError(
            f"unknown privacy granularity {granularity!r}; choose one of {sorted(OUTSIDE_GUARANTEE)}"
        ) from None


#: A node's 'learned' answer (`federation.round.Learned`): each field and the round-metrics keys built
#: from it. A deployed node keeps a field whose keys lie outside its guarantee instead of sending it.
LEARNED_FIELDS: dict[str, tuple[str, ...]] = {
    "accuracy": _ENGINE_ACCURACY,
    "kd_loss": ("kd_loss",),
    "ce_loss": ("ce_loss",),
    "val_accuracy": ("val_accuracies", "mean_val_accuracy"),
}


def learned_outside(granularity: str | None) -> frozenset[str]:
    """The fields of a node's 'learned' answer outside the guarantee of `granularity` (None: no DP).

    Raises:
        ConfigError: for a granularity other than "client", "example" or None.
    """
    if granularity is None:
        return frozenset()
    _, engine = outside_keys(granularity)
    return frozenset(f for f, keys in LEARNED_FIELDS.items() if set(keys) & set(engine))


def describe_outside(granularity: str) -> list[str]:
    """The names of the values outside the guarantee, as `summary.json` lists them."""
    top, engine = outside_keys(granularity)
    return [*top, *(f"federation.{k}" for k in engine)]


def split_record(record: Mapping[str, Any], granularity: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split one round's record into (covered by the guarantee, outside it); both keep "round".

    The second is empty but for "round" when nothing of the record lies outside.
    """
    top, engine = outside_keys(granularity)
    released = {k: v for k, v in record.items() if k not in top}
    private: dict[str, Any] = {"round": record.get("round")}
    private.update({k: record[k] for k in top if k in record})
    fed = record.get("federation")
    if isinstance(fed, Mapping):
        released["federation"] = {k: v for k, v in fed.items() if k not in engine}
        hidden = {k: fed[k] for k in engine if k in fed}
        if hidden:
            private["federation"] = hidden
    return released, private


def merge_record(released: Mapping[str, Any], private: Mapping[str, Any] | None) -> dict[str, Any]:
    """The whole record again, from its two halves (the operator's view of a simulation)."""
    out = dict(released)
    if not private:
        return out
    for k, v in private.items():
        if k == "federation" and isinstance(v, Mapping):
            out["federation"] = {**dict(out.get("federation") or {}), **v}
        elif k != "round":
            out[k] = v
    return out
