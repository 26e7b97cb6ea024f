"""``python -m codream.federation.flower``: tools for a real (multi-machine) Flower deployment.

``app DIR``: write the Flower app folder that ``flwr run DIR <connection>`` launches, from a TOML file
of federation settings (the fields of `FederationConfig`, with ``[dream]`` and ``[distill]`` tables).
``local``: run a whole federation on a local deployment (SuperLink + one SuperNode per client).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tomllib
from pathlib import Path

from ...exceptions import CodreamError
from .app import write_app_dir
from .engine import AGGREGATIONS, config_from_dict, config_to_dict, refuse_unsupported


def _load_config(path: str | None, overrides: dict):
    data = {}
    if path is not None:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    data.update({k: v for k, v in overrides.items() if v is not None})
    config = config_from_dict(data)
    refuse_unsupported(config)
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m codream.federation.flower", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("app", "local"):
        p = sub.add_parser(name)
        if name == "app":
            p.add_argument("dir", help="the app folder to write")
            p.add_argument(
                "--client-nodes",
                default="",
                help='bind client ids to Flower node ids: "0=NODE_ID 1=NODE_ID ..." (the ids that '
                "`flwr supernode register` printed for each client's key)",
            )
        p.add_argument("--config", help="TOML file of FederationConfig fields ([dream], [distill] tables)")
        p.add_argument("--num-clients", type=int)
        p.add_argument("--rounds", type=int)
        p.add_argument("--seed", type=int)
        p.add_argument("--dataset")
        p.add_argument("--aggregation", choices=AGGREGATIONS, default="secure")
        p.add_argument("--threshold", type=int, default=0, help="Shamir threshold (0: default)")
        p.add_argument("--bits", type=int, default=32)
        p.add_argument(
            "--step-timeout", type=float, default=60.0, help="seconds before a silent client is dropped"
        )
        p.add_argument(
            "--setup-timeout", type=float, default=600.0, help="seconds for data loading and warm-up"
        )
        p.add_argument(
            "--out-dir",
            required=name == "local",
            help="results folder (on the SuperLink's machine for `app`)",
        )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = _load_config(
            args.config,
            {
                "num_clients": args.num_clients,
                "rounds": args.rounds,
                "seed": args.seed,
                "dataset": args.dataset,
            },
        )
        if args.command == "app":
            from .serverapp import parse_client_nodes

            client_nodes = parse_client_nodes(args.client_nodes)
            run_config = {
                "handler": "codream",
                "num-nodes": config.num_clients,
                "codream-config": json.dumps(config_to_dict(config)),
                "aggregation": args.aggregation,
                "rounds": config.rounds,
                "threshold": args.threshold,
                "bits": args.bits,
                "step-timeout": args.step_timeout,
                "setup-timeout": args.setup_timeout,
                "wait-timeout": 600.0,
                "out-dir": args.out_dir or "~/codream-flower-results",
                "record-trace": False,
                "client-nodes": " ".join(f"{c}={n}" for c, n in sorted(client_nodes.items())),
            }
            path = write_app_dir(args.dir, run_config)
            print(f"wrote {path / 'pyproject.toml'}; launch it with: flwr run {path} <connection> --stream")
        else:
            from .local import run_flower

            results = run_flower(
                config,
                aggregation=args.aggregation,
                out_dir=args.out_dir,
                threshold=args.threshold or None,
                bits=args.bits,
                step_timeout=args.step_timeout,
                setup_timeout=args.setup_timeout,
            )
            for m in results["rounds"]:
                print(
                    f"round {m['round']}: mean accuracy {m['mean_accuracy']:.4f}, "
                    f"survivors {m['survivors']}, {m['seconds']:.1f} s"
                )
            print(f"results in {Path(args.out_dir) / 'flower-results.json'}")
    except (CodreamError, OSError, tomllib.TOMLDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
