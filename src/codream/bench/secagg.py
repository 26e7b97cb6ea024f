"""What secure aggregation costs: seconds and bytes per client and for the server.

For every (n clients, d words, dropout rate, graph, mode) the benchmark reports

- **whole protocol** (`codream.secagg.runner`): per-client and server seconds and bytes of a real
  session in which round(dropout * n) clients, chosen by a seeded draw, crash after sharing their
  keys and before sending their masked input (the costliest case for the server, which must
  rebuild their mask keys and re-expand their pairwise masks). When n * (k + 1) * d is small
  enough the session runs at the full d ("runner"). Otherwise it runs at a probe size d0 and the
  d-dependent work is measured separately at the full d and added ("probe+measured"): one client's
  masking (the protocol's own `masked_words`) and the server's unmasking for the same dropout
  pattern (summing the survivors, removing their self masks, re-expanding the dropped clients'
  pairwise masks with the protocol's own functions). Bytes are affine in d and are extrapolated
  exactly from two probe sessions.
- **masking against the PRG bound**: one client's masking of one vector (HKDF, expansion, add, for
  k neighbours plus the self mask; the pairwise X25519 secrets are agreed once per session, when
  the shares arrive, and timed apart) against the bare AES-256-CTR keystream for the same number
  of words and keys, written into preallocated buffers;
- **Flower's SecAgg+ client** (when `flwr` is installed): the masking stage of a Flower client with
  the same number of neighbours, by calling Flower's own library functions (quantisation, ECDH key
  derivation, its mask generator, its modular arithmetic and serialisation).

The two modes run the same sessions at the same (n, d, dropout, graph, k, t): semi-honest, and
malicious (signed advertisements, the consistency quorum of `protocols/secagg.md` §5.5, with the
corrupt count c = ceil(corrupt_fraction * n) in the session config); the report adds a table of
malicious over semi-honest ratios. The single-client masking and PRG columns are the same code in
both modes.

Single-function timings are the best CPU time (`time.process_time`) of `repeats` runs, taken in
turns; whole-session seconds are the runner's own accounting, also CPU time, per party. The
threshold comes from :func:`codream.secagg.graph.choose_parameters` with the given corrupt fraction.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import click
import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..crypto.agreement import X25519KeyPair
from ..crypto.prg import MaskAccumulator, mask_words
from ..exceptions import ConfigError, ProtocolAbort
from ..secagg.encoding import FixedPointCodec, words_from_bytes, words_to_bytes
from ..secagg.graph import choose_parameters

__all__ = ["FULL", "MODES", "QUICK", "CostSettings", "cli", "hardware", "mode_ratios", "run", "to_markdown"]

_log = logging.getLogger(__name__)

MODES = ("semi-honest", "malicious")


@dataclass(frozen=True, slots=True)
class CostSettings:
    """A grid of benchmark points.

    Attributes:
        ns: numbers of clients.
        ds: vector lengths in words.
        dropouts: fractions of clients that crash before sending their masked input.
        graphs: "complete" and/or "harary".
        modes: "semi-honest" and/or "malicious".
        bits: ring width.
        corrupt_fraction: assumed colluding fraction, used to choose k and t.
        repeats: timings are the best of this many runs.
        full_session_words: run the whole session at the full d when n * (k + 1) * d is at most
            this; above it, use the probe-and-measure method.
        probe_words: d0 of the probe sessions (and 2 * d0 for the byte extrapolation).
        flower: also time Flower's SecAgg+ client when flwr is importable.
        seed: seeds the dropout pattern and the inputs (never key material).
    """

    ns: tuple[int, ...]
    ds: tuple[int, ...]
    dropouts: tuple[float, ...] = (0.0, 0.1, 0.3)
    graphs: tuple[str, ...] = ("complete", "harary")
    modes: tuple[str, ...] = ("semi-honest", "malicious")
    bits: int = 32
    corrupt_fraction: float = 0.1
    repeats: int = 3
    full_session_words: int = 20_000_000
    probe_words: int = 500
    flower: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if any(n < 3 for n in self.ns) or any(d < 1 for d in self.ds):
            raise ConfigError("need n >= 3 clients and d >= 1 words")
        if any(not 0.0 <= p < 1.0 for p in self.dropouts):
            raise ConfigError(f"dropout rates must lie in [0, 1), got {self.dropouts}")
        if set(self.graphs) - {"complete", "harary"}:
            raise ConfigError(f"graphs must be 'complete' or 'harary', got {self.graphs}")
        if not self.modes or set(self.modes) - set(MODES):
            raise ConfigError(f"modes must be among {MODES}, got {self.modes}")
        if self.repeats < 1:
            raise ConfigError("repeats must be >= 1")


FULL = CostSettings(ns=(10, 50, 100, 200), ds=(10_000, 100_000, 1_000_000), repeats=1)
QUICK = CostSettings(ns=(10, 50), ds=(10_000, 100_000), repeats=3)


def _best(fn: Callable[[], object], repeats: int) -> float:
    return _best_interleaved({"fn": fn}, repeats)["fn"]


def _best_interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best CPU time of each function, the functions taking turns so that all see the same load.

    CPU time of this process (not wall time): on a shared machine, time spent waiting for a core
    is not work. All measured code is single-threaded (OpenSSL's AES, numpy element-wise ops).
    """
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - t0)
    return best


