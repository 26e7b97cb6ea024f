"""Summaries of a run: the final numbers as JSON and as markdown tables.

The inputs are the run's per-round records (the lines of metrics.jsonl, see `round_record` in
`codream.build`): ``round``, ``accuracy`` (one float per client), ``accuracy_mean``/``accuracy_std``,
``survivors``/``participants``, ``bytes_sent_per_client``, ``seconds`` and, with DP, ``epsilon`` and
``delta``, and, with a validation split, ``val_accuracy_mean``. Accuracy is reported for the *final*
round; the best round is selected on the validation split and only its test accuracy reported (without
a validation split, the best round by test accuracy is given, labelled as selected on the test set).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["format_round_line", "summarise", "summary_markdown"]


def _total(records, key: str) -> int | None:
    """The sum of `key` over the rounds; None when any round did not release it."""
    values = [r.get(key) for r in records]
    return None if any(v is None for v in values) else sum(int(v) for v in values)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.pstdev(vals) if len(vals) > 1 else 0.0)


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "inf"
        return format(value, spec)
    return str(value)


def format_round_line(record: Mapping[str, Any], total_rounds: int | None = None) -> str:
    """One line per round for the console: accuracy mean ± std, epsilon, survivors, seconds."""
    r = record["round"]
    head = f"round {r}/{total_rounds}" if total_rounds else f"round {r}"
    parts = [f"{head}: acc {100 * record['accuracy_mean']:.1f} ± {100 * record['accuracy_std']:.1f}%"]
    eps = record.get("epsilon")
    parts.append(f"eps {eps:.2f}" if isinstance(eps, int | float) and eps is not None else "eps -")
    parts.append(f"survivors {record.get('survivors', '-')}/{record.get('participants', '-')}")
    parts.append(f"{record.get('seconds', math.nan):.1f}s")
    return " | ".join(parts)


def summarise(
    config: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    *,
    privacy: Mapping[str, Any] | None = None,
    files: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Final numbers of a run, JSON-ready.

    Args:
        config: the resolved run configuration (`RunConfig.to_dict()`).
        records: the per-round records, in round order.
        privacy: the privacy summary (secure+dp), included as is.
        files: names of the files the run wrote, by role.
    Returns:
        A dict with the final per-client accuracies, their mean and spread, the best round (labelled),
        cost per round (seconds, bytes), survivors and privacy spent.
    """
    out: dict[str, Any] = {
        "dataset": config.get("dataset"),
        "aggregation": config.get("aggregation"),
        "clients": config.get("clients"),
        "models": list(config.get("client_models", config.get("models", []))),
        "rounds_planned": config.get("rounds"),
        "rounds_completed": len(records),
        "seed": config.get("seed"),
    }
    if not records:
        out.update(final_accuracy=[], final_accuracy_mean=None, final_accuracy_std=None)
        return out
    last = records[-1]
    final = [float(a) for a in last["accuracy"]]
    mean, std = _mean_std(final)
    validated = [r for r in records if r.get("val_accuracy_mean") is not None]
    if validated:
        best = max(validated, key=lambda rec: rec["val_accuracy_mean"])
        note = "the round with the best mean validation accuracy; its test accuracy is only reported"
    else:
        best = max(records, key=lambda rec: rec["accuracy_mean"])
        note = "max over rounds of the mean test accuracy: selected on the test set, for comparison only"
    seconds = [float(r.get("seconds", 0.0)) for r in records]
    per_client_bytes = [
        float(r["bytes_sent_per_client"]) for r in records if r.get("bytes_sent_per_client") is not None
    ]
    out.update(
        final_accuracy=final,
        final_accuracy_mean=mean,
        final_accuracy_std=std,
        best_round=int(best["round"]),
        best_round_accuracy_mean=float(best["accuracy_mean"]),
        best_round_selected_on="validation" if validated else "test",
        best_round_note=note,
        total_seconds=sum(seconds),
        seconds_per_round=statistics.fmean(seconds),
        bytes_sent_per_client_per_round=statistics.fmean(per_client_bytes) if per_client_bytes else None,
        min_survivors=min(int(r.get("survivors", 0)) for r in records),
        participants=int(last.get("participants", 0)),
        # None: not released (under DP the counts stay on the clients).
        clipped=_total(records, "clipped"),
        overflowed=_total(records, "overflowed"),
        epsilon=last.get("epsilon"),
        delta=last.get("delta"),
    )
    if validated:
        out["best_round_val_accuracy_mean"] = float(best["val_accuracy_mean"])
        out["final_val_accuracy_mean"] = last.get("val_accuracy_mean")
    if "warmup_accuracy" in last or "warmup_accuracy" in records[0]:
        out["warmup_accuracy"] = records[0].get("warmup_accuracy")
    if privacy is not None:
        out["privacy"] = dict(privacy)
    if files:
        out["files"] = dict(files)
    return out


