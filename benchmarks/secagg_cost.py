"""Cost of secure aggregation: seconds and bytes per client and server, against the PRG bound and Flower.

    .venv/bin/python benchmarks/secagg_cost.py --quick --output benchmarks/results/secagg_cost.md
    .venv/bin/python benchmarks/secagg_cost.py --json          # full grid, rows as JSON
    .venv/bin/python benchmarks/secagg_cost.py --scale --quick  # growth in n, up to 2000 clients

The logic lives in `codream.bench.secagg` (also `codream bench secagg`).
"""

from __future__ import annotations

from codream.bench.secagg import cli

if __name__ == "__main__":
    cli()
