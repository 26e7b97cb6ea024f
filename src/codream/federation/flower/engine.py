"""CoDream over Flower: the one round script over the Flower transport, the same seam halves.

The ServerApp's `CodreamServer` runs `codream.federation.round.RoundLoop`, the round the in-process
engine runs, over `FlowerClients`, a transport that sends each broadcast to the clients' nodes. Each
client lives in its own process (its node's worker, `CodreamNode`), built by the same
`codream.federation.parties.build_client` from the same configuration, and computes its release with
the same `client_release`. The server only ever receives what a client would put on the network:

- ``plain``: the float vector itself (as in the in-process plain seam);
- ``secure`` and ``secure+dp``: the node's own `ClientSeam` (the seam's client half) admits the round's
  plan against the node's own policy, clips, encodes and (secure+dp) adds its own noise share, and its
  secure-aggregation client state masks it; the server's `ServerSeam` and state machine
  (`codream.secagg.server`) unmask and decode only the sum over the survivors.

A node's policy comes from its own node config (``aggregation``: the least mode it releases under,
default ``secure``; ``min-clients``, ``min-threshold``, ``min-survivors``, ``graphs``, ``max-clients``,
``max-vectors``, ``max-vector-length``; DP parameters and ``ledger-dir``), never from the server: a
plan below it is refused and the node releases nothing. Clip and saturation counts ride inside the
masked vector, never beside it.

One federation round is one secure-aggregation session with the round's whole plan of vectors
(`ServerRole.specs`). Exchanges per secure round: session start (advertise keys), key broadcast
(share keys), then per vector a release (masked input) and an unmask request, then one to learn
(acquire the lessons, distil, evaluate): 3 + 2J for J vectors. A plain round takes J + 1. Each is one
Flower message per client, answered within the step timeout; a client that does not answer is
dropped, and the session goes on while at least the threshold remain.

With the same seed, both engines compute the same numbers (`tests/test_transport_equivalence.py`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ...aggregation import (
    AggregateResult,
    ClientPolicy,
    ClientSeam,
    DPPolicy,
    Mode,
    ReleaseKind,
    RoundPlan,
    ServerSeam,
    VectorSpec,
)
from ...exceptions import AbortReason, ConfigError, InvalidMessage, PolicyRefusal, ProtocolAbort
from ...privacy.outputs import learned_outside
from ..config import DistillConfig, DreamConfig, FederationConfig
from ..server import CLASS_WEIGHTS_FILE
from .channel import ClientChannel
from .wire import NodeLimits, Payload, session_fields, session_from_fields

__all__ = [
    "AGGREGATIONS",
    "CodreamNode",
    "CodreamServer",
    "config_from_dict",
    "config_to_dict",
    "append_node_metrics",
    "node_metrics_path",
    "read_node_metrics",
]

log = logging.getLogger(__name__)

AGGREGATIONS = tuple(m.value for m in Mode)


# ------------------------------------------------------------------------------------ configuration
def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "value") and not isinstance(value, int | float | str | bool):  # Enum
        return value.value
    if isinstance(value, float) and math.isinf(value):
        return None  # alpha = inf means IID, as does None
    return value


def config_to_dict(config: FederationConfig) -> dict:
    """A JSON-ready dict of a `FederationConfig` (enums as their values): its form on the wire.

    The server sends it to every node at set-up, and the app folder's ``codream-config`` holds it.
    It is not a file format: an operator writes a `codream.runconfig.RunConfig` file, which
    `codream.federation.flower.settings` maps onto the `FederationConfig`.
    """
    return _plain(dataclasses.asdict(config))


def config_from_dict(d: Mapping[str, object]) -> FederationConfig:
    """Rebuild a `FederationConfig` from its wire form (`config_to_dict`); the dataclasses validate it.

    Raises:
        ConfigError: an unknown or invalid field.
    """
    d = dict(d)
    try:
        dream = DreamConfig(**dict(d.pop("dream", {})))  # type: ignore[arg-type]
        distill = DistillConfig(**dict(d.pop("distill", {})))  # type: ignore[arg-type]
        return FederationConfig(**d, dream=dream, distill=distill)  # type: ignore[arg-type]
    except TypeError as err:
        raise ConfigError(f"invalid federation config: {err}") from None


def refuse_unsupported(config: FederationConfig) -> None:
    """Refuse what this engine does not carry: the student inside the clients' dream loss.

    The adversarial dream term (`dream.w_adv` with a student) runs the server's student on every
    client; the Flower engine does not ship the student's weights to the nodes.

    Raises:
        ConfigError: naming the option, before any process starts.
    """
    if config.distill.student is not None and config.dream.w_adv > 0:
        raise ConfigError(
            "the Flower engine does not send the server's student to the nodes; set dream.w_adv = 0 "
            f"(got {config.dream.w_adv}) or use the simulation engine"
        )


def _node_int(nc: Mapping[str, object], key: str) -> int:
    try:
        return int(nc[key])  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"node config {key} must be an integer, got {nc[key]!r}") from None


def node_policy(node_config: Mapping[str, object]) -> ClientPolicy:
    """The node's own policy, from its node config; what the server asks never changes it.

    Raises:
        ConfigError: a key with an invalid value.
    """
    nc = node_config

    def opt_int(key: str) -> int | None:
        return _node_int(nc, key) if key in nc else None

    limits = {
        field: _node_int(nc, key)
        for key, field in (
            ("max-vectors", "max_vectors"),
            ("max-vector-length", "max_vector_length"),
        )
        if key in nc
    }
    graphs = {g.strip() for g in str(nc.get("graphs", "complete,harary")).split(",") if g.strip()}
    try:
        dp = None
        if "noise-multiplier" in nc:
            # The node's own DP: its noise share and its own budget, whatever the server asks.
            dp = DPPolicy(
                noise_multiplier=float(nc["noise-multiplier"]),  # type: ignore[arg-type]
                delta=float(nc.get("delta", 1e-5)),  # type: ignore[arg-type]
                target_epsilon=float(nc["target-epsilon"]) if "target-epsilon" in nc else None,  # type: ignore[arg-type]
                noise=str(nc.get("noise", "skellam")),
                colluders=int(nc.get("colluders", 0)),  # type: ignore[arg-type]
            )
        return ClientPolicy(
            mode=Mode.parse(str(nc.get("aggregation", Mode.SECURE.value))),
            dp=dp,
            malicious=str(nc.get("malicious", "false")).lower() in ("1", "true", "yes"),
            min_clients=opt_int("min-clients") or 2,
            min_threshold=opt_int("min-threshold"),
            min_survivors=opt_int("min-survivors"),
            graphs=frozenset(graphs),
            **limits,
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid node config: {err}") from None


def _specs_to_fields(specs) -> list[list]:
    return [[s.name, s.length, s.clip_norm, s.kind.value, s.step] for s in specs]


def _specs_from_fields(value: object, *, limit: int = 100_000) -> list[VectorSpec]:
    if not isinstance(value, list) or len(value) > limit:
        raise InvalidMessage("a vector plan must be a list of at most {limit} specs")
    try:
        return [
            VectorSpec(str(n), int(length), float(c), ReleaseKind(kind), int(step))
            for n, length, c, kind, step in value
        ]
    except (TypeError, ValueError, OverflowError) as err:
        raise InvalidMessage(f"malformed vector plan: {err}") from None


def _plan_fields(plan: RoundPlan) -> dict:
    fields: dict[str, object] = {
        "round": plan.round_index,
        "mode": plan.mode.value,
        "participants": list(plan.participants),
        "specs": _specs_to_fields(plan.specs),
        "n_min": plan.n_min,
        "headroom": list(plan.noise_headroom),
    }
    if plan.session is not None:
        fields["session"] = session_fields(plan.session)
    return fields


def _plan_from_fields(f: Mapping[str, object], limits: NodeLimits) -> RoundPlan:
    try:
        mode = Mode(f["mode"])
        session = None
        if mode.secure:
            raw = f["session"]
            if not isinstance(raw, dict):
                raise InvalidMessage("a secure plan needs its session parameters")
            # Bounded before anything is built: a session past the node's max-clients is refused.
            session = session_from_fields(raw, limits)
        headroom = f.get("headroom", [])
        if not isinstance(headroom, list):
            raise InvalidMessage("headroom must be a list")
        return RoundPlan(
            round_index=int(f["round"]),  # type: ignore[arg-type]
            mode=mode,
            participants=tuple(session.client_ids) if session is not None else tuple(f["participants"]),  # type: ignore[arg-type]
            specs=tuple(_specs_from_fields(f["specs"])),
            session=session,
            n_min=int(f.get("n_min", 1)),  # type: ignore[arg-type]
            noise_headroom=tuple(float(h) for h in headroom),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        raise InvalidMessage(f"malformed round plan: {err}") from None


# ------------------------------------------------------------------------------------------ the node
def node_metrics_path(state_dir: str | Path, client_id: int) -> Path:
    """Where a node under DP keeps its own record of each round: the values it withheld (accuracy,
    losses) and, under example-level DP, its epsilon; in its own state-dir."""
    return Path(state_dir) / f"client-{client_id}.metrics.jsonl"


def append_node_metrics(state_dir: str | Path, record: Mapping[str, object]) -> None:
    """Append one round's `record` (with its ``client`` and ``round``) to that node's own file."""
    path = node_metrics_path(state_dir, int(record["client"]))  # type: ignore[call-overload]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(dict(record)) + "\n")


def read_node_metrics(state_dir: str | Path, client_id: int) -> dict[int, dict]:
    """A node's own records by round (0-based); a round run again (resumed) keeps its last record.

    For the operator of a local deployment, who holds every node's files; empty if the node kept none.
    """
    path = node_metrics_path(state_dir, client_id)
    out: dict[int, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                out[int(record["round"])] = record
    return out


@dataclasses.dataclass(frozen=True)
class ExampleDP:
    """A node's own example-level DP, from its node config: every local step on private data is DP-SGD.

    Node config keys: ``privacy-unit = "example"``, ``dp-sgd-noise-multiplier`` (required),
    ``dp-sgd-clip`` (per-example clip norm, default 1.0), ``delta`` (default 1e-5),
    ``target-epsilon`` (optional: the node refuses a warm-up or a round that would take it past it)
    and ``dp-label-noise-multiplier`` (the conditional method's one charged label histogram; without
    it the node releases nothing derived from its labels). The sampling coins and the noise come
    from the OS.
    """

    noise_multiplier: float
    max_grad_norm: float
    delta: float
    target_epsilon: float | None
    batch_size: int
    lr: float
    momentum: float
    label_noise_multiplier: float | None = None

    @classmethod
    def from_node_config(cls, nc: Mapping[str, object], config: FederationConfig) -> ExampleDP | None:
        if str(nc.get("privacy-unit", "client")) != "example":
            return None
        if "dp-sgd-noise-multiplier" not in nc:
            raise ConfigError("privacy-unit = example needs dp-sgd-noise-multiplier in the node config")
        try:
            return cls(
                noise_multiplier=float(nc["dp-sgd-noise-multiplier"]),  # type: ignore[arg-type]
                max_grad_norm=float(nc.get("dp-sgd-clip", 1.0)),  # type: ignore[arg-type]
                delta=float(nc.get("delta", 1e-5)),  # type: ignore[arg-type]
                target_epsilon=float(nc["target-epsilon"]) if "target-epsilon" in nc else None,  # type: ignore[arg-type]
                batch_size=config.distill.ce_batch_size,
                lr=config.distill.lr,
                momentum=config.distill.momentum,
                label_noise_multiplier=float(nc["dp-label-noise-multiplier"])  # type: ignore[arg-type]
                if "dp-label-noise-multiplier" in nc
                else None,
            )
        except (TypeError, ValueError) as err:
            raise ConfigError(f"invalid example-level DP in the node config: {err}") from None

    def trainer_factory(self):
        from ...privacy.example_level import DPSGDTrainer

        def factory(model, x, y, generator):
            return DPSGDTrainer(
                model,
                x,
                y,
                generator,
                noise_multiplier=self.noise_multiplier,
                max_grad_norm=self.max_grad_norm,
                batch_size=min(self.batch_size, int(x.shape[0])),
                lr=self.lr,
                momentum=self.momentum,
                delta=self.delta,
                label_noise_multiplier=self.label_noise_multiplier,
                target_epsilon=self.target_epsilon,
            )

        return factory

    def check(self, trainer, steps: int, client_id: int) -> None:
        """Refuse `steps` more DP-SGD steps that would take this node past its own target."""
        from ...exceptions import PrivacyBudgetExceeded

        if self.target_epsilon is None:
            return
        after = trainer.epsilon_after(steps, delta=self.delta)
        if after > self.target_epsilon:
            raise PrivacyBudgetExceeded(
                f"client {client_id}: {steps} more DP-SGD steps would reach epsilon {after:.3f}, past "
                f"its target {self.target_epsilon:g} at delta {self.delta:g}"
            )


def node_imports(config: Mapping[str, object]) -> list[str]:
    """The ``imports`` key of a node config or run config: modules or .py files, separated by commas
    (Flower configs hold scalars only)."""
    value = config.get("imports", "")
    if not isinstance(value, str):
        raise ConfigError(f"imports must be a comma-separated string of modules or .py files, got {value!r}")
    return [entry.strip() for entry in value.split(",") if entry.strip()]


class CodreamNode:
    """One client, in its node's worker: answers the server's requests with its `ClientRole`.

    Node config keys: ``partition-id`` (its client id, required), ``num-partitions`` (must equal the
    federation's number of clients), optional ``imports`` (the node's own modules or .py files that
    register models and data sets, comma-separated), ``data-dir`` (this machine's data folder), ``dataset``
    and ``seed`` (if given, must agree with the server's configuration), ``torch-threads``, and the
    node's policy (`node_policy`) and ``max-clients`` (the largest session it joins).
    """

    def __init__(self, node_config: Mapping[str, object]) -> None:
        try:
            self.client_id = int(node_config["partition-id"])  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                "a codream SuperNode needs an integer partition-id in its --node-config"
            ) from None
        self.node_config = dict(node_config)
        # The node's own code for user-registered models and data sets: named by its own config,
        # never by the server (a run cannot make a node import anything).
        from ...build import import_modules

        import_modules(node_imports(self.node_config), key="node config imports")
        self.limits = NodeLimits.from_node_config(self.node_config)
        self.policy = dataclasses.replace(node_policy(self.node_config), max_clients=self.limits.max_clients)
        self.role = None
        self.config: FederationConfig | None = None
        self.seam: ClientSeam | None = None
        self._session = None  # this round's secure-aggregation client state
        self._specs: list[VectorSpec] = []
        self._targets = None  # the round's dream targets (B,), as received with its first release
        self._round = -1
        self.private: list[dict] = []  # the values this node withheld under DP, per round (`_keep`)
        # Malicious mode: this node's signing key and the roster's verify keys, from its own files.
        self.signer = None
        self.verify_keys: dict[int, bytes] = {}
        if self.policy.malicious:
            from .keys import load_signing_key, load_verify_keys

            missing = [k for k in ("signing-key", "verify-keys") if k not in self.node_config]
            if missing:
                raise ConfigError(
                    f"a node that demands malicious-server mode needs {' and '.join(missing)} in its node "
                    "config (files provisioned out of band, never by the server)"
                )
            self.signer = load_signing_key(str(self.node_config["signing-key"]))
            self.verify_keys = load_verify_keys(str(self.node_config["verify-keys"]))
            if self.verify_keys.get(self.client_id) != self.signer.public_bytes():
                raise ConfigError(
                    f"the verify keys file lists another key for client {self.client_id} than its signing key"
                )

    # -- dispatch
    def handle(self, request: Payload) -> Payload:
        handler = {
            "setup": self._setup,
            "session": self._start_session,
            "release": self._release,
            "secagg": self._secagg,
            "learn": self._learn,
        }.get(request.kind)
        if handler is None:
            raise InvalidMessage(f"unexpected request {request.kind!r}")
        if request.kind != "setup" and self.role is None:
            raise InvalidMessage(f"{request.kind!r} before setup")
        return handler(request)

    def _setup(self, req: Payload) -> Payload:
        from ...devices import pin_threads
        from ..parties import build_client, load_federation_data

        config = config_from_dict(req.get("config", dict))
        nc = self.node_config
        if "num-partitions" in nc and int(nc["num-partitions"]) != config.num_clients:  # type: ignore[arg-type]
            raise ConfigError(
                f"node says num-partitions={nc['num-partitions']}, the federation has "
                f"{config.num_clients} clients"
            )
        if not 0 <= self.client_id < config.num_clients:
            raise ConfigError(f"partition-id {self.client_id} is outside 0..{config.num_clients - 1}")
        for key, attr in (("dataset", "dataset"), ("seed", "seed")):
            if key in nc and str(nc[key]) != str(getattr(config, attr)):
                raise ConfigError(
                    f"node says {key}={nc[key]!r}, the server's run uses {getattr(config, attr)!r}"
                )
        if "data-dir" in nc:
            config = dataclasses.replace(config, data_dir=str(nc["data-dir"]))
        config = _on_this_machine(config)
        pin_threads(int(nc.get("torch-threads", 1)))  # type: ignore[arg-type]
        asked = Mode.parse(str(req.get("aggregation", str)))
        if asked.rank < self.policy.mode.rank:
            raise PolicyRefusal(
                f"client {self.client_id}: the server asks for {asked.value!r}; this node releases "
                f"under {self.policy.mode.value!r} or stronger only"
            )
        ledger_path = None
        if self.policy.dp is not None and "ledger-dir" in nc:
            from ...privacy.client_ledger import client_ledger_path

            # `ledger-dir` is the folder of the ledger files (a run directory's client_ledgers/).
            ledger_path = Path(str(nc["ledger-dir"])) / client_ledger_path(".", self.client_id).name
        # Stochastic-rounding coins are not secrets; seeding them keeps a secure run reproducible.
        # Under DP they come from the OS, like the noise they are analysed with.
        self.seam = ClientSeam(
            self.client_id,
            self.policy,
            rounding_seed=config.seed if self.policy.dp is None else None,
            ledger_path=ledger_path,
        )
        data = load_federation_data(config)
        self.x_test, self.y_test = data.x_test, data.y_test
        # The validation split the in-process engine carves (same config, same seed): held out of
        # every client's partition, so no node trains on it.
        ds = data.dataset
        self.validation = None if ds.x_val is None else (ds.x_val, ds.y_val)
        self.example_dp = ExampleDP.from_node_config(nc, config)
        factory = None if self.example_dp is None else self.example_dp.trainer_factory()
        self.role = build_client(config, data, self.client_id, factory)
        self.config = config
        self.state_path = (
            Path(str(nc["state-dir"])) / f"client-{self.client_id}.pt" if "state-dir" in nc else None
        )
        resume_round = req.fields.get("resume_round")
        if resume_round is not None and self._restore(int(resume_round)):  # type: ignore[arg-type]
            return Payload("ready", self._facts(data))
        # Warmed up now, once: the round script asks for it when the client is first sampled.
        if self.example_dp is not None:
            self.example_dp.check(self.role.trainer, config.distill.warmup_steps, self.client_id)
        warmup_loss = self.role.warm_up()
        fields = self._facts(data)
        if self.policy.dp is None and self.example_dp is None:  # no loss on private data under DP
            fields["warmup_loss"] = warmup_loss
        return Payload("ready", fields)

    def _facts(self, data) -> dict[str, object]:
        assert self.config is not None and self.role is not None
        return {
            "client_id": self.client_id,
            "model": self.config.client_models()[self.client_id],
            "samples": int(self.role.class_counts.sum()),
            "input_shape": list(data.input_shape),
            "num_classes": data.num_classes,
        }

    # -- resuming
    def _restore(self, resume_round: int) -> bool:
        """Load this node's own state to continue at round `resume_round`; False if it has none yet.

        A client never sampled before has no state: it starts fresh (its warm-up is seeded). State from
        round `resume_round` or later cannot belong to a run resumed there and is refused.
        """
        import torch

        assert self.role is not None
        if self.state_path is None:
            raise ConfigError("a resumed run needs state-dir in every node's config")
        if not self.state_path.exists():
            return False
        state = torch.load(self.state_path, weights_only=False)
        if int(state["round"]) >= resume_round:
            raise ConfigError(
                f"client {self.client_id}: its state is from round {int(state['round']) + 1}, the run "
                f"resumes at round {resume_round + 1}"
            )
        self.role.load_state_dict(state["role"])
        torch.set_rng_state(state["torch_rng"])
        return True

    def _save_state(self) -> None:
        """Write this node's state after a round it learned in (atomically), for a resumed run."""
        import torch

        if self.state_path is None or self.role is None:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        torch.save(
            {"round": self._round, "role": self.role.state_dict(), "torch_rng": torch.get_rng_state()}, tmp
        )
        tmp.replace(self.state_path)

    # -- a round's session
    def _admit(self, req: Payload) -> RoundPlan:
        """Check the server's plan against this node's policy; a refusal releases nothing."""
        assert self.seam is not None
        plan = _plan_from_fields(req.fields, self.limits)
        self.seam.admit(plan)
        self._round = plan.round_index
        self._specs = list(plan.specs)
        return plan

    def _start_session(self, req: Payload) -> Payload:
        from ...secagg.client import start_client

        plan = self._admit(req)
        if not plan.mode.secure:
            return Payload("ok")
        session = plan.session
        assert session is not None
        if session.malicious:
            # The server must not choose whom this node trusts: every key it lists is the one on file.
            for cid in session.client_ids:
                if self.verify_keys.get(cid) != session.verify_key(cid):
                    raise PolicyRefusal(
                        f"client {self.client_id}: the session's verify key of client {cid} is not the "
                        "one in this node's verify keys file"
                    )
        self._session, advert = start_client(session, self.client_id, signer=self.signer)
        return Payload("secagg", arrays={"msg": _blob(advert.to_bytes())})

    def _deliver(self, blob: bytes) -> bytes | None:
        from ...secagg.client import Aborted
        from ...secagg.messages import decode_message

        if self._session is None:
            raise InvalidMessage("secure-aggregation message outside a session")
        self._session, reply = self._session.handle(decode_message(blob))
        if isinstance(self._session, Aborted):
            log.warning(
                "client %d aborted the session: %s (%s)",
                self.client_id,
                self._session.reason.value,
                self._session.detail,
            )
        return None if reply is None else reply.to_bytes()

    def _secagg(self, req: Payload) -> Payload:
        reply = self._deliver(req.blob("msg"))
        return Payload("secagg", arrays={} if reply is None else {"msg": _blob(reply)})

    def _release(self, req: Payload) -> Payload:
        import torch

        from ...secagg.client import Aborted
        from ..round import Broadcast, client_release

        role, seam = self.role, self.seam
        assert role is not None and seam is not None
        if "specs" in req.fields:  # plain rounds carry their plan with each release
            plan = _plan_from_fields(req.fields, self.limits)
            if plan.round_index != self._round or plan.specs != tuple(self._specs):
                self._admit(req)
        j = int(req.get("vector", int))
        if not 0 <= j < len(self._specs):
            raise InvalidMessage(f"vector {j} is not in this round's plan")
        spec = self._specs[j]
        if "msg" in req.arrays:  # the key shares, delivered with the first release
            reply = self._deliver(req.blob("msg"))
            if reply is not None:
                return Payload("secagg", arrays={"msg": _blob(reply)})
        begin = bool(req.fields.get("begin"))
        if begin:
            self._targets = (
                torch.from_numpy(req.array("targets", "int64").copy()) if "targets" in req.arrays else None
            )
        x = torch.from_numpy(req.array("x", "float32").copy()) if "x" in req.arrays else None
        b = Broadcast(
            self._round, spec, x, None if spec.kind is ReleaseKind.CLASS_WEIGHTS else self._targets, begin
        )
        vector = client_release(role, b)
        fields: dict[str, object] = {}
        if seam.plan.mode is Mode.PLAIN:
            if spec.kind is ReleaseKind.DREAM_GRADIENT and role.last_terms is not None:
                fields["loss"] = float(role.last_terms.total)
            return Payload("vector", fields, {"v": seam.prepare(vector)})
        if isinstance(self._session, Aborted) or self._session is None:
            raise ProtocolAbort(AbortReason.UNEXPECTED_VECTOR, "no live session to release into")
        # What this node computed the release from: signed (malicious mode) and keying the masks, so a
        # server that sent nodes different dreams or targets cannot unmask a sum over them.
        self._session, message = self._session.submit(seam.prepare(vector), b.context())
        return Payload("secagg", fields, {} if message is None else {"msg": _blob(message.to_bytes())})

    def _learn(self, req: Payload) -> Payload:
        """Acquire the lessons (dreams and target logits, split by `sizes`), distil, evaluate."""
        import torch

        role = self.role
        assert role is not None
        x = torch.from_numpy(req.array("x", "float32").copy())
        y = torch.from_numpy(req.array("y", "float32").copy())
        sizes = [int(n) for n in req.array("sizes", "int64")]
        if x.shape[0] != y.shape[0] or sum(sizes) != x.shape[0] or any(n <= 0 for n in sizes):
            raise InvalidMessage(f"lessons of sizes {sizes} do not split {x.shape[0]} dreams")
        if self.example_dp is not None:  # refused, releasing nothing, past this node's own budget
            assert self.config is not None
            self.example_dp.check(role.trainer, self.config.distill.ce_steps_per_round, self.client_id)
        for xb, yb in zip(torch.split(x, sizes), torch.split(y, sizes), strict=True):
            role.acquire(xb, yb)
        stats = role.distill()
        acc = role.evaluate(self.x_test, self.y_test)  # on the public test set
        self._session = None
        self._save_state()
        measured = {"accuracy": acc, "kd_loss": stats.kd_loss, "ce_loss": stats.ce_loss}
        if self.validation is not None:  # on the held-out split, which no client trains on
            measured["val_accuracy"] = role.evaluate(*self.validation)
        # What lies outside this node's guarantee stays here: under client-level DP its model is
        # trained on its private data without noise, so even its test accuracy is not sent.
        kept = learned_outside(self.granularity)
        if self.granularity is not None:
            record = {k: v for k, v in measured.items() if k in kept}
            if self.example_dp is not None:  # public, as every client's epsilon in a run's ledger
                record["epsilon"] = float(role.trainer.epsilon(delta=self.example_dp.delta))
            self._keep(record)
        return Payload("learned", {k: v for k, v in measured.items() if k not in kept})

    @property
    def granularity(self) -> str | None:
        """This node's unit of privacy: "client" (its own noise share), "example" (DP-SGD) or None."""
        if self.policy.dp is not None:
            return "client"
        return None if getattr(self, "example_dp", None) is None else "example"

    def _keep(self, values: Mapping[str, float]) -> None:
        """Record a round on this node (`node_metrics_path`): in memory, and in its state-dir if any."""
        record = {"round": self._round, "client": self.client_id, **values}
        self.private.append(record)
        if self.state_path is not None:
            append_node_metrics(self.state_path.parent, record)


def _on_this_machine(config: FederationConfig) -> FederationConfig:
    """`config` with device "auto" resolved here: each machine of a deployment picks its own.

    Raises:
        ConfigError: a device this machine does not have.
    """
    from ...devices import resolve_device

    return dataclasses.replace(config, device=str(resolve_device(config.device)))


def _jsonable_default(obj):
    """numpy scalars and arrays in a metrics record, as JSON numbers and lists."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _blob(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def _setup_facts(p: Payload) -> tuple[tuple[int, ...], int, float | None]:
    """A node's set-up answer: (input shape, number of classes, warm-up loss); InvalidMessage if not."""
    return (
        p.integers("input_shape", max_len=8, minimum=1, maximum=1 << 16),
        p.integer("num_classes", minimum=1, maximum=1 << 20),
        p.number("warmup_loss", default=None),
    )


def _learned(p: Payload):
    """A node's 'learned' answer as a `Learned`; InvalidMessage if it does not read."""
    from ..round import Learned

    return Learned(
        p.number("accuracy", minimum=0.0, maximum=1.0, default=None),
        p.number("kd_loss", default=None),
        p.number("ce_loss", default=None),
        p.number("val_accuracy", minimum=0.0, maximum=1.0, default=None),
    )


# ---------------------------------------------------------------------------------------- the server
class CodreamServer:
    """The ServerApp's engine: the one round script (`RoundLoop`) over the Flower transport.

    Run config keys (the app command writes them from a `RunConfig` file, see
    `codream.federation.flower.settings`): ``codream-config`` (JSON of `config_to_dict`), ``aggregation``
    ("plain", "secure" or "secure+dp"), ``rounds``, ``threshold`` (0: the secure aggregator's default),
    ``bits``, ``min-survivors`` (0: the threshold), ``graph`` ("complete" or "harary"), ``malicious`` and
    ``verify-keys`` (malicious-server mode and the roster's public keys file), ``noise-multiplier``
    (secure+dp: the public multiplier the encoding's headroom is sized for), ``data-dir`` (where the
    server reads the public test split for its student), ``out-dir`` (results and the server's state after
    every round), ``resume`` (continue from that state; every node continues from its own, in its
    ``state-dir``), ``record-trace`` (write every sum to trace.npz).

    Each round's metrics hold the nodes' accuracies on the validation split (the one the in-process
    engine carves, from the same configuration) where they report it, and the results name the
    round chosen on it (``best_round``).
    """

    def __init__(self, run_config: Mapping[str, object]) -> None:
        rc = dict(run_config)
        # The server's own modules of user-registered models and data sets (its student and test
        # split): the operator's run config; they run in the ServerApp only, never on a node.
        from ...build import import_modules

        import_modules(node_imports(rc), key="run config imports")
        self.config = config_from_dict(json.loads(str(rc["codream-config"])))
        if "data-dir" in rc:
            self.config = dataclasses.replace(self.config, data_dir=str(rc["data-dir"]))
        self.aggregation = str(rc.get("aggregation", "secure"))
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(
                f"the Flower engine supports aggregation {list(AGGREGATIONS)}, got {self.aggregation!r}"
            )
        refuse_unsupported(self.config)
        self.rounds = int(rc.get("rounds", self.config.rounds))  # type: ignore[arg-type]
        self.threshold = int(rc.get("threshold", 0)) or None  # type: ignore[arg-type]
        self.bits = int(rc["bits"]) if int(rc.get("bits", 0) or 0) else None  # type: ignore[arg-type]
        # secure+dp: the public noise multiplier the encoding's headroom is sized for; each node
        # draws its own noise from its own node config.
        noise_multiplier = float(rc["noise-multiplier"]) if "noise-multiplier" in rc else None  # type: ignore[arg-type]
        self.min_survivors = int(rc.get("min-survivors", 0)) or None  # type: ignore[arg-type]
        self.graph = str(rc.get("graph", "complete"))
        # The share of clients the Harary graph and threshold are chosen to withstand.
        self.corrupt_fraction = float(rc.get("corrupt-fraction", 0.1))  # type: ignore[arg-type]
        # Malicious-server mode: the roster's verify keys, from the public file the nodes hold too.
        self.malicious = str(rc.get("malicious", "false")).lower() in ("1", "true", "yes")
        self.verify_keys: dict[int, bytes] = {}
        if self.malicious:
            from .keys import load_verify_keys

            if "verify-keys" not in rc:
                raise ConfigError("malicious-server mode needs the verify-keys file in the run config")
            self.verify_keys = load_verify_keys(str(rc["verify-keys"]))
        self.out_dir = Path(str(rc.get("out-dir", ".")))
        self.record_trace = bool(rc.get("record-trace", False))
        self.trace: dict[str, np.ndarray] = {}
        # After every round the server writes its state here; `resume` continues from it.
        self.state_path = self.out_dir / "server_state.pt"
        self.resumed: dict | None = None
        if str(rc.get("resume", "false")).lower() in ("1", "true", "yes"):
            import torch

            if not self.state_path.exists():
                raise ConfigError(f"nothing to resume: {self.state_path} does not exist")
            self.resumed = torch.load(self.state_path, weights_only=False)
            if self.resumed["config"] != config_to_dict(self.config):
                raise ConfigError(
                    "the resumed run's codream configuration differs from the one it started with"
                )
            if int(self.resumed["loop"]["round"]) > self.rounds:
                raise ConfigError(
                    f"the run finished {self.resumed['loop']['round']} rounds; rounds = {self.rounds} "
                    "would undo some"
                )
        self.seam = ServerSeam(
            self.aggregation,
            threshold=self.threshold,
            bits=self.bits,
            min_survivors=self.min_survivors,
            noise_multiplier=noise_multiplier,
            graph=self.graph,
            malicious=self.malicious,
            corrupt_fraction=self.corrupt_fraction,
        )
        self.bits = self.seam.bits

    def setup_payload(self) -> Payload:
        fields: dict[str, object] = {
            "config": config_to_dict(self.config),
            "aggregation": self.aggregation,
            "bits": self.bits,
        }
        if self.resumed is not None:  # each node continues from its own state
            fields["resume_round"] = int(self.resumed["loop"]["round"])
        return Payload("setup", fields)

    def _save(self, loop, server) -> None:
        import torch

        self.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        state = {
            "config": config_to_dict(self.config),
            "loop": loop.state_dict(),
            "server": server.state_dict(),
        }
        torch.save(state, tmp)
        tmp.replace(self.state_path)

    def _student_evaluator(self):
        """The student's test accuracy on the public test split, which the server loads itself."""
        if self.config.distill.student is None:
            return None
        from ...evaluation import accuracy
        from ..parties import load_federation_data

        data = load_federation_data(self.config)

        def evaluate(model) -> float:
            return float(accuracy(model, data.x_test, data.y_test))

        return evaluate

    def run(self, channel: ClientChannel, ready: Mapping[int, Payload]) -> dict:
        from ..parties import build_server
        from ..round import RoundLoop, best_round

        cfg = _on_this_machine(self.config)
        facts = channel.read(ready, _setup_facts, what="set-up answer")
        ready = {c: ready[c] for c in facts}
        missing = sorted(set(range(cfg.num_clients)) - set(ready))
        if missing:
            raise ConfigError(f"clients {missing} did not set up; every partition needs its SuperNode")
        shapes = {shape for shape, _, _ in facts.values()}
        classes = {n for _, n, _ in facts.values()}
        if len(shapes) != 1 or len(classes) != 1:
            raise ConfigError(f"clients disagree on the data: input shapes {shapes}, classes {classes}")
        input_shape, num_classes = shapes.pop(), classes.pop()
        server = build_server(cfg, input_shape, num_classes)
        warmups = {c: loss for c, (_, _, loss) in facts.items()}
        clients = FlowerClients(self, channel, warmups)
        loop = RoundLoop(cfg, server, clients, evaluate_student=self._student_evaluator())
        released = self.out_dir / CLASS_WEIGHTS_FILE
        if self.resumed is not None:
            server.load_state_dict(self.resumed["server"])
            loop.load_state_dict(self.resumed["loop"])
            clients.warm_up(range(cfg.num_clients))  # their warm-ups were reported when they ran
        else:  # a fresh run is a new run: what an earlier one released is not its release
            released.unlink(missing_ok=True)
        server.persist_release(released)
        # Every finished round's metrics, kept as they come (rounds.jsonl) so a stopped run loses none:
        # a resumed run keeps those before its state and runs the rest again.
        log_path = self.out_dir / "rounds.jsonl"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.resumed is not None and log_path.exists():
            kept = [line for line in log_path.read_text().splitlines() if line.strip()]
            kept = [line for line in kept if int(json.loads(line)["round"]) < loop.round]
        log_path.write_text("".join(line + "\n" for line in kept))
        rounds = []
        for r in range(loop.round, self.rounds):
            metrics = loop.run_round()
            record = metrics.to_dict()
            with open(log_path, "a") as f:
                f.write(json.dumps(record, default=_jsonable_default) + "\n")
            self._save(loop, server)
            rounds.append(record)
            log.info(
                "round %d: mean acc %.4f, mean validation acc %s, survivors %s, %d exchanges, %.1f s",
                r + 1,
                metrics.mean_accuracy,
                "-" if metrics.mean_val_accuracy is None else f"{metrics.mean_val_accuracy:.4f}",
                list(metrics.survivors),
                metrics.exchanges or 0,
                metrics.seconds,
            )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if server.x is not None and server.soft_labels is not None:
            np.savez(self.out_dir / "dreams.npz", x=server.x.numpy(), soft_labels=server.soft_labels.numpy())
        if self.record_trace:
            np.savez(self.out_dir / "trace.npz", **self.trace)
        # Selected on the validation split; its mean_accuracy is the test accuracy to report.
        best = best_round([json.loads(line) for line in kept] + rounds)
        chosen = None
        if best is not None:
            chosen = {
                "round": int(best["round"]),
                "mean_val_accuracy": float(best["mean_val_accuracy"]),
                "mean_accuracy": float(best["mean_accuracy"]),
                "selected_on": "validation",
            }
        return {
            "engine": "flower",
            "aggregation": self.aggregation,
            "clients": {
                str(c): {k: v for k, v in p.fields.items() if k != "client_id"} for c, p in ready.items()
            },
            "rounds": rounds,
            "best_round": chosen,
        }

    def progress(self, r: int, j: int, stage: str) -> None:
        """Append where the run stands to progress.jsonl (the local harness times its faults by it)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "progress.jsonl", "a") as f:
            f.write(json.dumps({"round": r, "vector": j, "stage": stage, "time": time.time()}) + "\n")

    def trace_sum(self, r: int, j: int, res: AggregateResult, bound: float) -> None:
        if self.record_trace:
            self.trace[f"r{r}_v{j}_total"] = np.asarray(res.total, dtype=np.float64)
            self.trace[f"r{r}_v{j}_contributors"] = np.asarray(res.contributors, dtype=np.int64)
            self.trace[f"r{r}_v{j}_bound"] = np.asarray(bound, dtype=np.float64)


class FlowerClients:
    """The Flower transport of the round script: broadcasts go to the nodes, sums come from the seam.

    Plain rounds carry the plan with every release (one exchange per release). Secure rounds open a
    session (advertise keys, then the key broadcast, whose share deliveries ride with the first
    release) and take two exchanges per release: the masked inputs, then the unmasking.
    """

    def __init__(self, owner: CodreamServer, channel: ClientChannel, warmups: Mapping[int, float | None]):
        self.owner = owner
        self.channel = channel
        self.seam = owner.seam
        self._warmups = dict(warmups)
        self._warm_reported: set[int] = set()
        self.plan: RoundPlan | None = None
        self.state = None  # the secure-aggregation server state
        self.pending: dict = {}
        self.members: list[int] = []
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.clipped = 0
        self.overflowed = 0
        self.vectors = 0
        self.survivors: tuple[int, ...] = ()
        self.server_seconds = 0.0
        self._sent0 = dict(self.channel.bytes_sent)

    # -- the transport's interface
    def available(self, round_index, cohort):
        return [c for c in cohort if c in self.channel.alive]

    def transport_stats(self) -> dict[str, float]:
        return {"exchanges": self.channel.exchanges, "exchange_seconds": self.channel.exchange_seconds}

    def warm_up(self, cohort):
        cold = [c for c in cohort if c not in self._warm_reported]
        self._warm_reported.update(cold)
        if any(loss is None for loss in self._warmups.values()):
            return None  # withheld (DP): the nodes do not release a loss on private data
        return [float(self._warmups[c]) for c in cold]  # type: ignore[arg-type]

    def open(self, round_index: int, cohort, specs) -> None:
        from ...secagg.server import start_server

        self._reset_counters()
        self.round_index = round_index
        session = None
        if self.seam.mode.secure:
            from ...aggregation.client import wire_lengths

            session = self.seam.session_config(
                round_index=round_index,
                participants=cohort,
                lengths=wire_lengths(self.seam.mode, tuple(specs)),
            )
            if self.owner.malicious:
                missing = [c for c in session.client_ids if c not in self.owner.verify_keys]
                if missing:
                    raise ConfigError(f"no verify keys for clients {missing} in the verify-keys file")
                keys = tuple(self.owner.verify_keys[c] for c in session.client_ids)
                session = dataclasses.replace(session, malicious=True, verify_keys=keys)
        self.plan = self.seam.plan(round_index=round_index, participants=cohort, specs=specs, session=session)
        self.participants = list(self.plan.participants)
        self.members = list(self.participants)
        if not self.plan.mode.secure:
            return
        self.owner.progress(round_index, -1, "session")
        self.state = start_server(self.plan.session)
        # Round 0: every client admits the plan, starts its session state and advertises its keys.
        answers = self.channel.broadcast(
            Payload("session", _plan_fields(self.plan)), clients=self.participants
        )
        self._feed(answers)
        outgoing = self._close_stage()
        # Round 1: the key broadcast; clients answer with their encrypted shares.
        self._feed(self._send(outgoing))
        self.pending = self._close_stage()  # the share deliveries travel with the first release
        self.members = sorted(self.pending)

    def release(self, b):
        from ..round import Release

        assert self.plan is not None, "release before open"
        j = self.vectors
        self.owner.progress(self.round_index, j, "release")
        fields: dict[str, object] = {"round": self.round_index, "vector": j}
        arrays: dict[str, np.ndarray] = {}
        if b.x is not None:
            arrays["x"] = b.x.detach().cpu().numpy().astype(np.float32, copy=False)
        if b.begin:
            fields["begin"] = True
            if b.targets is not None:
                arrays["targets"] = b.targets.cpu().numpy().astype(np.int64)
        if self.plan.mode.secure:
            res, losses = self._secure_release(j, fields, arrays, b.context())
        else:
            res, losses = self._plain_release(j, fields, arrays)
        self.vectors += 1
        self.survivors = res.contributors
        if res.clipped:
            self.clipped += res.clipped
        if res.overflowed:
            self.overflowed += res.overflowed
            log.warning(
                "vector %r: %d coordinates saturated in fixed-point encoding", b.spec.name, res.overflowed
            )
        bound = self.seam.quantisation_bound(self.plan, j, len(res.contributors))
        self.owner.trace_sum(self.round_index, j, res, bound)
        return Release(res, tuple(losses))

    def close(self):
        from ...aggregation import RoundReport, SecureStats

        plan = self.plan
        assert plan is not None, "close before open"
        dp_mode = plan.mode is Mode.SECURE_DP
        sent = {c: self.channel.bytes_sent[c] - self._sent0.get(c, 0) for c in self.participants}
        secure = None
        if plan.mode.secure:
            session = plan.session
            assert session is not None
            secure = SecureStats(
                threshold=int(session.threshold),
                degree=int(getattr(session, "degree", 0) or len(self.participants) - 1),
                n_min=plan.n_min,
                aborted=False,
                server_seconds=self.server_seconds,
                client_seconds_mean=math.nan,  # on the nodes: not the server's to see
                client_seconds_max=math.nan,
                bytes_received_per_client_mean=float(np.mean(list(sent.values()))) if sent else 0.0,
            )
        report = RoundReport(
            participants=tuple(self.participants),
            survivors=tuple(self.survivors),
            vectors=self.vectors,
            clipped=None if dp_mode else self.clipped,
            overflowed=None if dp_mode else self.overflowed,
            bytes_sent_per_client=sent,
            bytes_received_by_server=int(sum(sent.values())),
            secure=secure,
        )
        self.plan, self.state, self.pending = None, None, {}
        return report

    def learn(self, lessons, progress):
        import torch

        self.owner.progress(self.round_index, -1, "learn")
        requests = {}
        for c, items in lessons.items():
            if not items:
                continue
            x = torch.cat([xb for xb, _ in items]).to(torch.float32)
            y = torch.cat([yb for _, yb in items]).to(torch.float32)
            sizes = np.asarray([int(xb.shape[0]) for xb, _ in items], dtype=np.int64)
            requests[c] = Payload(
                "learn", {"round": self.round_index}, {"x": x.numpy(), "y": y.numpy(), "sizes": sizes}
            )
        answers = self.channel.exchange(requests)
        learned = self.channel.read(answers, _learned, what="'learned' answer")
        progress("evaluate", len(learned), len(lessons))
        return dict(sorted(learned.items()))

    # -- plain releases
    def _plain_release(self, j: int, fields: dict, arrays: dict):
        assert self.plan is not None
        spec = self.plan.specs[j]
        # The round's plan travels with every release: plain rounds need no session set-up step.
        payload = Payload("release", {**_plan_fields(self.plan), **fields}, arrays)
        answers = self.channel.broadcast(payload, clients=self.participants)
        read = self.channel.read(
            answers,
            lambda a: (
                a.array("v", "float64", shape=(spec.length + 2,), finite=True),
                a.number("loss", default=None),
            ),
            what=f"release of {spec.name!r}",
        )
        vectors = {c: v for c, (v, _) in read.items()}
        losses = [loss for _, loss in read.values() if loss is not None]
        total = np.sum(list(vectors.values()), axis=0) if vectors else np.zeros(spec.length + 2)
        return self.seam.decode(self.plan, j, total, tuple(vectors)), losses

    # -- secure releases
    def _send(self, outgoing: Mapping[int, object], kind: str = "secagg", fields=None, arrays=None):
        requests = {
            c: Payload(kind, dict(fields or {}), {**(arrays or {}), "msg": _blob(m.to_bytes())})
            for c, m in outgoing.items()
            if c in self.channel.alive
        }
        return self.channel.exchange(requests)

    def _feed(self, answers: Mapping[int, Payload]) -> None:
        from ...exceptions import UnexpectedMessage
        from ...secagg.messages import decode_message

        t0 = time.process_time()
        for c, a in sorted(answers.items()):
            if "msg" not in a.arrays:
                continue
            try:
                message = decode_message(a.blob("msg"))
                if getattr(message, "sender", c) != c:
                    raise InvalidMessage(f"client {c} sent a message signed as {message.sender}")
                self.state = self.state.handle(message)
            except (InvalidMessage, UnexpectedMessage) as err:
                self.channel.drop(c, f"bad secure-aggregation message: {err}")
        self.server_seconds += time.process_time() - t0

    def _close_stage(self) -> dict:
        from ...secagg.server import ServerAborted

        t0 = time.process_time()
        self.state, outgoing = self.state.close()
        self.server_seconds += time.process_time() - t0
        if isinstance(self.state, ServerAborted):
            self._send(outgoing, kind="secagg")
            raise ProtocolAbort(self.state.reason, self.state.detail)
        return outgoing

    def _secure_release(self, j: int, fields: dict, arrays: dict, context: bytes):
        from ...secagg.server import ServerMaskedInput

        assert self.plan is not None
        if isinstance(self.state, ServerMaskedInput):
            # An honest server drops masked inputs computed from anything but what it sent.
            self.state = self.state.expect_context(context)
        if self.pending:
            answers = self._send(self.pending, kind="release", fields=fields, arrays=arrays)
            self.pending = {}
        else:
            answers = self.channel.broadcast(Payload("release", fields, arrays), clients=self.members)
        self._feed(answers)
        outgoing = self._close_stage()
        # Unmasking (and, in malicious mode, the consistency check before it): answer until done.
        while outgoing:
            self._feed(self._send(outgoing))
            outgoing = self._close_stage()
        total = self.state.sums[-1]
        if total.vector != j:
            raise ProtocolAbort(
                AbortReason.UNEXPECTED_VECTOR, f"expected the sum of vector {j}, got {total.vector}"
            )
        survivors = tuple(total.survivors)
        self.members = [c for c in survivors if c in self.channel.alive]
        return self.seam.decode(self.plan, j, total.words, survivors), []
