"""Each client's own client-level privacy ledger, and the run's summary over all of them.

Client-level DP is stated against the server, under the zero-out relation (neighbouring federations
differ in one client's contributions being replaced by nothing). The server knows who took part in
every round (it runs secure aggregation with them), so sampling clients into cohorts amplifies nothing
against it: a client's epsilon is the composition, at sample rate 1, of exactly the rounds it took part
in. The client holds this ledger inside its half of the aggregation seam and asks it before its first
masked release of a round leaves: `check` says whether the round still fits, `charge` records it (and
rewrites the ledger file before returning, so the file is never behind what was released).

A charge is keyed by (round, session): the releases of one secure-aggregation session cost one event,
charged once; the same round run again (after a resume, or a retry) is a new session and a new release,
charged again. The ledger never shrinks: opening one over an existing file adopts every charge in it,
and a checkpointed state is merged into the file, never written over it.
"""

from __future__ import annotations

import functools
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError, PrivacyBudgetExceeded
from .accountant import Accountant, Mechanism, PrivacyEvent, create_accountant
from .ledger import RELATION, write_json_atomically

__all__ = [
    "CLIENT_LEDGER_DIR",
    "RELATION",
    "ClientBudgetSummary",
    "ClientCharge",
    "ClientLedger",
    "ClientRoundRow",
    "client_ledger_path",
    "client_round_event",
    "load_client_ledgers",
]

CLIENT_LEDGER_VERSION = 1
CLIENT_LEDGER_DIR = "client_ledgers"  # RUN_DIR/client_ledgers/client-<id>.json


def client_ledger_path(run_dir: str | Path, client_id: int) -> Path:
    """Where a run keeps client `client_id`'s ledger: RUN_DIR/client_ledgers/client-<id>.json."""
    return Path(run_dir) / CLIENT_LEDGER_DIR / f"client-{int(client_id)}.json"


def client_round_event(
    noise_multiplier: float, *, mechanism: Mechanism | str = Mechanism.INTEGER
) -> PrivacyEvent:
    """The event one round costs a client that took part: its z_eff, unamplified (sample rate 1).

    Args:
        noise_multiplier: the round's effective noise multiplier z_eff (all releases composed).
        mechanism: INTEGER for codream's distributed Skellam / discrete Gaussian noise.
    """
    return PrivacyEvent(noise_multiplier=noise_multiplier, sample_rate=1.0, mechanism=Mechanism(mechanism))


