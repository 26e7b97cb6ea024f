"""``python -m codream.federation.flower app DIR --config FILE``: the Flower app folder of a deployment.

FILE is a `codream run` configuration (`codream.runconfig.RunConfig` TOML, a run directory's
config.toml too): the same file `codream run --config` reads, mapped onto the same federation. What a
deployment cannot honour is refused by name (`codream.federation.flower.settings`). ``flwr run DIR
<connection>`` launches the folder; a whole run on this machine is ``codream run --engine flower``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ...exceptions import CodreamError
from ...runconfig import RunConfig
from .app import write_app_dir
from .settings import app_run_config, deployment_notes, node_dp_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m codream.federation.flower", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("app", help="write the Flower app folder of a deployment")
    p.add_argument("dir", help="the app folder to write")
    p.add_argument(
        "--config",
        required=True,
        help="the run's configuration: a `codream run --config` TOML file (keys are the run flags with _)",
    )
    p.add_argument(
        "--client-nodes",
        default="",
        help='bind client ids to Flower node ids: "0=NODE_ID 1=NODE_ID ..." (the ids that '
        "`flwr supernode register` printed for each client's key)",
    )
    p.add_argument(
        "--verify-keys", help='the roster\'s public keys file (needed with secagg_mode = "malicious")'
    )
    p.add_argument("--bits", type=int, default=32, help="ring width of the masked sums")
    p.add_argument(
        "--step-timeout", type=float, default=60.0, help="seconds before a silent client is dropped"
    )
    p.add_argument("--setup-timeout", type=float, default=600.0, help="seconds for data loading and warm-up")
    p.add_argument(
        "--out-dir",
        help="results folder on the SuperLink's machine (default: the config's out, else "
        "~/codream-flower-results)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        from .serverapp import parse_client_nodes

        rc = RunConfig.from_toml(args.config)
        client_nodes = parse_client_nodes(args.client_nodes)
        run_config = app_run_config(
            rc,
            client_nodes=" ".join(f"{c}={n}" for c, n in sorted(client_nodes.items())),
            verify_keys=args.verify_keys,
            bits=args.bits,
            step_timeout=args.step_timeout,
            setup_timeout=args.setup_timeout,
            out_dir=args.out_dir,
        )
        path = write_app_dir(args.dir, run_config)
    except (CodreamError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path / 'pyproject.toml'}; launch it with: flwr run {path} <connection> --stream")
    for note in deployment_notes(rc):
        print(f"note: {note}")
    dp = node_dp_settings(run_config, rc)
    if dp is not None:
        print(f"every SuperNode's --node-config needs: {dp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