def summary_markdown(
    summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]], config: Mapping[str, Any] | None = None
) -> str:
    """The run as markdown: headline, per-client final accuracy, per-round table, configuration."""
    lines = [
        f"# codream run: {summary.get('dataset')}, {summary.get('clients')} clients, "
        f"aggregation {summary.get('aggregation')}",
        "",
    ]
    if not records:
        lines += ["No round finished.", ""]
        return "\n".join(lines)
    lines += [
        f"- rounds: {summary['rounds_completed']} of {summary['rounds_planned']}",
        f"- final mean client accuracy: **{100 * summary['final_accuracy_mean']:.2f}%** "
        f"(± {100 * summary['final_accuracy_std']:.2f} over clients)",
        _best_round_line(summary),
        f"- time: {summary['total_seconds']:.1f} s in all, {summary['seconds_per_round']:.1f} s per round",
    ]
    if summary.get("bytes_sent_per_client_per_round") is not None:
        lines.append(
            f"- sent per client per round: {_human_bytes(summary['bytes_sent_per_client_per_round'])}"
        )
    lines.append(f"- fewest survivors in a round: {summary['min_survivors']} of {summary['participants']}")
    if summary.get("clipped") is None:
        lines.append(
            "- clipped contributions and saturated coordinates: not released (they stay on the clients)"
        )
    else:
        lines.append(
            f"- clipped contributions: {summary['clipped']}; saturated coordinates: {summary['overflowed']}"
        )
    if summary.get("epsilon") is not None:
        lines.append(f"- privacy spent: epsilon = {summary['epsilon']:.3f} at delta = {summary['delta']:g}")
    for name, b in (summary.get("baselines") or {}).items():
        lines.append(
            f"- baseline {b.get('label', name)} (same partitions, {b['steps_per_round']} local steps per "
            f"round): {100 * b['final_accuracy_mean']:.2f}% (± {100 * b['final_accuracy_std']:.2f})"
        )
    outside = summary.get("outside_guarantee")
    if outside:
        lines.append(
            f"- **outside the privacy guarantee** (computed from private data, kept in `{outside['file']}`, "
            f"not released): {', '.join(f'`{v}`' for v in outside['values'])}"
        )
    lines.append("")

    models = summary.get("models") or []
    lines += ["## Final accuracy per client", "", "| client | model | accuracy |", "|---:|---|---:|"]
    for i, acc in enumerate(summary["final_accuracy"]):
        model = models[i] if i < len(models) else "-"
        lines.append(f"| {i} | {model} | {100 * acc:.2f}% |")
    lines.append("")

    lines += [
        "## Rounds",
        "",
        "| round | mean test acc | std | mean validation acc | survivors | epsilon | seconds |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        val = r.get("val_accuracy_mean")
        lines.append(
            f"| {r['round']} | {100 * r['accuracy_mean']:.2f}% | {100 * r['accuracy_std']:.2f} | "
            f"{'-' if val is None else f'{100 * val:.2f}%'} | "
            f"{r.get('survivors', '-')}/{r.get('participants', '-')} | {_fmt(r.get('epsilon'), '.3f')} | "
            f"{_fmt(r.get('seconds'), '.1f')} |"
        )
    lines.append("")

    if config:
        lines += ["## Configuration", "", "| key | value |", "|---|---|"]
        for key, value in config.items():
            shown = ",".join(map(str, value)) if isinstance(value, list | tuple) else value
            lines.append(f"| {key} | {shown} |")
        lines.append("")
    files = summary.get("files")
    if files:
        lines += ["## Files", ""] + [f"- {role}: `{name}`" for role, name in files.items()] + [""]
    return "\n".join(lines)


def _best_round_line(summary: Mapping[str, Any]) -> str:
    head = f"- best round: {summary['best_round']}"
    test = f"{100 * summary['best_round_accuracy_mean']:.2f}%"
    if summary.get("best_round_selected_on") == "validation":
        val = f"{100 * summary['best_round_val_accuracy_mean']:.2f}%"
        return f"{head}, selected on the validation split ({val}): test accuracy {test}"
    return f"{head} with {test} (selected on the test set; for comparison only)"


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.1f} GiB"
