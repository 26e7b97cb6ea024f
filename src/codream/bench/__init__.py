"""Benchmarks as importable code.

`codream bench ...` and the scripts under benchmarks/ share this one implementation. A benchmark writes
its results to a fresh folder under runs/bench/ unless told where (``--out``), or told to replace the
published results under benchmarks/results/ (``--publish``): a trial run never overwrites them.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

__all__ = ["PUBLISHED", "results_path"]

#: Where the committed, published results live.
PUBLISHED = Path("benchmarks/results")


def results_path(filename: str, *, out: str | None, publish: bool) -> Path:
    """The Markdown results file of one benchmark run.

    Args:
        filename: its published name, e.g. "tradeoff.md".
        out: an explicit path (--out), or None.
        publish: replace the published file under benchmarks/results/ (--publish).
    Returns:
        `out`; with `publish`, benchmarks/results/FILENAME; else runs/bench/<UTC time>/FILENAME, in a
        folder that did not exist.
    Raises:
        click.UsageError: both `out` and `publish` given.
    """
    import click

    if out is not None and publish:
        raise click.UsageError("give --out PATH or --publish (benchmarks/results/), not both")
    if out is not None:
        return Path(out)
    if publish:
        return PUBLISHED / filename
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    folder = Path("runs") / "bench" / stamp
    n = 2
    while folder.exists():
        folder = Path("runs") / "bench" / f"{stamp}-{n}"
        n += 1
    return folder / filename
