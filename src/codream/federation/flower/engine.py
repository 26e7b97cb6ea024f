"""CoDream over Flower: the same `ServerRole` and `ClientRole`, the same secure-aggregation states.

The in-process engine (`codream.federation.simulation.Federation`) computes every client's release and
hands them to the aggregation seam. Here each client lives in its own process (its node's worker) and
the server only ever receives what a client would put on the network:

- ``plain``: the float vector itself (as in the in-process plain seam);
- ``secure``: the node's own `ClientSeam` (the seam's client half, the same code the in-process engine
  runs) admits the round's plan against the node's own policy, clips and encodes its vector, and its
  secure-aggregation client state masks it; the server's `ServerSeam` and state machine
  (`codream.secagg.server`) unmask and decode only the sum over the survivors.

A node's policy comes from its own node config (``aggregation``: the least mode it releases under,
default ``secure``; ``min-clients``, ``min-threshold``, ``min-survivors``, ``graphs``, ``max-clients``,
``max-vectors``, ``max-vector-length``), never from the server: a plan below it is refused and the
node releases nothing. Clip and saturation counts ride inside the masked vector, never beside it.

One federation round is one secure-aggregation session with the round's whole plan of vectors
(`ServerRole.specs`). Messages per secure round: session start (advertise keys), key broadcast (share
keys), then per vector a release (masked input) and an unmask request; then one message to acquire,
distil and evaluate: 3 + 2J for J vectors. A plain round takes J + 1. Each is one Flower message
per client, answered within the step timeout; a client that does not answer is dropped, and the
session goes on while at least the threshold remain.

Clients are built exactly as the in-process engine builds them (same partition, model seeds and
generator streams), so with the same seed and plain aggregation both engines compute the same
numbers, and with secure aggregation every sum differs from the plain one by at most the codec's
quantisation bound.
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
    release_context,
)
from ...exceptions import AbortReason, ConfigError, InvalidMessage, PolicyRefusal, ProtocolAbort
from ..config import DistillConfig, DreamConfig, FederationConfig, Method
from .channel import ClientChannel
from .wire import NodeLimits, Payload, session_fields, session_from_fields

__all__ = [
    "AGGREGATIONS",
    "CodreamNode",
    "CodreamServer",
    "config_from_dict",
    "config_to_dict",
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
    """A JSON-ready dict of a `FederationConfig` (enums as their values)."""
    return _plain(dataclasses.asdict(config))


def config_from_dict(d: Mapping[str, object]) -> FederationConfig:
    """Rebuild a `FederationConfig` from `config_to_dict`'s output; the dataclasses validate it.

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
    """Refuse what this engine does not carry yet: a server dream bank.

    Raises:
        ConfigError: naming the option, before any process starts.
    """
    if config.distill.bank_size > 0:
        raise ConfigError(
            f"the Flower engine does not keep a dream bank yet; set distill.bank_size = 0 "
            f"(got {config.distill.bank_size})"
        )