def hardware() -> dict[str, str]:
    """CPU, core count and library versions, for the results file."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import cryptography

    info = {
        "cpu": model,
        "nproc": str(os.cpu_count()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cryptography": cryptography.__version__,
        "load average (1 min, at start)": f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a",
    }
    try:
        import flwr

        info["flwr"] = flwr.__version__
    except ImportError:
        info["flwr"] = "not installed"
    return info


# ------------------------------------------------------------------------------ single-client costs


class _Peers:
    """k peers' mask key pairs for one vector, shared by every measurement of the same k."""

    def __init__(self, k: int) -> None:
        self.own = X25519KeyPair.generate()
        self.keys = {i + 1: X25519KeyPair.generate().public_bytes() for i in range(k)}


@dataclass(frozen=True, slots=True)
class _ClientMask:
    protocol: float  # the protocol's masked_words, from the pairwise secrets: HKDFs, expansion, adds
    keys: float  # the per-vector HKDFs alone: k + 1
    agreement: float  # the k X25519 agreements, done once per session when the shares arrive
    expand: float  # MaskAccumulator with the keys already derived: expansion and adds alone
    fast: float  # agreement, HKDFs and expansion: the whole per-vector cost had agreement stayed there
    encode: float  # fixed-point encoding and serialisation of the input
    prg: float  # the bare AES-256-CTR keystream for the same words and keys


def _client_mask_seconds(peers: _Peers, d: int, bits: int, repeats: int) -> _ClientMask:
    """One client's masking of one vector of d words, whole and in parts."""
    from ..crypto.kdf import pairwise_mask_key, self_mask_key
    from ..secagg.keys import masked_words, pairwise_secrets

    session = os.urandom(32)
    seed = os.urandom(32)
    words = mask_words(os.urandom(32), d, bits=bits)
    shared = pairwise_secrets(peers.own, peers.keys)

    def protocol() -> None:
        masked_words(words, own_id=0, seed=seed, shared=shared, session=session, vector=0, bits=bits)

    def derive(secrets: dict[int, bytes]) -> list[tuple[bytes, int]]:
        keys = [(self_mask_key(seed, session_id=session, vector_index=0), 1)]
        for peer, secret in secrets.items():
            key = pairwise_mask_key(secret, session_id=session, vector_index=0)
            keys.append((key, 1 if peer % 2 else -1))
        return keys

    derived = derive(shared)

    def accumulate(keys: list[tuple[bytes, int]]) -> None:
        acc = MaskAccumulator(d, bits=bits)
        acc.add_words(words)
        for key, sign in keys:
            acc.add_mask(key, sign=sign)
        acc.result()

    codec = FixedPointCodec(clip_norm=1.0, num_summands=len(peers.keys) + 1, bits=bits)
    vector = np.random.default_rng(0).uniform(-1 / np.sqrt(d), 1 / np.sqrt(d), d)

    def encode_and_send() -> None:
        encoded = codec.encode(vector, rng=np.random.default_rng(1))
        words_to_bytes(encoded.words, bits)

    length = d * (4 if bits <= 32 else 8)
    zeros = bytes(length)
    out = bytearray(length + 15)
    prg_keys = [key for key, _ in derived]

    def prg_bound() -> None:
        for key in prg_keys:
            Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update_into(zeros, out)

    best = _best_interleaved(
        {
            "protocol": protocol,
            "keys": lambda: derive(shared),
            "agreement": lambda: pairwise_secrets(peers.own, peers.keys),
            "expand": lambda: accumulate(derived),
            "fast": lambda: accumulate(derive(pairwise_secrets(peers.own, peers.keys))),
            "encode": encode_and_send,
            "prg": prg_bound,
        },
        repeats,
    )
    return _ClientMask(**best)


