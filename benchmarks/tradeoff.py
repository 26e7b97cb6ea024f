"""What privacy costs: CoDream's accuracy and time per round against epsilon, cross-silo and cross-device.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tradeoff.py --jobs 2 --threads 1  # CPU size, ~20 min
    .venv/bin/python benchmarks/tradeoff.py --full --jobs 16 --threads 1   # GPU size -> tradeoff_full.md
    .venv/bin/python benchmarks/tradeoff.py --quick --json   # tiny size, results as JSON

Writes the Markdown results, `<stem>_accuracy.png`, `<stem>_time.png` and `<stem>.json` in a fresh
runs/bench/<UTC time>/ (or at --out; --publish replaces the published ones in benchmarks/results/).
The logic lives in `codream.bench.tradeoff` (also `codream bench tradeoff`).
"""

from __future__ import annotations

from codream.bench.tradeoff import cli

if __name__ == "__main__":
    cli()