def _generator(*parts: int):
    # The in-process engine's seeding, so that both engines build identical clients and server.
    from ..simulation import _generator as simulation_generator

    return simulation_generator(*parts)


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
class CodreamNode:
    """One client, in its node's worker: answers the server's requests with its `ClientRole`.

    Node config keys: ``partition-id`` (its client id, required), ``num-partitions`` (must equal the
    federation's number of clients), optional ``data-dir`` (this machine's data folder), ``dataset``
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
        self.limits = NodeLimits.from_node_config(self.node_config)
        self.policy = dataclasses.replace(node_policy(self.node_config), max_clients=self.limits.max_clients)
        self.role = None
        self.config: FederationConfig | None = None
        self.seam: ClientSeam | None = None
        self._session = None  # this round's secure-aggregation client state
        self._specs: list[VectorSpec] = []
        self._targets: np.ndarray | None = None  # the round's dream targets, as received
        self._round = -1

    # -- dispatch
    def handle(self, request: Payload) -> Payload:
        handler = {
            "setup": self._setup,
            "session": self._start_session,
            "release": self._release,
            "secagg": self._secagg,
            "acquire": self._acquire,
        }.get(request.kind)
        if handler is None:
            raise InvalidMessage(f"unexpected request {request.kind!r}")
        if request.kind != "setup" and self.role is None:
            raise InvalidMessage(f"{request.kind!r} before setup")
        return handler(request)

    def _setup(self, req: Payload) -> Payload:
        import torch

        from ...data import load_dataset, partition
        from ...devices import pin_threads
        from ...models import build_model
        from ..client import ClientRole
        from ..simulation import default_trainer_factory

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
        pin_threads(int(nc.get("torch-threads", 1)))  # type: ignore[arg-type]
        asked = Mode.parse(str(req.get("aggregation", str)))
        if asked.rank < self.policy.mode.rank:
            raise PolicyRefusal(
                f"client {self.client_id}: the server asks for {asked.value!r}; this node releases "
                f"under {self.policy.mode.value!r} or stronger only"
            )
        # Stochastic-rounding coins are not secrets; seeding them keeps a run reproducible.
        ledger_path = None
        if self.policy.dp is not None and "ledger-dir" in nc:
            from ...privacy.client_ledger import client_ledger_path

            # `ledger-dir` is the folder of the ledger files (a run directory's client_ledgers/).
            ledger_path = Path(str(nc["ledger-dir"])) / client_ledger_path(".", self.client_id).name
        self.seam = ClientSeam(
            self.client_id, self.policy, rounding_seed=config.seed, ledger_path=ledger_path
        )
        dataset = load_dataset(
            config.dataset, config.data_dir, limit_test=config.limit_test, seed=config.seed
        )
        parts = partition(
            dataset.y_train,
            config.num_clients,
            alpha=config.alpha,
            samples_per_client=config.samples_per_client,
            seed=config.seed,
        )
        cid = self.client_id
        idx = torch.as_tensor(np.asarray(parts[cid]), dtype=torch.long)
        x_k, y_k = dataset.x_train[idx], dataset.y_train[idx]
        self.x_test, self.y_test = dataset.x_test, dataset.y_test
        if config.limit_test is not None and config.limit_test < len(self.y_test):
            self.x_test, self.y_test = self.x_test[: config.limit_test], self.y_test[: config.limit_test]
        name = config.client_models()[cid]
        model = build_model(
            name, dataset.input_shape, dataset.num_classes, norm=config.norm, seed=config.seed * 1009 + cid
        ).to(config.device)
        trainer = default_trainer_factory(config)(model, x_k, y_k, _generator(config.seed, 1, cid))
        self.role = ClientRole(
            cid, trainer, y_k, dataset.num_classes, config, _generator(config.seed, 2, cid)
        )
        self.config = config
        warmup_loss = self.role.warm_up()
        fields: dict[str, object] = {
            "client_id": cid,
            "model": name,
            "samples": len(y_k),
            "input_shape": list(dataset.input_shape),
            "num_classes": dataset.num_classes,
        }
        if self.policy.dp is None:  # a loss on private data is not released under DP
            fields["warmup_loss"] = warmup_loss
        return Payload("ready", fields)

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
        self._session, advert = start_client(plan.session, self.client_id)  # type: ignore[arg-type]
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
        x = torch.from_numpy(req.array("x", "float32").copy()) if "x" in req.arrays else None
        if req.fields.get("begin"):
            self._targets = req.array("targets", "int64").copy() if "targets" in req.arrays else None
            targets = None if self._targets is None else torch.from_numpy(self._targets)
            role.begin_round(self._round, targets=targets)
        fields: dict[str, object] = {}
        if spec.kind is ReleaseKind.CLASS_WEIGHTS:
            vector = role.class_weights()
        elif spec.kind is ReleaseKind.DREAM_GRADIENT:
            if x is None:
                raise InvalidMessage("a dream release needs the dreams")
            vector = role.dream_gradient(x, spec.step)
            if seam.plan.mode is Mode.PLAIN and role.last_terms is not None:
                fields["loss"] = float(role.last_terms.total)
        elif spec.kind is ReleaseKind.SOFT_LABELS:
            if x is None:
                raise InvalidMessage("a soft-label release needs the dreams")
            vector = role.soft_labels(x)
        else:
            raise InvalidMessage(f"unknown release {spec.name!r}")
        if seam.plan.mode is Mode.PLAIN:
            return Payload("vector", fields, {"v": seam.prepare(vector)})
        if isinstance(self._session, Aborted) or self._session is None:
            raise ProtocolAbort(AbortReason.UNEXPECTED_VECTOR, "no live session to release into")
        # What this node computed the release from: signed (malicious mode) and keying the masks, so a
        # server that sent nodes different dreams or targets cannot unmask a sum over them.
        if spec.kind is ReleaseKind.CLASS_WEIGHTS:
            context = release_context(self._round, spec)
        else:
            context = release_context(self._round, spec, None if x is None else x.numpy(), self._targets)
        self._session, message = self._session.submit(seam.prepare(vector), context)
        return Payload("secagg", fields, {} if message is None else {"msg": _blob(message.to_bytes())})

    def _acquire(self, req: Payload) -> Payload:
        import torch

        role = self.role
        assert role is not None
        x = torch.from_numpy(req.array("x", "float32").copy())
        y = torch.from_numpy(req.array("y", "float32").copy())
        role.acquire(x, y)
        stats = role.distill()
        acc = role.evaluate(self.x_test, self.y_test)  # on the public test set
        self._session = None
        fields = {"accuracy": acc, "kd_loss": stats.kd_loss}  # KD loss: on released dreams
        if self.policy.dp is None:  # a loss on private data is not released under DP
            fields["ce_loss"] = stats.ce_loss
        return Payload("learned", fields)


def _blob(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def _setup_facts(p: Payload) -> tuple[tuple[int, ...], int, float]:
    """A node's set-up answer: (input shape, number of classes, warm-up loss); InvalidMessage if not."""
    return (
        p.integers("input_shape", max_len=8, minimum=1, maximum=1 << 16),
        p.integer("num_classes", minimum=1, maximum=1 << 20),
        p.number("warmup_loss", default=None),
    )