def _flower_client_seconds(k: int, d: int, repeats: int) -> tuple[float, float] | None:
    """(masking only, whole masking stage) of a Flower SecAgg+ client with k neighbours, or None."""
    try:
        from flwr.common import ndarray_to_bytes
        from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
        from flwr.common.secure_aggregation.ndarrays_arithmetic import (
            factor_combine,
            parameters_addition,
            parameters_mod,
            parameters_multiply,
            parameters_subtraction,
        )
        from flwr.common.secure_aggregation.quantization import quantize
        from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
        from flwr.supercore.primitives.asymmetric import (
            bytes_to_private_key,
            bytes_to_public_key,
            generate_key_pairs,
            private_key_to_bytes,
            public_key_to_bytes,
        )
    except ImportError:
        return None
    # Flower's defaults: clipping range 8, quantisation range 2^22, modulus 2^32.
    clipping_range, target_range, mod_range = 8.0, 2**22, 2**32
    own_sk, _ = generate_key_pairs()
    sk1 = private_key_to_bytes(own_sk)
    peers = [public_key_to_bytes(generate_key_pairs()[1]) for _ in range(k)]
    rd_seed = os.urandom(32)
    parameters = [np.random.default_rng(0).uniform(-1, 1, d).astype(np.float32)]

    def masks(quantized: list[np.ndarray]) -> list[np.ndarray]:
        dims = [a.shape for a in quantized]
        quantized = parameters_addition(quantized, pseudo_rand_gen(rd_seed, mod_range, dims))
        for i, pk in enumerate(peers):
            shared = generate_shared_key(bytes_to_private_key(sk1), bytes_to_public_key(pk))
            mask = pseudo_rand_gen(shared, mod_range, dims)
            op = parameters_addition if i % 2 else parameters_subtraction
            quantized = op(quantized, mask)
        return parameters_mod(quantized, mod_range)

    quantized0 = quantize(parameters, clipping_range, target_range)

    def stage() -> None:
        scaled = parameters_multiply(parameters, 1.0)
        quantized = factor_combine(1, quantize(scaled, clipping_range, target_range))
        [ndarray_to_bytes(a) for a in masks(quantized)]

    return _best(lambda: masks(quantized0), repeats), _best(stage, repeats)


# ------------------------------------------------------------------------------ whole sessions


@dataclass(frozen=True, slots=True)
class _SessionCost:
    client_seconds: float  # mean over the clients that sent their masked input
    client_bytes_sent: float  # same clients, mean
    server_seconds: float
    server_bytes_sent: int
    server_bytes_received: int
    survivors: int


def _session(
    n: int,
    k: int,
    t: int,
    d: int,
    dropped: Sequence[int],
    bits: int,
    seed: int,
    repeats: int,
    *,
    malicious: bool = False,
    corrupt: int = 0,
) -> _SessionCost:
    """Best of `repeats` sessions (seconds are minimised separately; bytes do not vary)."""
    runs = [
        _one_session(n, k, t, d, dropped, bits, seed, malicious=malicious, corrupt=corrupt)
        for _ in range(repeats)
    ]
    best = runs[0]
    return _SessionCost(
        client_seconds=min(r.client_seconds for r in runs),
        client_bytes_sent=best.client_bytes_sent,
        server_seconds=min(r.server_seconds for r in runs),
        server_bytes_sent=best.server_bytes_sent,
        server_bytes_received=best.server_bytes_received,
        survivors=best.survivors,
    )


