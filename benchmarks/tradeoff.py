"""What privacy costs: CoDream's accuracy and time per round against epsilon, cross-silo and cross-device.

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/tradeoff.py   # CPU size, one core (~25-30 min)
    .venv/bin/python benchmarks/tradeoff.py --full           # GPU size -> benchmarks/results/tradeoff_full.md
    .venv/bin/python benchmarks/tradeoff.py --quick --json   # tiny size, results as JSON

Writes the Markdown results, `<stem>_accuracy.png`, `<stem>_time.png` and `<stem>.json` (see --out).
The logic lives in `codream.bench.tradeoff` (also `codream bench tradeoff`).
"""

from __future__ import annotations

from codream.bench.tradeoff import cli

if __name__ == "__main__":
    cli()