@dataclass(frozen=True, slots=True)
class ClientCharge:
    """One charged session: what it cost and the client's epsilon after it."""

    round_index: int
    session: str
    event: PrivacyEvent
    epsilon: float

    @property
    def key(self) -> tuple[int, str]:
        return (self.round_index, self.session)

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round_index,
            "session": self.session,
            "event": self.event.to_dict(),
            "epsilon": self.epsilon,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClientCharge:
        try:
            return cls(
                round_index=int(data["round"]),
                session=str(data["session"]),
                event=PrivacyEvent.from_dict(data["event"]),
                epsilon=float(data["epsilon"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed client ledger charge {dict(data)!r}: {exc}") from None


def _session_text(session: str | bytes) -> str:
    text = session.hex() if isinstance(session, bytes | bytearray) else str(session)
    if not text:
        raise ConfigError("a charge needs a non-empty session id (one per secure-aggregation session)")
    return text


class ClientLedger:
    """One client's client-level budget: enforced before a round's first release, recorded durably.

    Args:
        client_id: the client this ledger belongs to.
        delta: the delta every epsilon is stated at.
        target_epsilon: the client's budget; a round that would exceed it is refused. None: record only.
        accountant: registry name of the accountant; "rdp" for integer noise (PRV refuses it).
        path: JSON file rewritten after every charge. If it exists, the ledger opens it and adopts every
            charge in it (refusing a file recorded for another client, delta, target or accountant).
        not_private: reasons this client's releases are not private whatever its epsilon (e.g. seeded
            noise in a test run); reported beside the epsilon.
    Raises:
        ConfigError: for invalid settings, or an existing file that disagrees with them.
    """

    def __init__(
        self,
        *,
        client_id: int,
        delta: float,
        target_epsilon: float | None,
        accountant: str = "rdp",
        path: str | Path | None = None,
        not_private: Sequence[str] = (),
    ) -> None:
        if isinstance(client_id, bool) or not isinstance(client_id, int) or client_id < 0:
            raise ConfigError(f"client_id must be an integer >= 0, got {client_id!r}")
        if not (0 < delta < 1):
            raise ConfigError(f"delta must be in (0, 1), got {delta}")
        if target_epsilon is not None and not (math.isfinite(target_epsilon) and target_epsilon > 0):
            raise ConfigError(f"target epsilon must be finite and > 0, got {target_epsilon}")
        self.client_id = client_id
        self.delta = float(delta)
        self.target_epsilon = None if target_epsilon is None else float(target_epsilon)
        self.accountant_name = accountant
        self._accountant: Accountant = create_accountant(accountant)
        self._charges: list[ClientCharge] = []
        self.not_private: list[str] = []
        self.path = Path(path) if path is not None else None
        if self.path is not None and self.path.exists():
            self.merge(read_client_ledger_json(self.path), save=False)
        for reason in not_private:
            if reason not in self.not_private:
                self.not_private.append(reason)
        self._save()

    # --- queries ---------------------------------------------------------------------------------------

    @property
    def spent(self) -> float:
        """This client's epsilon so far at the ledger's delta."""
        return self._charges[-1].epsilon if self._charges else 0.0

    def epsilon(self, *, delta: float | None = None) -> float:
        """Epsilon so far, at the ledger's delta or another one (recomputed from the events)."""
        if delta is None or delta == self.delta:
            return self.spent
        return self._accountant.get_epsilon(delta=delta)

    @property
    def remaining(self) -> float | None:
        return None if self.target_epsilon is None else self.target_epsilon - self.spent

    @property
    def charges(self) -> tuple[ClientCharge, ...]:
        return tuple(self._charges)

    @property
    def rounds(self) -> tuple[int, ...]:
        """The rounds charged, in order (a round run twice appears twice)."""
        return tuple(c.round_index for c in self._charges)

    @property
    def participations(self) -> int:
        return len(self._charges)

    @property
    def history(self) -> tuple[PrivacyEvent, ...]:
        return self._accountant.history

    def is_charged(self, round_index: int, *, session: str | bytes) -> bool:
        return (int(round_index), _session_text(session)) in self._keys()

    # --- enforcement and charging ----------------------------------------------------------------------

    def check(self, round_index: int, event: PrivacyEvent, *, session: str | bytes | None = None) -> float:
        """The epsilon this client would have after `event`; nothing is recorded.

        A (round, session) already charged costs nothing more.

        Returns:
            the prospective epsilon.
        Raises:
            PrivacyBudgetExceeded: when it exceeds the target.
            ConfigError: for an amplified event (sample rate below 1) or one the accountant refuses.
        """
        self._check_event(event)
        if session is not None and self.is_charged(round_index, session=session):
            return self.spent
        prospective = self._accountant.epsilon_with([event], delta=self.delta)
        if self.target_epsilon is not None and prospective > self.target_epsilon:
            raise PrivacyBudgetExceeded(
                f"client {self.client_id}: round {round_index} would spend epsilon {prospective:.4g} at "
                f"delta {self.delta:g} (client-level, {RELATION}, {self.accountant_name}), over its target "
                f"{self.target_epsilon:g}; it has taken part in {self.participations} rounds "
                f"(spent {self.spent:.4g}) and releases nothing more."
            )
        return prospective

    def charge(self, round_index: int, event: PrivacyEvent, *, session: str | bytes) -> ClientCharge:
        """Record a round's cost before its first masked release leaves the client.

        Idempotent per (round, session): charging the same session again returns the first charge.
        The file (if any) is rewritten before this returns.

        Args:
            round_index: the federation round.
            event: the round's cost, e.g. `client_round_event(z_eff)`.
            session: the secure-aggregation session id of this attempt at the round (a re-run round
                is a new session and is charged again).
        Returns:
            the charge, with the client's epsilon after it.
        Raises:
            PrivacyBudgetExceeded: the round would exceed the target; nothing is recorded.
            ConfigError: an amplified event, or a session already charged with a different event.
        """
        key = (int(round_index), _session_text(session))
        for existing in self._charges:
            if existing.key == key:
                if existing.event != event:
                    raise ConfigError(
                        f"client {self.client_id}: round {key[0]} session {key[1]} was charged "
                        f"{existing.event} and cannot be charged {event}"
                    )
                return existing
        prospective = self.check(round_index, event)
        entry = ClientCharge(round_index=key[0], session=key[1], event=event, epsilon=prospective)
        self._accountant.add(event)
        self._charges.append(entry)
        self._save()
        return entry

    def mark_not_private(self, reason: str) -> None:
        """Record why this client's releases are not private whatever the epsilon says."""
        if reason not in self.not_private:
            self.not_private.append(reason)
            self._save()

    def _check_event(self, event: PrivacyEvent) -> None:
        if event.sample_rate != 1.0:
            raise ConfigError(
                f"client {self.client_id}: a client-level event against the server has sample rate 1, got "
                f"{event.sample_rate:g}; the server knows who took part in every round, so sampling "
                "amplifies nothing against it"
            )
        self._accountant.check_event(event)

    def _keys(self) -> set[tuple[int, str]]:
        return {c.key for c in self._charges}

    # --- persistence -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": CLIENT_LEDGER_VERSION,
            "kind": "client",
            "client_id": self.client_id,
            "relation": RELATION,
            "accountant": self.accountant_name,
            "delta": self.delta,
            "target_epsilon": self.target_epsilon,
            "epsilon": self.spent,
            "participations": self.participations,
            "not_private": list(self.not_private),
            "charges": [c.to_dict() for c in self._charges],
        }

    def to_dict(self) -> dict[str, Any]:
        return self.state_dict()

    @classmethod
    def from_state(cls, state: Mapping[str, Any], *, path: str | Path | None = None) -> ClientLedger:
        """Rebuild a ledger from `state_dict` (a checkpoint); with `path`, merged with that file.

        The file is the truth: charges it holds beyond the checkpoint stay, and the merge is written back.

        Raises:
            ConfigError: for a malformed state, or a file recorded with other settings.
        """
        _check_version(state)
        try:
            ledger = cls(
                client_id=int(state["client_id"]),
                delta=float(state["delta"]),
                target_epsilon=None
                if state.get("target_epsilon") is None
                else float(state["target_epsilon"]),
                accountant=str(state.get("accountant", "rdp")),
                path=path,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed client ledger state: {exc}") from None
        ledger.merge(state)
        return ledger

    def merge(self, state: Mapping[str, Any], *, save: bool = True) -> int:
        """Adopt every charge of `state` this ledger does not hold yet (the union; nothing is dropped).

        Returns:
            how many charges were added.
        Raises:
            ConfigError: when `state` belongs to another client or was recorded at another delta, target
                or accountant (a budget cannot change under a running client), or is malformed; the
                ledger is then unchanged.
        """
        _check_version(state)
        for key, mine in (
            ("client_id", self.client_id),
            ("accountant", self.accountant_name),
            ("delta", self.delta),
            ("target_epsilon", self.target_epsilon),
        ):
            theirs = state.get(key)
            if key == "delta" or (key == "target_epsilon" and theirs is not None):
                theirs = None if theirs is None else float(theirs)
            if theirs != mine:
                raise ConfigError(
                    f"client ledger {key} {theirs!r} does not match this client's {mine!r}: a recorded "
                    "budget cannot change; start a new run to use another one"
                )
        incoming = [ClientCharge.from_dict(c) for c in state.get("charges", [])]
        mine_by_key = {c.key: c for c in self._charges}
        added: dict[tuple[int, str], ClientCharge] = {}
        for c in incoming:
            self._check_event(c.event)
            known = mine_by_key.get(c.key) or added.get(c.key)
            if known is None:
                added[c.key] = c
            elif known.event != c.event:
                raise ConfigError(
                    f"client {self.client_id}: round {c.round_index} session {c.session} is recorded "
                    f"with two different events, {known.event} and {c.event}"
                )
        for reason in state.get("not_private", []):
            if reason not in self.not_private:
                self.not_private.append(str(reason))
        if added:
            self._rebuild(sorted([*self._charges, *added.values()], key=lambda c: c.round_index))
        if save:
            self._save()
        return len(added)

    def _rebuild(self, charges: list[ClientCharge]) -> None:
        # Recompute every charge's epsilon in the merged order, so the record stays consistent.
        accountant = create_accountant(self.accountant_name)
        rebuilt = []
        for c in charges:
            accountant.add(c.event)
            eps = _epsilon_of(self.accountant_name, accountant.history, self.delta)
            rebuilt.append(ClientCharge(c.round_index, c.session, c.event, eps))
        self._accountant, self._charges = accountant, rebuilt

    def _save(self) -> None:
        if self.path is not None:
            write_json_atomically(self.path, self.state_dict())


@functools.lru_cache(maxsize=4096)
def _epsilon_of(accountant: str, history: tuple[PrivacyEvent, ...], delta: float) -> float:
    # Clients of one run share their events, so a run's ledgers repeat the same few histories.
    acc = create_accountant(accountant)
    for event in history:
        acc.add(event)
    return acc.get_epsilon(delta=delta)


def _check_version(state: Mapping[str, Any]) -> None:
    if state.get("version") != CLIENT_LEDGER_VERSION or state.get("kind") != "client":
        raise ConfigError(
            f"not a client ledger of version {CLIENT_LEDGER_VERSION} "
            f"(version {state.get('version')!r}, kind {state.get('kind')!r})"
        )


def read_client_ledger_json(path: str | Path) -> dict[str, Any]:
    """The client ledger dict in `path`.

    Raises:
        ConfigError: when the file is missing, not JSON, or not a client ledger.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no client ledger at {p}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the client ledger {p}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p} holds no client ledger")
    _check_version(data)
    return data


def load_client_ledgers(run_dir: str | Path) -> list[ClientLedger]:
    """Every client ledger a run directory holds, by client id (read only: nothing is written back).

    Raises:
        ConfigError: for an unreadable ledger file.
    """
    folder = Path(run_dir) / CLIENT_LEDGER_DIR
    if not folder.is_dir():
        return []
    ledgers = []
    for p in sorted(folder.glob("client-*.json")):
        ledgers.append(ClientLedger.from_state(read_client_ledger_json(p)))
    return sorted(ledgers, key=lambda led: led.client_id)


@dataclass(frozen=True, slots=True)
class ClientRoundRow:
    """After one round: how many clients it charged, and the largest and mean epsilon over all clients.

    `round` is the ledger's 0-based round index; reports print it counted from 1, like the run's lines.
    """

    round: int
    charged: int
    max_epsilon: float
    mean_epsilon: float


@dataclass(frozen=True, slots=True)
class ClientBudgetSummary:
    """A run's client-level guarantee against the server: every client's epsilon, the max and the mean.

    Attributes:
        relation: the neighbouring relation the epsilons hold under ("zero-out").
        accountant, delta, target_epsilon: shared by every client's ledger.
        client_epsilons: client id -> its epsilon (unamplified composition of its rounds).
        participations: client id -> how many rounds (sessions) it was charged for.
        rounds: per round, the clients charged and the max and mean epsilon after it.
        not_private: client id -> reasons its releases are not private whatever its epsilon.
    """

    relation: str
    accountant: str
    delta: float
    target_epsilon: float | None
    client_epsilons: dict[int, float]
    participations: dict[int, int]
    rounds: tuple[ClientRoundRow, ...] = ()
    not_private: dict[int, tuple[str, ...]] = field(default_factory=dict)

    @property
    def max_epsilon(self) -> float:
        return max(self.client_epsilons.values(), default=0.0)

    @property
    def mean_epsilon(self) -> float:
        return statistics.fmean(self.client_epsilons.values()) if self.client_epsilons else 0.0

    @property
    def max_client(self) -> int | None:
        if not self.client_epsilons:
            return None
        return max(self.client_epsilons, key=self.client_epsilons.__getitem__)

    @classmethod
    def from_ledgers(cls, ledgers: Iterable[ClientLedger]) -> ClientBudgetSummary:
        """Summarise the clients' ledgers of one run.

        Raises:
            ConfigError: with no ledger, two for one client, or ledgers that disagree on accountant,
                delta or target.
        """
        ledgers = list(ledgers)
        if not ledgers:
            raise ConfigError("a client-level summary needs at least one client ledger")
        first = ledgers[0]
        ids = [led.client_id for led in ledgers]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"two ledgers for one client among {sorted(ids)}")
        for led in ledgers[1:]:
            mine = (led.accountant_name, led.delta, led.target_epsilon)
            theirs = (first.accountant_name, first.delta, first.target_epsilon)
            if mine != theirs:
                raise ConfigError(
                    f"client {led.client_id}'s ledger (accountant, delta, target) {mine} differs from "
                    f"client {first.client_id}'s {theirs}"
                )
        return cls(
            relation=RELATION,
            accountant=first.accountant_name,
            delta=first.delta,
            target_epsilon=first.target_epsilon,
            client_epsilons={led.client_id: led.spent for led in ledgers},
            participations={led.client_id: led.participations for led in ledgers},
            rounds=_round_rows(ledgers),
            not_private={led.client_id: tuple(led.not_private) for led in ledgers if led.not_private},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "relation": self.relation,
            "accountant": self.accountant,
            "delta": self.delta,
            "target_epsilon": self.target_epsilon,
            "clients": len(self.client_epsilons),
            "max_epsilon": self.max_epsilon,
            "mean_epsilon": self.mean_epsilon,
            "max_client": self.max_client,
            "client_epsilons": {str(k): v for k, v in sorted(self.client_epsilons.items())},
            "participations": {str(k): v for k, v in sorted(self.participations.items())},
            "per_round": [
                {
                    "round": r.round,
                    "charged": r.charged,
                    "max_epsilon": r.max_epsilon,
                    "mean_epsilon": r.mean_epsilon,
                }
                for r in self.rounds
            ],
            "not_private": {str(k): list(v) for k, v in sorted(self.not_private.items())},
        }


def _round_rows(ledgers: Sequence[ClientLedger]) -> tuple[ClientRoundRow, ...]:
    rounds = sorted({c.round_index for led in ledgers for c in led.charges})
    rows = []
    for r in rounds:
        charged = sum(1 for led in ledgers for c in led.charges if c.round_index == r)
        after = [max((c.epsilon for c in led.charges if c.round_index <= r), default=0.0) for led in ledgers]
        rows.append(ClientRoundRow(r, charged, max(after), statistics.fmean(after)))
    return tuple(rows)