def _one_session(
    n: int,
    k: int,
    t: int,
    d: int,
    dropped: Sequence[int],
    bits: int,
    seed: int,
    *,
    malicious: bool = False,
    corrupt: int = 0,
) -> _SessionCost:
    from ..secagg.config import GraphKind, SessionConfig
    from ..secagg.runner import Dropout, DropoutSchedule, Stage, provision_signers, run_session

    ids = tuple(range(n))
    complete = k >= n - 1
    verify_keys, signers = provision_signers(ids) if malicious else ((), None)
    config = SessionConfig(
        round_index=0,
        client_ids=ids,
        threshold=t,
        vector_lengths=(d,),
        bits=bits,
        graph=GraphKind.COMPLETE if complete else GraphKind.HARARY,
        degree=0 if complete else k,
        corrupt=corrupt,
        malicious=malicious,
        verify_keys=verify_keys,
    )
    inputs = {cid: mask_words(seed.to_bytes(4, "big") + bytes(28), d, bits=bits) for cid in ids}
    schedule = DropoutSchedule({cid: Dropout(Stage.MASKED_INPUT, 0) for cid in dropped})
    result = run_session(config, [inputs], dropouts=schedule, signers=signers)
    total = result.sums[0]
    survivors = total.survivors
    expected = np.zeros(d, dtype=np.uint64)
    for cid in survivors:
        expected += inputs[cid]
    if not np.array_equal(total.words, expected & np.uint64((1 << bits) - 1)):
        raise RuntimeError("secure aggregation returned a wrong sum")  # never expected; fail loudly
    stats = result.stats
    return _SessionCost(
        client_seconds=float(np.mean([stats.client_seconds[c] for c in survivors])),
        client_bytes_sent=float(np.mean([stats.bytes_sent[c] for c in survivors])),
        server_seconds=stats.server_seconds,
        server_bytes_sent=stats.server_bytes_sent,
        server_bytes_received=stats.server_bytes_received,
        survivors=len(survivors),
    )


def _server_unmask_seconds(
    graph: dict[int, frozenset[int]], dropped: Sequence[int], d: int, bits: int, repeats: int
) -> float:
    """The server's d-dependent work for one vector: parse and sum the survivors' masked inputs,
    remove their self masks, and re-expand each dropped client's pairwise masks with its
    surviving neighbours (with the protocol's own mask functions)."""
    from ..secagg.keys import pairwise_mask, self_mask

    alive = sorted(set(graph) - set(dropped))
    session = os.urandom(32)
    payload = words_to_bytes(mask_words(os.urandom(32), d, bits=bits), bits)
    rebuilt = X25519KeyPair.generate()
    public = X25519KeyPair.generate().public_bytes()
    seed = os.urandom(32)

    def work() -> None:
        total = np.zeros(d, dtype=np.uint64)
        for _ in alive:
            total += words_from_bytes(payload, bits, d)
        for _ in alive:
            total -= self_mask(seed, session=session, vector=0, count=d, bits=bits)
        for v in dropped:
            for _ in set(graph[v]) - set(dropped):
                total -= pairwise_mask(rebuilt, public, session=session, vector=0, count=d, bits=bits)
        total &= np.uint64((1 << bits) - 1)

    return _best(work, repeats)


# ------------------------------------------------------------------------------ the grid


