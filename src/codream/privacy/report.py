"""The privacy-budget report of a run: per-round table, totals, accountant and granularity, and a plot.

It reads the ledgers a run wrote, so it can be produced at any time, also for a run that crashed:
every ledger is rewritten as soon as it changes.

- ``RUN_DIR/client_ledgers/client-<id>.json``: each client's own client-level ledger. Against the
  server these are the guarantee: every client's epsilon (unamplified composition of the rounds it took
  part in, zero-out relation), their maximum and mean.
- ``RUN_DIR/privacy_ledger.json`` (or a run summary nesting it under ``"ledger"``): the run's ledger,
  round by round (example level: every client's DP-SGD epsilon). A client-level one that amplifies by
  sampling is flagged: the server knows every cohort, so it is not a guarantee against the server.

Anything a ledger records as not private (a seeded sampler or seeded noise in a test run) is printed
first.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError
from .client_ledger import CLIENT_LEDGER_DIR, ClientBudgetSummary, load_client_ledgers
from .ledger import RELATION, LedgerRound, read_ledger_json

__all__ = ["BudgetReport", "BudgetRow", "LEDGER_FILE", "load_budget_report", "plot_budget"]

LEDGER_FILE = "privacy_ledger.json"


@dataclass(frozen=True, slots=True)
class BudgetRow:
    """One round of the report. Fields that a granularity does not have are None.

    `round` counts from 1, as `codream run` counts rounds (the ledger file keeps its 0-based index).
    """

    round: int
    epsilon: float
    epsilon_increment: float
    noise_multiplier: float | None
    sample_rate: float | None
    steps: int
    clipped: float | None
    noise_std: float | None
    survivors: float | None
    max_client: int | None
    overspent: bool
    mean_client: float | None = None
    charged: float | None = None


@dataclass(frozen=True, slots=True)
class BudgetReport:
    """Everything `codream privacy report` shows.

    Attributes:
        rows: the run ledger's rounds (empty when the run kept client ledgers only).
        client_epsilons: example level: each client's DP-SGD epsilon after the last round.
        clients: client level: the summary of every client's own ledger, if the run kept them.
        not_private: reasons the run's releases are not private whatever its epsilon.
    """

    source: str
    granularity: str
    accountant: str
    delta: float
    target_epsilon: float | None
    rows: tuple[BudgetRow, ...]
    client_epsilons: dict[int, float]
    clients: ClientBudgetSummary | None = None
    not_private: tuple[str, ...] = ()

    @property
    def epsilon(self) -> float:
        """The run's guarantee: the largest client's epsilon where client ledgers exist."""
        if self.clients is not None:
            return self.clients.max_epsilon
        return self.rows[-1].epsilon if self.rows else 0.0

    @property
    def total_steps(self) -> int:
        return sum(r.steps for r in self.rows)

    @property
    def total_clipped(self) -> float | None:
        values = [r.clipped for r in self.rows if r.clipped is not None]
        return sum(values) if values else None

    @property
    def remaining(self) -> float | None:
        return None if self.target_epsilon is None else self.target_epsilon - self.epsilon

    @property
    def amplified_rates(self) -> tuple[float, ...]:
        """Client level: the sample rates below 1 the run ledger amplified by (none against the server)."""
        if self.granularity != "client":
            return ()
        return tuple(
            sorted({r.sample_rate for r in self.rows if r.sample_rate is not None and r.sample_rate < 1})
        )

    @property
    def warnings(self) -> tuple[str, ...]:
        out = []
        if self.amplified_rates:
            rates = ", ".join(f"{q:g}" for q in self.amplified_rates)
            out.append(
                f"the run ledger amplifies by sampling (q = {rates}); the server knows every cohort, so its "
                "epsilon is NOT a guarantee against the server"
                + ("; the per-client epsilons are" if self.clients is not None else "")
            )
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "granularity": self.granularity,
            "relation": RELATION if self.granularity == "client" else "add/remove one example",
            "accountant": self.accountant,
            "delta": self.delta,
            "target_epsilon": self.target_epsilon,
            "private": not self.not_private,
            "not_private": list(self.not_private),
            "warnings": list(self.warnings),
            "rounds": len(self.rows),
            "epsilon": self.epsilon,
            "remaining": self.remaining,
            "accounted_events": self.total_steps,
            "clipped": self.total_clipped,
            "overspent_rounds": [r.round for r in self.rows if r.overspent],
            "client_epsilons": {str(k): v for k, v in sorted(self.client_epsilons.items())},
            "max_client_epsilon": max(self.client_epsilons.values()) if self.client_epsilons else None,
            "mean_client_epsilon": (
                statistics.fmean(self.client_epsilons.values()) if self.client_epsilons else None
            ),
            "clients": None if self.clients is None else self.clients.to_dict(),
            "per_round": [asdict(r) for r in self.rows],
        }

    def to_text(self) -> str:
        """A plain-text table and totals, for the console."""
        lines = [f"NOT PRIVATE: {reason}" for reason in self.not_private]
        if self.granularity == "client":
            lines.append(
                f"privacy budget: client-level DP against the server ({RELATION}: a client's contributions "
                "replaced by nothing; whether it took part is public)"
            )
        else:
            lines.append(
                "privacy budget: example-level DP (neighbouring data sets differ by one training example)"
            )
        lines += [
            f"accountant: {self.accountant}   delta: {self.delta:g}   target epsilon: "
            + ("none" if self.target_epsilon is None else f"{self.target_epsilon:g}"),
            *(f"WARNING: {w}" for w in self.warnings),
            "",
        ]
        if self.clients is not None:
            lines += _client_lines(self.clients)
        if self.rows:
            lines += self._round_lines()
        return "\n".join(lines)

    def _round_lines(self) -> list[str]:
        lines = []
        if self.clients is not None:
            lines.append("run ledger:")
        per_client = self.granularity == "client" and all(r.max_client is not None for r in self.rows)
        if per_client:
            # The seam's record: every client's own (unamplified) epsilon after each round.
            header = (
                f"{'round':>5}  {'max eps':>9}  {'+eps':>8}  {'mean eps':>9}  {'charged':>7}  "
                f"{'survivors':>9}  {'max client':>10}"
            )
        elif self.granularity == "client":
            header = (
                f"{'round':>5}  {'epsilon':>9}  {'+eps':>8}  {'z_eff':>7}  {'q':>7}  {'clipped':>7}  "
                f"{'noise std':>9}"
            )
        else:
            header = f"{'round':>5}  {'epsilon':>9}  {'+eps':>8}  {'max client':>10}"
        lines += [header, "-" * len(header)]
        for r in self.rows:
            mark = "  OVERSPENT" if r.overspent else ""
            if per_client:
                lines.append(
                    f"{r.round:>5}  {r.epsilon:>9.4f}  {r.epsilon_increment:>8.4f}  "
                    f"{_f(r.mean_client, '9.4f')}  {_f(r.charged, '7.0f')}  {_f(r.survivors, '9.0f')}  "
                    f"{_f(r.max_client, '10d')}{mark}"
                )
            elif self.granularity == "client":
                lines.append(
                    f"{r.round:>5}  {r.epsilon:>9.4f}  {r.epsilon_increment:>8.4f}  "
                    f"{_f(r.noise_multiplier, '7.3f')}  {_f(r.sample_rate, '7.4f')}  "
                    f"{_f(r.clipped, '7.0f')}  {_f(r.noise_std, '9.4g')}{mark}"
                )
            else:
                lines.append(
                    f"{r.round:>5}  {r.epsilon:>9.4f}  {r.epsilon_increment:>8.4f}  "
                    f"{_f(r.max_client, '10d')}{mark}"
                )
        lines.append("")
        last = self.rows[-1].epsilon
        if per_client:
            lines.append(
                f"total: epsilon {last:.4f} at delta {self.delta:g} after {len(self.rows)} rounds "
                "(the largest client's: each client composes the rounds it took part in, unamplified)"
            )
        else:
            lines.append(
                f"total: epsilon {last:.4f} at delta {self.delta:g} after {len(self.rows)} rounds "
                f"({self.total_steps} accounted events)"
            )
        if self.remaining is not None and self.clients is None:
            lines.append(f"remaining budget: {self.remaining:.4f}")
        if self.total_clipped is not None:
            lines.append(f"clipped contributions: {self.total_clipped:.0f}")
        if self.client_epsilons:
            eps = self.client_epsilons
            shown = sorted(eps, key=lambda c: (-eps[c], c))[:10]
            listed = ", ".join(f"{k}: {eps[k]:.3f}" for k in sorted(shown))
            more = f" (the {len(shown)} highest of {len(eps)})" if len(eps) > len(shown) else ""
            lines.append(
                f"per-client epsilon{more}: {listed}; maximum {max(eps.values()):.4f}, "
                f"mean {statistics.fmean(eps.values()):.4f}"
            )
        return lines


def _client_lines(summary: ClientBudgetSummary, shown: int = 10) -> list[str]:
    """Per-client epsilons (the largest `shown`), max, mean and a per-round table."""
    eps = summary.client_epsilons
    worst = sorted(eps, key=lambda c: (-eps[c], c))[:shown]
    lines = [
        f"per-client epsilon (each client's own ledger: the rounds it took part in, unamplified), "
        f"{len(eps)} clients:",
        f"  max {summary.max_epsilon:.4f} (client {summary.max_client}, "
        f"{summary.participations.get(summary.max_client, 0)} rounds)   mean {summary.mean_epsilon:.4f}   "
        f"min {min(eps.values()):.4f}",
        "  highest: " + ", ".join(f"{c}: {eps[c]:.3f} ({summary.participations[c]} rounds)" for c in worst),
    ]
    if summary.target_epsilon is not None:
        at = sum(1 for v in eps.values() if v >= summary.target_epsilon * (1 - 1e-9))
        lines.append(
            f"  target {summary.target_epsilon:g} per client; remaining for the largest: "
            f"{summary.target_epsilon - summary.max_epsilon:.4f}; at the target: {at}"
        )
    for cid, reasons in sorted(summary.not_private.items()):
        lines.append(f"  NOT PRIVATE (client {cid}): " + "; ".join(reasons))
    if summary.rounds:
        header = f"{'round':>5}  {'charged':>7}  {'max eps':>9}  {'mean eps':>9}"
        lines += ["", header, "-" * len(header)]
        lines += [
            f"{r.round + 1:>5}  {r.charged:>7d}  {r.max_epsilon:>9.4f}  {r.mean_epsilon:>9.4f}"
            for r in summary.rounds
        ]
    lines.append("")
    return lines


def _f(value: float | int | None, fmt: str) -> str:
    width = int(fmt.split(".")[0].rstrip("df")) if fmt[0].isdigit() else 0
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-".rjust(width)
    return format(value, fmt)


def _row(r: LedgerRound) -> BudgetRow:
    event = r.events[0] if r.events else None
    details = r.details
    stds = [v for k, v in details.items() if k.startswith("dp_noise_std/")]
    max_client = max(r.client_epsilons, key=r.client_epsilons.__getitem__) if r.client_epsilons else None
    return BudgetRow(
        round=r.round_index + 1,
        epsilon=r.epsilon,
        epsilon_increment=r.epsilon_increment,
        noise_multiplier=event.noise_multiplier if event else details.get("noise_multiplier"),
        sample_rate=event.sample_rate if event else details.get("sample_rate"),
        steps=sum(e.steps for e in r.events) if r.events else int(details.get("steps", 0)),
        clipped=details.get("dp_clipped", details.get("clipped")),
        noise_std=min(stds) if stds else None,
        survivors=details.get("survivors"),
        max_client=max_client,
        overspent=r.overspent,
        mean_client=statistics.fmean(r.client_epsilons.values()) if r.client_epsilons else None,
        charged=details.get("charged_clients"),
    )


def load_budget_report(run_dir: str | Path) -> BudgetReport:
    """Read a run directory's ledgers (or one ledger file and the client ledgers beside it) into a report.

    Raises:
        ConfigError: when there is no readable ledger at all.
    """
    path = Path(run_dir)
    base = path if path.is_dir() else path.parent
    ledger_path = path / LEDGER_FILE if path.is_dir() else path
    clients = load_client_ledgers(base)
    summary = ClientBudgetSummary.from_ledgers(clients) if clients else None
    if summary is not None and not ledger_path.exists():
        reasons = sorted({r for rs in summary.not_private.values() for r in rs})
        return BudgetReport(
            source=str(base / CLIENT_LEDGER_DIR),
            granularity="client",
            accountant=summary.accountant,
            delta=summary.delta,
            target_epsilon=summary.target_epsilon,
            rows=(),
            client_epsilons={},
            clients=summary,
            not_private=tuple(reasons),
        )
    data = read_ledger_json(ledger_path)
    try:
        rounds = [LedgerRound.from_dict(r) for r in data["rounds"]]
        last_clients = rounds[-1].client_epsilons if rounds else {}
        reasons = [str(r) for r in data.get("not_private", [])]
        if summary is not None:
            reasons += [r for rs in summary.not_private.values() for r in rs if r not in reasons]
        return BudgetReport(
            source=str(ledger_path),
            granularity=str(data["granularity"]),
            accountant=str(data.get("accountant", "unknown")),
            delta=float(data["delta"]),
            target_epsilon=None if data.get("target_epsilon") is None else float(data["target_epsilon"]),
            rows=tuple(_row(r) for r in rounds),
            client_epsilons=dict(last_clients),
            clients=summary,
            not_private=tuple(reasons),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"malformed privacy ledger {ledger_path}: {exc}") from None


def plot_budget(report: BudgetReport, path: str | Path) -> Path:
    """Write a PNG of epsilon after each round (and the target as a dashed line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if report.clients is not None and report.clients.rounds:
        rows = report.clients.rounds
        ax.plot(
            [r.round for r in rows],
            [r.max_epsilon for r in rows],
            marker="o",
            markersize=3,
            color="tab:red",
            label=f"largest client epsilon ({report.accountant})",
        )
        ax.plot(
            [r.round for r in rows],
            [r.mean_epsilon for r in rows],
            color="tab:blue",
            label="mean client epsilon",
        )
        if report.target_epsilon is not None:
            ax.axhline(
                report.target_epsilon, linestyle="--", color="gray", label=f"target {report.target_epsilon:g}"
            )
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    elif report.rows:
        ax.plot(
            [r.round for r in report.rows],
            [r.epsilon for r in report.rows],
            marker="o",
            markersize=3,
            color="tab:red",
            label=f"epsilon ({report.accountant})",
        )
        if report.target_epsilon is not None:
            ax.axhline(
                report.target_epsilon, linestyle="--", color="gray", label=f"target {report.target_epsilon:g}"
            )
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no round recorded yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("round")
    ax.set_ylabel(f"epsilon at delta = {report.delta:g}")
    ax.set_title(f"Privacy budget spent ({report.granularity}-level DP)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
