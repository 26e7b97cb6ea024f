"""The privacy ledger: budget enforcement before a round, a durable record after it.

The ledger is asked *before* a round releases anything whether the round's privacy event still fits
the target; if not it raises `PrivacyBudgetExceeded` and nothing happens (unless the user explicitly
allowed overspending). After the round it records the event, the epsilon spent so far and the round's
details, and (when it has a path) rewrites its JSON file atomically, so a crash loses nothing.

Two granularities share the format:
- client-level: the ledger holds the accountant; each round is one `PrivacyEvent` (z_eff, q).
- example-level: each client's DP-SGD trainer holds its own accountant; the ledger records every
  client's epsilon after the round and the maximum, which is the run's guarantee.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError, PrivacyBudgetExceeded
from .accountant import Accountant, PrivacyEvent, create_accountant

__all__ = ["Granularity", "LedgerRound", "PrivacyLedger", "LEDGER_VERSION", "RELATION"]

LEDGER_VERSION = 1
# Client-level DP holds against the server under the zero-out relation: one client's contributions
# replaced by nothing. Whether a client took part is public (the server knows every cohort).
RELATION = "zero-out"


class Granularity(enum.Enum):
    CLIENT = "client"  # neighbouring data sets differ by one client's whole data
    EXAMPLE = "example"  # neighbouring data sets differ by one training example of one client


@dataclass(frozen=True, slots=True)
class LedgerRound:
    """What one round spent.

    Attributes:
        round_index: the federation round (0-based).
        events: the accounted events of the round (client-level: one, (z_eff, q)).
        epsilon: epsilon spent by the run up to and including this round (the maximum over clients
            for example-level).
        epsilon_increment: epsilon minus the previous round's.
        client_epsilons: example-level only: each client's epsilon after this round.
        details: numbers reported by the round (clipped counts, noise std, survivors, ...).
        overspent: True when the round exceeded the target under an explicit override.
        client_accountants: example-level only: each client's accountant state after this round, so a
            resume can restore DP-SGD steps taken after the last checkpoint.
    """

    round_index: int
    events: tuple[PrivacyEvent, ...]
    epsilon: float
    epsilon_increment: float
    client_epsilons: dict[int, float] = field(default_factory=dict)
    details: dict[str, float] = field(default_factory=dict)
    overspent: bool = False
    client_accountants: dict[int, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "round": self.round_index,
            "events": [e.to_dict() for e in self.events],
            "epsilon": self.epsilon,
            "epsilon_increment": self.epsilon_increment,
            "client_epsilons": {str(k): v for k, v in sorted(self.client_epsilons.items())},
            "details": dict(self.details),
            "overspent": self.overspent,
        }
        if self.client_accountants:
            out["client_accountants"] = {str(k): v for k, v in sorted(self.client_accountants.items())}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LedgerRound:
        try:
            return cls(
                round_index=int(data["round"]),
                events=tuple(PrivacyEvent.from_dict(e) for e in data.get("events", [])),
                epsilon=float(data["epsilon"]),
                epsilon_increment=float(data.get("epsilon_increment", 0.0)),
                client_epsilons={int(k): float(v) for k, v in data.get("client_epsilons", {}).items()},
                details={str(k): float(v) for k, v in data.get("details", {}).items() if v is not None},
                overspent=bool(data.get("overspent", False)),
                client_accountants={int(k): dict(v) for k, v in data.get("client_accountants", {}).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed ledger round {dict(data)!r}: {exc}") from None

    def same_release(self, other: LedgerRound) -> bool:
        """Whether `other` records the same charged round (details may have been added since)."""
        return (self.round_index, self.events, self.client_epsilons) == (
            other.round_index,
            other.events,
            other.client_epsilons,
        )


class PrivacyLedger:
    """Budget enforcement and the round-by-round record of spent privacy.

    Args:
        delta: the delta every epsilon is stated at.
        target_epsilon: the budget; None records without enforcing.
        granularity: client- or example-level.
        accountant: registry name of the accountant ("rdp", "prv") for client-level events; for
            example-level, the name of the trainers' accountant, recorded for the report.
        path: JSON file rewritten after every round; None keeps the ledger in memory.
        allow_overspend: go on past the target (each such round is marked overspent).
    Raises:
        ConfigError: for an invalid delta or target.
    """

    def __init__(
        self,
        *,
        delta: float,
        target_epsilon: float | None = None,
        granularity: Granularity | str = Granularity.CLIENT,
        accountant: str = "rdp",
        path: str | Path | None = None,
        allow_overspend: bool = False,
    ) -> None:
        if not (0 < delta < 1):
            raise ConfigError(f"delta must be in (0, 1), got {delta}")
        if target_epsilon is not None and not (math.isfinite(target_epsilon) and target_epsilon > 0):
            raise ConfigError(f"target epsilon must be finite and > 0, got {target_epsilon}")
        try:
            self.granularity = Granularity(granularity)
        except ValueError:
            raise ConfigError(
                f"unknown granularity {granularity!r}; choose one of {[g.value for g in Granularity]}"
            ) from None
        self.delta = float(delta)
        self.target_epsilon = target_epsilon
        self.accountant_name = accountant
        self._accountant: Accountant = create_accountant(accountant)
        self.path = Path(path) if path is not None else None
        self.allow_overspend = allow_overspend
        self.rounds: list[LedgerRound] = []
        # Why the run's releases are not private whatever its epsilon (e.g. seeded DP-SGD coins in a
        # test run); written into the file and printed first by the report.
        self.not_private: list[str] = []

    # --- queries ---------------------------------------------------------------------------------------

    @property
    def spent(self) -> float:
        """Epsilon spent so far at the ledger's delta."""
        return self.rounds[-1].epsilon if self.rounds else 0.0

    def epsilon(self, *, delta: float | None = None) -> float:
        """Epsilon spent so far; at another delta only for client-level (recomputed from the events)."""
        if delta is None or delta == self.delta:
            return self.spent
        if self.granularity is not Granularity.CLIENT:
            raise ConfigError("example-level epsilon is recorded at the ledger's delta only")
        return self._accountant.get_epsilon(delta=delta)

    @property
    def history(self) -> tuple[PrivacyEvent, ...]:
        return self._accountant.history

    def mark_not_private(self, reason: str) -> None:
        """Record why this run's releases are not private whatever the epsilon says."""
        if reason not in self.not_private:
            self.not_private.append(reason)
            self._save()

    # --- enforcement -----------------------------------------------------------------------------------

    def prospective_epsilon(self, events: Sequence[PrivacyEvent]) -> float:
        """Client-level epsilon after `events` were added; nothing is recorded."""
        self._need(Granularity.CLIENT)
        return self._accountant.epsilon_with(events, delta=self.delta)

    def check(self, events: Sequence[PrivacyEvent], *, round_index: int | None = None) -> float:
        """Refuse a client-level round whose events would exceed the target.

        Returns:
            the epsilon the run would have spent after the round.
        Raises:
            PrivacyBudgetExceeded: when it exceeds the target and overspending was not allowed.
        """
        return self.check_epsilon(self.prospective_epsilon(events), round_index=round_index)

    def check_epsilon(self, prospective: float, *, round_index: int | None = None) -> float:
        """Refuse a round after which the run would have spent `prospective` epsilon, if over target."""
        if self.target_epsilon is not None and prospective > self.target_epsilon and not self.allow_overspend:
            which = f"round {round_index}" if round_index is not None else "the next round"
            raise PrivacyBudgetExceeded(
                f"{which} would spend epsilon {prospective:.4g} at delta {self.delta:g} "
                f"({self.granularity.value}-level, {self.accountant_name}), "
                f"over the target {self.target_epsilon:g}; "
                f"{len(self.rounds)} rounds fit the budget (spent {self.spent:.4g}). "
                "Stop here, raise the target or the noise, or allow overspending explicitly."
            )
        return prospective

    # --- recording -------------------------------------------------------------------------------------

    def record_round(
        self,
        *,
        round_index: int,
        events: Sequence[PrivacyEvent],
        details: Mapping[str, float] | None = None,
    ) -> LedgerRound:
        """Record a client-level round's events (call once the round has released anything)."""
        self._need(Granularity.CLIENT)
        for event in events:
            self._accountant.add(event)
        eps = self._accountant.get_epsilon(delta=self.delta)
        return self._append(round_index, tuple(events), eps, {}, details)

    def record_client_epsilons(
        self,
        *,
        round_index: int,
        client_epsilons: Mapping[int, float],
        details: Mapping[str, float] | None = None,
        client_accountants: Mapping[int, Mapping[str, Any]] | None = None,
    ) -> LedgerRound:
        """Record a round as each client's own epsilon so far; the run's is the maximum.

        Example-level: each client's DP-SGD accountant. Client-level: each client's own ledger, which
        composes the rounds that client took part in. `client_accountants` (each client's accountant
        or ledger `state_dict`) lets a resume restore what a client spent after the last checkpoint.
        """
        if not client_epsilons:
            raise ConfigError("a round record needs at least one client's epsilon")
        eps = max(float(v) for v in client_epsilons.values())
        accountants = {int(k): dict(v) for k, v in (client_accountants or {}).items()}
        return self._append(
            round_index,
            (),
            eps,
            {int(k): float(v) for k, v in client_epsilons.items()},
            details,
            accountants,
        )

    def update_details(self, round_index: int, details: Mapping[str, float]) -> None:
        """Add numbers to an already recorded round (e.g. counts known only when the round closes)."""
        for i, r in enumerate(self.rounds):
            if r.round_index == round_index:
                merged = {**r.details, **{k: float(v) for k, v in details.items()}}
                self.rounds[i] = dataclasses.replace(r, details=merged)
                self._save()
                return
        raise ConfigError(f"round {round_index} is not in the ledger")

    def _append(
        self,
        round_index: int,
        events: tuple[PrivacyEvent, ...],
        eps: float,
        client_eps: dict[int, float],
        details: Mapping[str, float] | None,
        client_accountants: dict[int, dict[str, Any]] | None = None,
    ) -> LedgerRound:
        entry = LedgerRound(
            round_index=round_index,
            events=events,
            epsilon=eps,
            epsilon_increment=eps - self.spent,
            client_epsilons=client_eps,
            details={k: float(v) for k, v in (details or {}).items()},
            overspent=self.target_epsilon is not None and eps > self.target_epsilon,
            client_accountants=client_accountants or {},
        )
        self.rounds.append(entry)
        self._save()
        return entry

    def _need(self, granularity: Granularity) -> None:
        if self.granularity is not granularity:
            raise ConfigError(
                f"this is a {self.granularity.value}-level ledger; the call needs {granularity.value}-level"
            )

    # --- persistence -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": LEDGER_VERSION,
            "granularity": self.granularity.value,
            "accountant": self.accountant_name,
            "delta": self.delta,
            "target_epsilon": self.target_epsilon,
            "allow_overspend": self.allow_overspend,
            "epsilon": self.spent,
            "not_private": list(self.not_private),
            "rounds": [r.to_dict() for r in self.rounds],
        }

    def state_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a ledger saved by `to_dict` (for --resume); the accountant history is rebuilt.

        Raises:
            ConfigError: for another version, granularity, accountant, delta or target epsilon (named: a
                recorded budget cannot change), or bad rounds; the ledger is then unchanged.
        """
        if state.get("version") != LEDGER_VERSION:
            raise ConfigError(f"ledger version {state.get('version')!r} is not {LEDGER_VERSION}")
        for key, mine in (("granularity", self.granularity.value), ("accountant", self.accountant_name)):
            if state.get(key) != mine:
                raise ConfigError(f"ledger {key} {state.get(key)!r} does not match this run's {mine!r}")
        if float(state.get("delta", -1)) != self.delta:
            raise ConfigError(f"ledger delta {state.get('delta')!r} does not match this run's {self.delta:g}")
        recorded = state.get("target_epsilon")
        if (None if recorded is None else float(recorded)) != self.target_epsilon:
            raise ConfigError(
                f"the ledger was recorded with target epsilon {recorded!r}, this run asks for "
                f"{self.target_epsilon!r}: a recorded budget cannot change; resume with the run's own "
                "target, or start a new run"
            )
        rounds = [LedgerRound.from_dict(r) for r in state.get("rounds", [])]
        accountant = create_accountant(self.accountant_name)
        for r in rounds:
            for e in r.events:
                accountant.add(e)
        self.rounds, self._accountant = rounds, accountant
        for reason in state.get("not_private", []):
            if reason not in self.not_private:
                self.not_private.append(str(reason))

    def merge_file(self, path: str | Path) -> int:
        """Resume: keep every round the ledger file at `path` holds, also those past the last checkpoint.

        The file is rewritten as soon as a round is charged, the checkpoint only once a round finishes,
        so the file may hold a round whose release reached the server after the last checkpoint. It
        stays charged (running that round again charges it again): the file is the truth, and this
        ledger (restored from the checkpoint) adopts it rather than overwriting it.

        Returns:
            how many rounds only the file held (now part of this ledger); 0 without a file.
        Raises:
            ConfigError: when the file was recorded at another granularity, accountant, delta or target,
                or disagrees with this ledger on a round both hold; the ledger is then unchanged.
        """
        p = Path(path)
        if not p.exists():
            return 0
        recorded = PrivacyLedger(
            delta=self.delta,
            target_epsilon=self.target_epsilon,
            granularity=self.granularity,
            accountant=self.accountant_name,
        )
        recorded.load_state_dict(read_ledger_json(p))
        mine, theirs = self.rounds, recorded.rounds
        for a, b in zip(mine, theirs, strict=False):
            if not a.same_release(b):
                raise ConfigError(
                    f"the ledger file {p} and the checkpoint disagree on round {a.round_index}; "
                    "refusing to resume rather than lose a charged round"
                )
        added = max(0, len(theirs) - len(mine))
        if added:
            self.rounds, self._accountant = (
                list(mine) + theirs[len(mine) :],
                create_accountant(self.accountant_name),
            )
            for r in self.rounds:
                for e in r.events:
                    self._accountant.add(e)
        for reason in recorded.not_private:
            if reason not in self.not_private:
                self.not_private.append(reason)
        self._save()
        return added

    @classmethod
    def load(cls, path: str | Path, *, path_for_updates: bool = True) -> PrivacyLedger:
        """Read a ledger file (the ledger's own JSON, or a run summary holding it under "ledger")."""
        data = read_ledger_json(path)
        ledger = cls(
            delta=float(data["delta"]),
            target_epsilon=data.get("target_epsilon"),
            granularity=data["granularity"],
            accountant=data.get("accountant", "rdp"),
            path=path if path_for_updates else None,
            allow_overspend=bool(data.get("allow_overspend", False)),
        )
        ledger.load_state_dict(data)
        return ledger

    def _save(self) -> None:
        if self.path is not None:
            write_json_atomically(self.path, self.to_dict())


def write_json_atomically(path: Path, data: Mapping[str, Any]) -> None:
    """Write `data` to `path` through a synced temporary file, so a crash leaves the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ledger-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_ledger_json(path: str | Path) -> dict[str, Any]:
    """The ledger dict in `path`: the ledger's own file, or a run summary that nests it under "ledger".

    Raises:
        ConfigError: when the file is missing, not JSON, or holds no ledger.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no privacy ledger at {p}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the privacy ledger {p}: {exc}") from None
    if isinstance(data, dict) and "rounds" not in data and isinstance(data.get("ledger"), dict):
        data = data["ledger"]
    if not isinstance(data, dict) or "rounds" not in data or "granularity" not in data:
        raise ConfigError(f"{p} holds no privacy ledger (expected 'granularity' and 'rounds')")
    return data