def run(settings: CostSettings, *, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Measure every point of `settings`.

    Returns:
        One JSON-ready dict per (n, d, dropout, graph, mode), with the keys listed in the module
        docstring's terms: mode, k, threshold, corrupt, method, client/server seconds and bytes,
        mask_s, mask_fast_s, encode_s, prg_bound_s, mask_over_prg, mask_fast_over_prg,
        flower_mask_s, flower_client_s, flower_over_ours (None without flwr), aborted (a reason or
        None).
    """
    from ..secagg.graph import complete_graph, harary_graph

    say = progress or (lambda message: _log.info("%s", message))
    rng = np.random.default_rng(settings.seed)
    bits, repeats = settings.bits, settings.repeats
    peers_cache: dict[int, _Peers] = {}
    client_cache: dict[tuple[int, int], _ClientMask] = {}
    micro = max(3, repeats)
    flower_cache: dict[tuple[int, int], tuple[float, float] | None] = {}
    rows = []
    for n in settings.ns:
        for dropout in settings.dropouts:
            dropped = sorted(rng.choice(n, size=round(dropout * n), replace=False).tolist())
            for graph_name in settings.graphs:
                params = choose_parameters(
                    n,
                    dropout_rate=dropout,
                    corrupt_fraction=settings.corrupt_fraction,
                    complete=graph_name == "complete",
                )
                k, t, c = params.k, params.threshold, params.corrupt
                graph = complete_graph(range(n)) if k >= n - 1 else harary_graph(range(n), k, seed=b"bench")
                probes: dict[tuple[str, int], _SessionCost] = {}
                server_work: dict[int, float] = {}
                for d in settings.ds:
                    if k not in peers_cache:
                        peers_cache[k] = _Peers(k)
                    if (k, d) not in client_cache:
                        client_cache[(k, d)] = _client_mask_seconds(peers_cache[k], d, bits, micro)
                        flower_cache[(k, d)] = (
                            _flower_client_seconds(k, d, max(1, repeats - 1)) if settings.flower else None
                        )
                    masking = client_cache[(k, d)]
                    method = "runner" if n * (k + 1) * d <= settings.full_session_words else "probe+measured"
                    for mode in settings.modes:
                        say(f"n={n} d={d} dropout={dropout} graph={graph_name} k={k} t={t} mode={mode}")
                        how = {"malicious": mode == "malicious", "corrupt": c}

                        cost, aborted = None, None
                        try:
                            if method == "runner":
                                cost = _session(n, k, t, d, dropped, bits, settings.seed, repeats, **how)
                            else:
                                d0 = settings.probe_words
                                for size in (d0, 2 * d0):
                                    if (mode, size) not in probes:
                                        probes[(mode, size)] = _session(
                                            n, k, t, size, dropped, bits, settings.seed, repeats, **how
                                        )
                                if d0 not in server_work:
                                    server_work[d0] = _server_unmask_seconds(
                                        graph, dropped, d0, bits, repeats
                                    )
                                if d not in server_work:
                                    server_work[d] = _server_unmask_seconds(graph, dropped, d, bits, 1)
                                small = _client_mask_seconds(peers_cache[k], d0, bits, micro).protocol
                                cost = _extrapolate(
                                    probes[(mode, d0)],
                                    probes[(mode, 2 * d0)],
                                    (d - d0) / d0,
                                    client_extra=masking.protocol - small,
                                    server_extra=server_work[d] - server_work[d0],
                                )
                        except ProtocolAbort as exc:
                            aborted = exc.reason.value
                        rows.append(
                            _row(
                                n,
                                d,
                                dropout,
                                graph_name,
                                mode,
                                params,
                                dropped,
                                method,
                                aborted,
                                cost,
                                masking,
                                flower_cache[(k, d)],
                            )
                        )
    return rows


def _extrapolate(
    lo: _SessionCost, hi: _SessionCost, slope: float, *, client_extra: float, server_extra: float
) -> _SessionCost:
    """A session at the full d from probes at d0 and 2 * d0: bytes are affine in d, and the
    d-dependent seconds are the measured extra masking and unmasking work."""
    return _SessionCost(
        client_seconds=lo.client_seconds + client_extra,
        client_bytes_sent=lo.client_bytes_sent + slope * (hi.client_bytes_sent - lo.client_bytes_sent),
        server_seconds=lo.server_seconds + server_extra,
        server_bytes_sent=round(lo.server_bytes_sent + slope * (hi.server_bytes_sent - lo.server_bytes_sent)),
        server_bytes_received=round(
            lo.server_bytes_received + slope * (hi.server_bytes_received - lo.server_bytes_received)
        ),
        survivors=lo.survivors,
    )


def _row(n, d, dropout, graph_name, mode, params, dropped, method, aborted, cost, masking, flower) -> dict:
    mask_s, prg_s = masking.protocol, masking.prg
    return {
        "n": n,
        "d": d,
        "dropout": dropout,
        "graph": graph_name,
        "mode": mode,
        "k": params.k,
        "threshold": params.threshold,
        "corrupt": params.corrupt,
        "dropped": len(dropped),
        "method": method,
        "aborted": aborted,
        "client_s": cost.client_seconds if cost else None,
        "client_bytes_sent": cost.client_bytes_sent if cost else None,
        "server_s": cost.server_seconds if cost else None,
        "server_bytes_sent": cost.server_bytes_sent if cost else None,
        "server_bytes_received": cost.server_bytes_received if cost else None,
        "mask_s": mask_s,
        "mask_fast_s": masking.fast,
        "key_agreement_s": masking.agreement,
        "hkdf_s": masking.keys,
        "expand_s": masking.expand,
        "encode_s": masking.encode,
        "prg_bound_s": prg_s,
        "mask_over_prg": mask_s / prg_s,
        "mask_fast_over_prg": masking.fast / prg_s,
        "expand_over_prg": masking.expand / prg_s,
        "mask_over_prg_and_keys": mask_s / (prg_s + masking.keys),  # keys: the per-vector HKDFs
        "flower_mask_s": flower[0] if flower else None,
        "flower_client_s": flower[1] if flower else None,
        "flower_over_ours": flower[1] / (mask_s + masking.encode) if flower else None,
        "flower_mask_over_ours": flower[0] / mask_s if flower else None,
    }


def mode_ratios(rows: Iterable[dict]) -> list[dict]:
    """Malicious over semi-honest, for every (n, d, dropout, graph) measured in both modes and
    finished in both: client seconds, client bytes sent, server seconds, server bytes received."""
    by_point: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by_point.setdefault((r["n"], r["d"], r["dropout"], r["graph"]), {})[r["mode"]] = r
    out = []
    for (n, d, dropout, graph), measured in by_point.items():
        semi, mal = measured.get("semi-honest"), measured.get("malicious")
        if not semi or not mal or semi["aborted"] or mal["aborted"]:
            continue
        out.append(
            {
                "n": n,
                "d": d,
                "dropout": dropout,
                "graph": graph,
                **{
                    f"{key}_ratio": mal[key] / semi[key]
                    for key in ("client_s", "client_bytes_sent", "server_s", "server_bytes_received")
                },
                "client_extra_bytes": mal["client_bytes_sent"] - semi["client_bytes_sent"],
            }
        )
    return out


def _fmt(value: object, kind: str = "") -> str:
    if value is None:
        return "-"
    if kind == "s":
        v = float(value)  # type: ignore[arg-type]
        return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"
    if kind == "MB":
        return f"{float(value) / 1e6:.2f}"  # type: ignore[arg-type]
    if kind == "x":
        return f"{float(value):.2f}"  # type: ignore[arg-type]
    return str(value)


def to_markdown(rows: Iterable[dict], *, command: str, machine: dict[str, str]) -> str:
    """The results as a Markdown document: how they were made, the whole-protocol table of both
    modes, malicious over semi-honest, the masking table, and the targets."""
    rows = list(rows)
    lines = [
        "# Secure aggregation cost",
        "",
        f"Command: `{command}`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()),
        "",
        "Method: see `codream.bench.secagg` (module docstring). *client* and *server*: whole-protocol",
        "seconds and bytes for one vector (client: mean over the clients that sent their input), in",
        "semi-honest and in malicious mode (signed keys and the consistency quorum; c corrupt clients",
        "assumed), at the same n, d, dropout, graph, k and t.",
        "",
        "## Whole protocol",
        "",
        "| n | d | drop | graph | k | t | c | mode | method | client | client MB sent | server "
        "| server MB recv |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        client = _fmt(r["client_s"], "s") if not r["aborted"] else f"aborted ({r['aborted']})"
        lines.append(
            f"| {r['n']} | {r['d']:.0e} | {r['dropout']} | {r['graph']} | {r['k']} | {r['threshold']} | "
            f"{r['corrupt']} | {r['mode']} | {r['method']} | {client} | "
            f"{_fmt(r['client_bytes_sent'], 'MB')} | "
            f"{_fmt(r['server_s'], 's')} | {_fmt(r['server_bytes_received'], 'MB')} |"
        )
    ratios = mode_ratios(rows)
    if ratios:
        lines += [
            "",
            "## Malicious over semi-honest",
            "",
            "| n | d | drop | graph | client seconds | client bytes sent | extra bytes per client "
            "| server seconds | server bytes recv |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for q in ratios:
            lines.append(
                f"| {q['n']} | {q['d']:.0e} | {q['dropout']} | {q['graph']} | "
                f"{_fmt(q['client_s_ratio'], 'x')} | {q['client_bytes_sent_ratio']:.4f} | "
                f"{q['client_extra_bytes']:,.0f} | {_fmt(q['server_s_ratio'], 'x')} | "
                f"{q['server_bytes_received_ratio']:.4f} |"
            )
    # The single-client measurements do not depend on the mode or the dropout: one row per (n, d, k).
    masking: dict[tuple, dict] = {}
    for r in rows:
        masking.setdefault((r["n"], r["d"], r["k"]), r)
    lines += [
        "",
        "## Masking against the PRG bound and Flower",
        "",
        "*mask*: one client's masking of one vector in the protocol's code path (HKDF, expansion and adds",
        "for k neighbours plus the self mask; the k pairwise X25519 secrets are agreed once per session,",
        "when the shares arrive: *agreement*). *keys*: the per-vector HKDFs alone. *expand*: expansion",
        "and adds alone, with `MaskAccumulator`. *PRG*: the bare AES-256-CTR",
        "keystream for the same words and keys. *Flower*: a Flower SecAgg+ client's masking stage",
        "(quantise, mask, mod, serialise) with the same neighbours; *Flower/ours* divides it by ours",
        "(encode, mask, serialise).",
        "",
        "| n | d | k | mask | keys | expand | PRG | mask/PRG | expand/PRG | mask/(PRG+keys) | "
        "agreement (once) | Flower | Flower/ours |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in masking.values():
        lines.append(
            f"| {r['n']} | {r['d']:.0e} | {r['k']} | {_fmt(r['mask_s'], 's')} | "
            f"{_fmt(r['hkdf_s'], 's')} | {_fmt(r['expand_s'], 's')} | "
            f"{_fmt(r['prg_bound_s'], 's')} | "
            f"{_fmt(r['mask_over_prg'], 'x')} | {_fmt(r['expand_over_prg'], 'x')} | "
            f"{_fmt(r['mask_over_prg_and_keys'], 'x')} | {_fmt(r['key_agreement_s'], 's')} | "
            f"{_fmt(r['flower_client_s'], 's')} | "
            f"{_fmt(r['flower_over_ours'], 'x')} |"
        )
    points = list(masking.values())

    def count(key: str) -> str:
        return f"{sum(r[key] <= 2.0 for r in points)}/{len(points)}"

    flower_rows = [r for r in points if r["flower_over_ours"] is not None]
    faster = [r for r in flower_rows if r["flower_over_ours"] > 1.0]
    lines += [
        "",
        "Targets (points meeting them):",
        f"- masking within 2x of the PRG bound: {count('mask_over_prg')} (protocol path), "
        f"{count('mask_fast_over_prg')} (MaskAccumulator path); expansion alone within 2x: "
        f"{count('expand_over_prg')}; within 2x of PRG + HKDFs: {count('mask_over_prg_and_keys')};",
        f"- faster than Flower's SecAgg+ client: {len(faster)}/{len(flower_rows)}"
        + (" (not measured: flwr missing or --no-flower)" if not flower_rows else "")
        + ".",
        "",
    ]
    return "\n".join(lines)


@click.command("secagg")
@click.option(
    "--quick", is_flag=True, help="Small grid (n in {10, 50}, d in {1e4, 1e5}); with --scale, n <= 2000."
)
@click.option(
    "--scale",
    is_flag=True,
    help="Growth in n instead: per-party CPU, bytes and fitted exponents up to n = 10,000 at d = 1e4, "
    "and masking against the AES-256-CTR keystream (see codream.bench.secagg_scale).",
)
@click.option(
    "--ns",
    default=None,
    help="With --scale: comma-separated numbers of clients of the fixed-k sweep (default 250..10000).",
)
@click.option(
    "--max-point-seconds",
    type=float,
    default=None,
    help="With --scale: skip a point predicted to take more CPU seconds than this (default 600).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON instead of a table.")
@click.option(
    "--output", type=click.Path(dir_okay=False), default=None, help="Also write the Markdown report here."
)
@click.option(
    "--repeats",
    type=int,
    default=None,
    help="Session repeats (default: 3 quick, 1 full); single-function timings take at least 3.",
)
@click.option("--no-flower", is_flag=True, help="Skip Flower's SecAgg+ even when flwr is installed.")
@click.option(
    "--mode",
    "modes",
    type=click.Choice(MODES),
    multiple=True,
    help="Protocol mode(s) to measure (repeatable; default both, side by side).",
)
def cli(
    quick: bool,
    scale: bool,
    ns: str | None,
    max_point_seconds: float | None,
    as_json: bool,
    output: str | None,
    repeats: int | None,
    no_flower: bool,
    modes: tuple[str, ...],
) -> None:
    """Cost of secure aggregation: time and bytes by clients, vector size, dropout, graph and mode
    (malicious against semi-honest at equal n, d and dropout); with --scale, the cross-device grid."""
    if scale:
        _scale_cli(quick, ns, max_point_seconds, as_json, output, repeats, no_flower)
        return
    if ns is not None or max_point_seconds is not None:
        raise click.UsageError("--ns and --max-point-seconds go with --scale")
    settings = QUICK if quick else FULL
    overrides: dict[str, object] = {}
    if repeats is not None:
        overrides["repeats"] = repeats
    if no_flower:
        overrides["flower"] = False
    if modes:
        overrides["modes"] = tuple(modes)
    if overrides:
        from dataclasses import replace

        settings = replace(settings, **overrides)
    rows = run(settings, progress=lambda message: click.echo(message, err=True))
    command = " ".join(shlex.quote(a) for a in sys.argv)
    report = to_markdown(rows, command=command, machine=hardware())
    if output:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(report)
    click.echo(json.dumps(rows, indent=1) if as_json else report)


def _scale_cli(
    quick: bool,
    ns: str | None,
    max_point_seconds: float | None,
    as_json: bool,
    output: str | None,
    repeats: int | None,
    no_flower: bool,
) -> None:
    from dataclasses import replace

    from .secagg_scale import SCALE, SCALE_QUICK, run_scale, scale_to_markdown

    settings = SCALE_QUICK if quick else SCALE
    overrides: dict[str, object] = {}
    if ns is not None:
        try:
            overrides["ns"] = tuple(int(n) for n in ns.split(","))
        except ValueError:
            raise click.BadParameter(f"--ns must be comma-separated integers, got {ns!r}") from None
    if max_point_seconds is not None:
        overrides["max_point_seconds"] = max_point_seconds
    if repeats is not None:
        overrides["repeats"] = repeats
    if no_flower:
        overrides["flower"] = False
    settings = replace(settings, **overrides)
    result = run_scale(settings, progress=lambda message: click.echo(message, err=True))
    command = " ".join(shlex.quote(a) for a in sys.argv)
    report = "# Secure aggregation cost at scale\n\n" + scale_to_markdown(
        result, command=command, machine=hardware()
    )
    if output:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(report)
    click.echo(json.dumps(result, indent=1) if as_json else report)