def _learned(p: Payload) -> tuple[float, float, float]:
    """A node's 'learned' answer: (accuracy, KD loss, CE loss); InvalidMessage if not."""
    return (
        p.number("accuracy", minimum=0.0, maximum=1.0),
        p.number("kd_loss"),
        p.number("ce_loss", default=None),
    )


# ---------------------------------------------------------------------------------------- the server
class CodreamServer:
    """The ServerApp's engine: rounds of CoDream over the client channel.

    Run config keys: ``codream-config`` (JSON of `config_to_dict`), ``aggregation`` ("plain" or
    "secure"), ``rounds``, ``threshold`` (0: the secure aggregator's default), ``bits``,
    ``min-survivors`` (0: the threshold), ``out-dir``, ``record-trace`` (write every sum to
    trace.npz, for checking the engine against the in-process one).
    """

    def __init__(self, run_config: Mapping[str, object]) -> None:
        rc = dict(run_config)
        self.config = config_from_dict(json.loads(str(rc["codream-config"])))
        self.aggregation = str(rc.get("aggregation", "secure"))
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(
                f"the Flower engine supports aggregation {list(AGGREGATIONS)}, got {self.aggregation!r}"
            )
        if self.config.distill.student is not None:
            raise ConfigError(
                "the Flower engine does not carry a server student yet; set distill.student = None"
            )
        refuse_unsupported(self.config)
        self.rounds = int(rc.get("rounds", self.config.rounds))  # type: ignore[arg-type]
        self.threshold = int(rc.get("threshold", 0)) or None  # type: ignore[arg-type]
        self.bits = int(rc["bits"]) if int(rc.get("bits", 0) or 0) else None  # type: ignore[arg-type]
        # secure+dp: the public noise multiplier the encoding's headroom is sized for; each node
        # draws its own noise from its own node config.
        noise_multiplier = float(rc["noise-multiplier"]) if "noise-multiplier" in rc else None  # type: ignore[arg-type]
        self.min_survivors = int(rc.get("min-survivors", 0)) or None  # type: ignore[arg-type]
        self.out_dir = Path(str(rc.get("out-dir", ".")))
        self.record_trace = bool(rc.get("record-trace", False))
        self.trace: dict[str, np.ndarray] = {}
        self._last_bound = 0.0  # quantisation bound of the last sum (0 for plain sums)
        self.seam = ServerSeam(
            self.aggregation,
            threshold=self.threshold,
            bits=self.bits,
            min_survivors=self.min_survivors,
            noise_multiplier=noise_multiplier,
        )
        self.bits = self.seam.bits

    def setup_payload(self) -> Payload:
        return Payload(
            "setup",
            {"config": config_to_dict(self.config), "aggregation": self.aggregation, "bits": self.bits},
        )

    def run(self, channel: ClientChannel, ready: Mapping[int, Payload]) -> dict:
        from ..server import ServerRole

        cfg = self.config
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
        server = ServerRole(cfg, input_shape, num_classes, _generator(cfg.seed, 4))
        losses = [loss for _, _, loss in facts.values() if loss is not None]
        warmup = float(np.mean(losses)) if losses else None
        rounds = []
        for r in range(self.rounds):
            metrics = self._round(r, server, channel)
            metrics["warmup_loss"] = (warmup if r == 0 else 0.0) if warmup is not None else None
            rounds.append(metrics)
            log.info(
                "round %d: mean acc %.4f, survivors %s, %.1f s",
                r,
                metrics["mean_accuracy"],
                metrics["survivors"],
                metrics["seconds"],
            )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if server.x is not None and server.soft_labels is not None:
            np.savez(self.out_dir / "dreams.npz", x=server.x.numpy(), soft_labels=server.soft_labels.numpy())
        if self.record_trace:
            np.savez(self.out_dir / "trace.npz", **self.trace)
        return {
            "engine": "flower",
            "aggregation": self.aggregation,
            "clients": {
                str(c): {k: v for k, v in p.fields.items() if k != "client_id"} for c, p in ready.items()
            },
            "rounds": rounds,
        }

    # -- one round
    def _round(self, r: int, server, channel: ClientChannel) -> dict:
        import torch

        cfg = self.config
        t0 = time.perf_counter()
        exchanges0, exchange_seconds0 = channel.exchanges, channel.exchange_seconds
        specs = server.specs()
        participants = self.cohort(r, channel.alive)
        sent0, received0 = dict(channel.bytes_sent), dict(channel.bytes_received)
        x = server.begin_round(r)
        release = (_SecureRelease if self.seam.mode.secure else _PlainRelease)(
            self, channel, r, participants, specs
        )
        j = 0
        targets = None
        if cfg.method is Method.CONDITIONAL:
            res = self._trace(r, j, release.release(j, {}, {}, context=release_context(r, specs[j])))
            targets = server.receive_class_weights(res)
            j += 1
        sent_targets = None if targets is None else targets.numpy().astype(np.int64)
        losses = []
        t_dream = time.perf_counter()
        for s in range(cfg.dream.global_steps):
            fields: dict[str, object] = {}
            arrays = {"x": x.numpy()}
            if s == 0:
                fields["begin"] = True
                if sent_targets is not None:
                    arrays["targets"] = sent_targets
            context = release_context(r, specs[j], arrays["x"], sent_targets)
            res = self._trace(r, j, release.release(j, fields, arrays, context=context))
            losses.append(release.last_losses)
            x = server.apply_dream_step(res)
            j += 1
        dream_seconds = time.perf_counter() - t_dream
        context = release_context(r, specs[j], x.numpy(), sent_targets)
        res = self._trace(r, j, release.release(j, {}, {"x": x.numpy()}, context=context))
        _, target_logits = server.receive_soft_labels(res)
        report = release.close()
        self.progress(r, -1, "acquire")
        answers = channel.exchange(
            {
                c: Payload(
                    "acquire", {"round": r}, {"x": x.numpy(), "y": target_logits.to(torch.float32).numpy()}
                )
                for c in res.contributors
            }
        )
        learned = channel.read(answers, _learned, what="'learned' answer")
        accs = {c: acc for c, (acc, _, _) in sorted(learned.items())}
        ces = [ce for *_, ce in learned.values() if ce is not None]  # none under DP
        probs = server.label_probabilities()
        acc_values = list(accs.values())

        def mean_loss(i: int) -> float | None:
            vals = losses[i] if losses and losses[i] else None
            return float(np.mean(vals)) if vals else None

        return {
            "round": r,
            "accuracies": {str(c): a for c, a in accs.items()},
            "mean_accuracy": float(np.mean(acc_values)) if acc_values else float("nan"),
            "std_accuracy": float(np.std(acc_values)) if acc_values else float("nan"),
            "kd_loss": float(np.mean([kd for _, kd, _ in learned.values()])) if learned else None,
            "ce_loss": float(np.mean(ces))
            if (ces := [ce for *_, ce in learned.values() if ce is not None])
            else None,
            "dream_loss_start": mean_loss(0),
            "dream_loss_end": mean_loss(-1),
            "class_coverage": int(probs.argmax(dim=1).unique().numel()),
            "label_confidence": float(probs.max(dim=1).values.mean()),
            "participants": list(participants),
            "survivors": list(res.contributors),
            "clipped": report["clipped"],
            "overflowed": report["overflowed"],
            "threshold": report.get("threshold"),
            "bytes_sent_per_client": {str(c): channel.bytes_sent[c] - sent0[c] for c in participants},
            "bytes_received_per_client": {
                str(c): channel.bytes_received[c] - received0[c] for c in participants
            },
            "seconds": time.perf_counter() - t0,
            "dream_seconds": dream_seconds,
            "exchanges": channel.exchanges - exchanges0,
            "seconds_per_exchange": (channel.exchange_seconds - exchange_seconds0)
            / max(1, channel.exchanges - exchanges0),
        }

    def cohort(self, r: int, alive: list[int]) -> list[int]:
        """Round r's participants: the simulation's seeded cohort (every client without one), alive.

        The server knows every cohort (it runs the protocol with it), so nothing is amplified by it.
        """
        from ..simulation import cohort_indices

        k = self.config.clients_per_round
        chosen = cohort_indices(self.config.num_clients, k, self.config.seed, r)
        return [c for c in chosen if c in alive]

    def progress(self, r: int, j: int, stage: str) -> None:
        """Append where the run stands to progress.jsonl (the local harness times its faults by it)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "progress.jsonl", "a") as f:
            f.write(json.dumps({"round": r, "vector": j, "stage": stage, "time": time.time()}) + "\n")

    def _trace(self, r: int, j: int, res: AggregateResult) -> AggregateResult:
        if self.record_trace:
            self.trace[f"r{r}_v{j}_total"] = np.asarray(res.total, dtype=np.float64)
            self.trace[f"r{r}_v{j}_contributors"] = np.asarray(res.contributors, dtype=np.int64)
            self.trace[f"r{r}_v{j}_bound"] = np.asarray(self._last_bound, dtype=np.float64)
        return res


class _PlainRelease:
    """Clients send their vectors in the clear; the server half sums and decodes them."""

    def __init__(self, owner: CodreamServer, channel: ClientChannel, r: int, participants, specs) -> None:
        self.owner = owner
        self.channel = channel
        self.r = r
        self.plan = owner.seam.plan(round_index=r, participants=participants, specs=specs)
        self.last_losses: list[float] = []
        self.participants = list(participants)
        self.clipped = 0

    def release(self, j: int, fields: dict, arrays: dict, *, context: bytes = b"") -> AggregateResult:
        spec = self.plan.specs[j]
        self.owner.progress(self.r, j, "release")
        # The round's plan travels with every release: plain rounds need no session set-up step.
        plan = {**_plan_fields(self.plan), "vector": j, **fields}
        answers = self.channel.broadcast(Payload("release", plan, arrays), clients=self.participants)
        read = self.channel.read(
            answers,
            lambda a: (
                a.array("v", "float64", shape=(spec.length + 2,), finite=True),
                a.number("loss", default=None),
            ),
            what=f"release of {spec.name!r}",
        )
        vectors = {c: v for c, (v, _) in read.items()}
        self.last_losses = [loss for _, loss in read.values() if loss is not None]
        total = np.sum(list(vectors.values()), axis=0) if vectors else np.zeros(spec.length + 2)
        res = self.owner.seam.decode(self.plan, j, total, tuple(vectors))
        self.clipped += res.clipped or 0
        return res

    def close(self) -> dict:
        return {"clipped": self.clipped, "overflowed": 0}


class _SecureRelease:
    """Each client masks its encoded vector; the secure-aggregation server state unmasks the sum."""

    def __init__(self, owner: CodreamServer, channel: ClientChannel, r: int, participants, specs) -> None:
        from ...secagg.server import start_server

        self.owner = owner
        self.channel = channel
        self.r = r
        owner.progress(r, -1, "session")
        self.plan = owner.seam.plan(round_index=r, participants=participants, specs=specs)
        self.session = self.plan.session
        self.n_min = self.plan.n_min
        self.state = start_server(self.session)
        self.last_losses: list[float] = []
        self.clipped = 0
        self.overflowed = 0
        # Round 0: every client admits the plan, starts its session state and advertises its keys.
        answers = channel.broadcast(Payload("session", _plan_fields(self.plan)), clients=participants)
        self._feed(answers)
        outgoing = self._close()
        # Round 1: the key broadcast; clients answer with their encrypted shares.
        self._feed(self._send(outgoing))
        self.pending = self._close()  # the share deliveries travel with the first release
        self.members = sorted(self.pending)

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

    def _close(self) -> dict:
        from ...secagg.server import ServerAborted

        self.state, outgoing = self.state.close()
        if isinstance(self.state, ServerAborted):
            self._send(outgoing, kind="secagg")
            raise ProtocolAbort(self.state.reason, self.state.detail)
        return outgoing

    def release(self, j: int, fields: dict, arrays: dict, *, context: bytes = b"") -> AggregateResult:
        self.owner.progress(self.r, j, "release")
        base = Payload("release", {"round": self.r, "vector": j, **fields}, arrays)
        from ...secagg.server import ServerMaskedInput

        if isinstance(self.state, ServerMaskedInput):
            # An honest server drops masked inputs computed from anything but what it sent.
            self.state = self.state.expect_context(context)
        if self.pending:
            answers = self._send(self.pending, kind="release", fields=base.fields, arrays=base.arrays)
            self.pending = {}
        else:
            answers = self.channel.broadcast(base, clients=self.members)
        self._feed(answers)
        outgoing = self._close()
        # Unmasking (and, in malicious mode, the consistency check before it): answer until done.
        while outgoing:
            self._feed(self._send(outgoing))
            outgoing = self._close()
        total = self.state.sums[-1]
        if total.vector != j:
            raise ProtocolAbort(
                AbortReason.UNEXPECTED_VECTOR, f"expected the sum of vector {j}, got {total.vector}"
            )
        survivors = tuple(total.survivors)
        self.members = [c for c in survivors if c in self.channel.alive]
        res = self.owner.seam.decode(self.plan, j, total.words, survivors)
        if res.overflowed:
            log.warning(
                "vector %r: %d coordinates saturated in fixed-point encoding",
                self.plan.specs[j].name,
                res.overflowed,
            )
        self.clipped += res.clipped or 0
        self.overflowed += res.overflowed or 0
        self.owner._last_bound = self.owner.seam.quantisation_bound(self.plan, j, len(survivors))
        return res

    def close(self) -> dict:
        return {"clipped": self.clipped, "overflowed": self.overflowed, "threshold": self.session.threshold}
