#!/usr/bin/env python
"""CoDream (default and paper variants) vs local-only, FedAvg and centralized on Fashion-MNIST.

    python benchmarks/federation.py --jobs 2     # CPU size: within an hour on 2 idle cores
    python benchmarks/federation.py --full --device cuda
    python benchmarks/federation.py --size tiny  # a minute: shows that everything runs

Writes runs/bench/<UTC time>/federation.md (or --out; --publish replaces benchmarks/results/federation.md)
with the table and the exact command.
"""

from __future__ import annotations

import logging

from codream.bench.federation import federation_command

main = federation_command("federation", prog=None)

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    main()
