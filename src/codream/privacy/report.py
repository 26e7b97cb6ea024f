"""The privacy-budget report of a run: per-round table, totals, accountant and granularity, and a plot.

It reads the ledger a run wrote (``RUN_DIR/privacy_ledger.json``, either the ledger's own JSON or a run
summary that nests it under ``"ledger"``), so it can be produced at any time, also for a run that
crashed: the ledger is rewritten after every round.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError
from .ledger import LedgerRound, read_ledger_json

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


@dataclass(frozen=True, slots=True)
class BudgetReport:
    """Everything `codream privacy report` shows."""

    source: str
    granularity: str
    accountant: str
    delta: float
    target_epsilon: float | None
    rows: tuple[BudgetRow, ...]
    client_epsilons: dict[int, float]

    @property
    def epsilon(self) -> float:
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "granularity": self.granularity,
            "accountant": self.accountant,
            "delta": self.delta,
            "target_epsilon": self.target_epsilon,
            "rounds": len(self.rows),
            "epsilon": self.epsilon,
            "remaining": self.remaining,
            "accounted_events": self.total_steps,
            "clipped": self.total_clipped,
            "overspent_rounds": [r.round for r in self.rows if r.overspent],
            "client_epsilons": {str(k): v for k, v in sorted(self.client_epsilons.items())},
            "max_client_epsilon": max(self.client_epsilons.values()) if self.client_epsilons else None,
            "per_round": [asdict(r) for r in self.rows],
        }

    def to_text(self) -> str:
        """A plain-text table and totals, for the console."""
        unit = "one client's whole data" if self.granularity == "client" else "one training example"
        lines = [
            f"privacy budget: {self.granularity}-level DP (neighbouring data sets differ by {unit})",
            f"accountant: {self.accountant}   delta: {self.delta:g}   target epsilon: "
            + ("none" if self.target_epsilon is None else f"{self.target_epsilon:g}"),
            "",
        ]
        if self.granularity == "client":
            header = (
                f"{'round':>5}  {'epsilon':>9}  {'+eps':>8}  {'z_eff':>7}  {'q':>7}  {'clipped':>7}  "
                f"{'noise std':>9}"
            )
        else:
            header = f"{'round':>5}  {'epsilon':>9}  {'+eps':>8}  {'max client':>10}"
        lines += [header, "-" * len(header)]
        for r in self.rows:
            mark = "  OVERSPENT" if r.overspent else ""
            if self.granularity == "client":
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
        lines.append(
            f"total: epsilon {self.epsilon:.4f} at delta {self.delta:g} after {len(self.rows)} rounds "
            f"({self.total_steps} accounted events)"
        )
        if self.remaining is not None:
            lines.append(f"remaining budget: {self.remaining:.4f}")
        if self.total_clipped is not None:
            lines.append(f"clipped contributions: {self.total_clipped:.0f}")
        if self.client_epsilons:
            per_client = ", ".join(f"{k}: {v:.3f}" for k, v in sorted(self.client_epsilons.items()))
            lines.append(
                f"per-client epsilon: {per_client}; maximum {max(self.client_epsilons.values()):.4f}"
            )
        return "\n".join(lines)


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
    )


def load_budget_report(run_dir: str | Path) -> BudgetReport:
    """Read the ledger of a run directory (or a ledger file) into a report.

    Raises:
        ConfigError: when there is no readable ledger.
    """
    path = Path(run_dir)
    if path.is_dir():
        path = path / LEDGER_FILE
    data = read_ledger_json(path)
    try:
        rounds = [LedgerRound.from_dict(r) for r in data["rounds"]]
        last_clients = rounds[-1].client_epsilons if rounds else {}
        return BudgetReport(
            source=str(path),
            granularity=str(data["granularity"]),
            accountant=str(data.get("accountant", "unknown")),
            delta=float(data["delta"]),
            target_epsilon=None if data.get("target_epsilon") is None else float(data["target_epsilon"]),
            rows=tuple(_row(r) for r in rounds),
            client_epsilons=dict(last_clients),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"malformed privacy ledger {path}: {exc}") from None


def plot_budget(report: BudgetReport, path: str | Path) -> Path:
    """Write a PNG of epsilon after each round (and the target as a dashed line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if report.rows:
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
