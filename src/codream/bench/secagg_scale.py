"""How secure aggregation's cost grows with the number of clients (``codream bench secagg --scale``).

Every point is one in-process session (`codream.secagg.runner.InProcessSession`, semi-honest mode, one
vector of d words, default 1e4) timed with ``time.process_time``, so each party's seconds are its CPU
time, serialising what it sends and parsing what it receives included (Python's cyclic garbage
collector is paused during a session: it would walk all n clients' states, which no party of a real
deployment holds, and charge it to whoever runs). round(dropout * n) clients,
chosen by a seeded draw, crash after sharing their keys and before sending their masked input: the
costliest case for the server, which must rebuild their mask keys and re-expand their pairwise masks.
The sum is checked against the plain sum of the survivors' inputs.

Two sweeps over n:

- **fixed k**: a Harary graph of degree k with threshold t at every n (defaults k = 32, t = 17), at
  dropout 0 and 10 %. A cost sweep, not the security rule: it isolates how the server's work grows in
  n when each client's neighbourhood does not, and the fitted exponent of server CPU in n comes from it;
- **rule**: k and t from `codream.secagg.graph.choose_parameters` with its semi-honest rule (10 %
  corrupt clients, clients dropping at random at the sweep's rate, `SessionConfig.dropout_rate`) at
  dropout 0, 10 and 30 %: what a semi-honest deployment would run.

Per point: client CPU (mean and max over the clients that sent their input; set-up and vector parts),
server CPU (set-up = rounds 0-1, vector = rounds 2-3), bytes, and Flower's SecAgg+ client masking stage
at the same (k, d) against ours (the single-client timings of `codream.bench.secagg`). Exponents are
least-squares slopes of log CPU on log n over a sweep's points at one dropout. A point is skipped, and
says so, when the previous point of its sweep, grown by the slope of the last two, predicts more than
``max_point_seconds`` of CPU.

Masking against the keystream: one client's masking of one vector with k neighbours (the per-vector
HKDFs, expansion and adds: the pairwise X25519 secrets are agreed once per session, when the shares
arrive, and are timed apart) against the bare AES-256-CTR keystream for the same words and keys, at d
in ``mask_ds``, best of ``repeats`` interleaved CPU timings.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..exceptions import ConfigError, ProtocolAbort
from ..secagg.graph import choose_parameters
from .secagg import _client_mask_seconds, _flower_client_seconds, _fmt, _Peers

__all__ = ["SCALE", "SCALE_QUICK", "ScaleSettings", "fitted_exponent", "run_scale", "scale_to_markdown"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ScaleSettings:
    """The scale grid.

    Attributes:
        ns: numbers of clients, increasing.
        d: words per vector.
        fixed_k, fixed_t: degree and threshold of the fixed-k sweep.
        fixed_dropouts: dropout rates of the fixed-k sweep.
        rule_ns: numbers of clients of the rule sweep (k and t from `choose_parameters`).
        rule_dropouts: dropout rates of the rule sweep.
        corrupt_fraction: assumed colluding fraction for the rule sweep.
        bits: ring width.
        mask_ds: vector lengths of the masking-against-keystream measurement (at k = fixed_k).
        repeats: single-client timings are the best of this many.
        max_point_seconds: skip a point predicted to take more CPU than this.
        flower: time Flower's SecAgg+ client where flwr is importable.
        seed: seeds the dropped sets and the inputs (never key material).
    """

    ns: tuple[int, ...] = (250, 500, 1000, 2000, 5000, 10_000)
    d: int = 10_000
    fixed_k: int = 32
    fixed_t: int = 18  # the least threshold secure for k = 32 at c = 0 (2^-40)
    fixed_dropouts: tuple[float, ...] = (0.0, 0.1)
    rule_ns: tuple[int, ...] = (100, 200, 500, 1000, 2000)
    rule_dropouts: tuple[float, ...] = (0.0, 0.1, 0.3)
    corrupt_fraction: float = 0.1
    bits: int = 32
    mask_ds: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    repeats: int = 3
    max_point_seconds: float = 600.0
    flower: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("ns", "rule_ns"):
            ns = getattr(self, name)
            if list(ns) != sorted(set(ns)) or any(n < 3 for n in ns):
                raise ConfigError(f"{name} must be increasing numbers of clients >= 3, got {ns}")
        if self.d < 1 or any(d < 1 for d in self.mask_ds):
            raise ConfigError("vector lengths must be >= 1")
        if self.fixed_k < 2 or self.fixed_k % 2 or not 2 <= self.fixed_t <= self.fixed_k + 1:
            raise ConfigError(
                f"need an even k >= 2 and 2 <= t <= k + 1, got k={self.fixed_k}, t={self.fixed_t}"
            )
        if self.ns and self.fixed_k >= self.ns[0]:
            raise ConfigError(f"fixed k = {self.fixed_k} needs more than {self.fixed_k} clients at every n")
        if any(not 0.0 <= p < 1.0 for p in (*self.fixed_dropouts, *self.rule_dropouts)):
            raise ConfigError("dropout rates must lie in [0, 1)")
        if self.repeats < 1 or self.max_point_seconds <= 0:
            raise ConfigError("repeats must be >= 1 and max_point_seconds > 0")


SCALE = ScaleSettings()
SCALE_QUICK = ScaleSettings(
    ns=(250, 500, 1000, 2000), rule_ns=(100, 200, 400), mask_ds=(10_000, 100_000, 1_000_000)
)


def fitted_exponent(ns: Sequence[float], seconds: Sequence[float]) -> float | None:
    """Least-squares slope of log(seconds) on log(n); None with fewer than two usable points."""
    pairs = [(math.log(n), math.log(s)) for n, s in zip(ns, seconds, strict=True) if n > 0 and s and s > 0]
    if len(pairs) < 2 or len({x for x, _ in pairs}) < 2:
        return None
    x = np.array([p[0] for p in pairs])
    y = np.array([p[1] for p in pairs])
    return float(np.polyfit(x, y, 1)[0])


# ------------------------------------------------------------------------------ one session


def _scale_session(
    n: int,
    k: int,
    t: int,
    d: int,
    dropped: Sequence[int],
    bits: int,
    seed: int,
    *,
    corrupt: int = 0,
    dropout_rate: float | None = None,
) -> dict:
    """One timed session; the row's cost fields (or its abort reason)."""
    from ..secagg.config import GraphKind, SessionConfig
    from ..secagg.runner import Dropout, DropoutSchedule, InProcessSession, Stage

    ids = tuple(range(n))
    complete = k >= n - 1
    config = SessionConfig(
        round_index=0,
        client_ids=ids,
        threshold=t,
        vector_lengths=(d,),
        bits=bits,
        graph=GraphKind.COMPLETE if complete else GraphKind.HARARY,
        # The Harary graph is drawn from the session id (a hash of what the clients advertise), so a
        # point's graph differs from run to run; its cost does not depend on which graph it is.
        degree=0 if complete else k,
        corrupt=corrupt,
        min_survivors=max(t, corrupt + 2),
        dropout_rate=None if complete else dropout_rate,
    )
    rng = np.random.default_rng([seed, n])
    inputs = {cid: rng.integers(0, 1 << bits, d, dtype=np.uint32 if bits <= 32 else np.uint64) for cid in ids}
    schedule = DropoutSchedule({cid: Dropout(Stage.MASKED_INPUT, 0) for cid in dropped})
    wall = time.perf_counter()
    session = InProcessSession(config, dropouts=schedule, clock=time.process_time)
    # One process holds all n clients' states; the cyclic collector's passes over them would be
    # charged to whichever party runs when they fall (in a deployment each party holds its own).
    gc.collect()
    gc.disable()
    try:
        session.setup()
        setup_server = session.stats.server_seconds
        setup_clients = dict(session.stats.client_seconds)
        total = session.aggregate(0, inputs)
    except ProtocolAbort as exc:
        return {"aborted": exc.reason.value, "wall_s": time.perf_counter() - wall}
    finally:
        gc.enable()
    wall = time.perf_counter() - wall
    expected = np.zeros(d, dtype=np.uint64)
    for cid in total.survivors:
        expected += inputs[cid]
    if not np.array_equal(total.words, expected & np.uint64((1 << bits) - 1)):
        raise RuntimeError("secure aggregation returned a wrong sum")  # never expected; fail loudly
    stats = session.stats
    senders = list(total.survivors)
    client = np.array([stats.client_seconds[c] for c in senders])
    client_setup = np.array([setup_clients[c] for c in senders])
    return {
        "aborted": None,
        "survivors": len(senders),
        "client_s_mean": float(client.mean()),
        "client_s_max": float(client.max()),
        "client_setup_s_mean": float(client_setup.mean()),
        "client_vector_s_mean": float((client - client_setup).mean()),
        "server_s": stats.server_seconds,
        "server_setup_s": setup_server,
        "server_vector_s": stats.server_seconds - setup_server,
        "client_bytes_sent_mean": float(np.mean([stats.bytes_sent[c] for c in senders])),
        "client_bytes_received_mean": float(np.mean([stats.bytes_received[c] for c in senders])),
        "server_bytes_sent": stats.server_bytes_sent,
        "server_bytes_received": stats.server_bytes_received,
        "wall_s": wall,
    }


# ------------------------------------------------------------------------------ the grid


def _predicted_seconds(done: list[tuple[int, float]], n: int) -> float | None:
    """CPU of the next point from the last two of its sweep (slope at least 1)."""
    if not done:
        return None
    n1, s1 = done[-1]
    slope = 1.0
    if len(done) >= 2:
        n0, s0 = done[-2]
        if s0 > 0 and s1 > 0 and n1 > n0:
            slope = max(1.0, math.log(s1 / s0) / math.log(n1 / n0))
    return s1 * (n / n1) ** slope


def run_scale(settings: ScaleSettings, *, progress: Callable[[str], None] | None = None) -> dict:
    """Measure the scale grid.

    Returns:
        JSON-ready dict: ``rows`` (one per sweep, n and dropout; see `_scale_session` for the cost
        fields, plus k, t, dropped, skipped and the Flower columns), ``fits`` (exponents of CPU in n per
        sweep and dropout) and ``masking`` (one row per d of the masking-against-keystream measurement).
    """
    say = progress or (lambda message: _log.info("%s", message))
    bits, repeats = settings.bits, settings.repeats
    clients: dict[tuple[int, int], tuple[float, tuple[float, float] | None]] = {}

    def client_stage(k: int) -> tuple[float, tuple[float, float] | None]:
        """(our encode + mask of one vector, Flower's (mask, whole stage) or None) at (k, d)."""
        if (k, settings.d) not in clients:
            ours = _client_mask_seconds(_Peers(k), settings.d, bits, repeats)
            flower = _flower_client_seconds(k, settings.d, max(1, repeats - 1)) if settings.flower else None
            clients[(k, settings.d)] = (ours.protocol + ours.encode, flower)
        return clients[(k, settings.d)]

    rows: list[dict] = []
    plans = [("fixed k", settings.ns, p) for p in settings.fixed_dropouts]
    plans += [("rule", settings.rule_ns, p) for p in settings.rule_dropouts]
    for sweep, ns, dropout in plans:
        done: list[tuple[int, float]] = []
        for n in ns:
            how: dict = {}
            if sweep == "fixed k":
                k, t = settings.fixed_k, settings.fixed_t
            else:
                params = choose_parameters(
                    n, dropout_rate=dropout, corrupt_fraction=settings.corrupt_fraction, malicious=False
                )
                k, t = params.k, params.threshold
                how = {"corrupt": params.corrupt, "dropout_rate": params.dropout}
            draw = np.random.default_rng([settings.seed, n, round(dropout * 1000)])
            dropped = sorted(draw.choice(n, size=round(dropout * n), replace=False).tolist())
            row: dict = {
                "sweep": sweep,
                "n": n,
                "d": settings.d,
                "dropout": dropout,
                "k": k,
                "threshold": t,
                "dropped": len(dropped),
                "skipped": None,
            }
            predicted = _predicted_seconds(done, n)
            if predicted is not None and predicted > settings.max_point_seconds:
                row["skipped"] = f"predicted {predicted:.0f} s CPU > {settings.max_point_seconds:.0f} s"
                say(f"{sweep} n={n} dropout={dropout}: {row['skipped']}")
                rows.append(row)
                continue
            say(f"{sweep} n={n} d={settings.d} dropout={dropout} k={k} t={t}")
            row.update(_scale_session(n, k, t, settings.d, dropped, bits, settings.seed, **how))
            ours, flower = client_stage(k)
            row["ours_client_stage_s"] = ours
            row["flower_client_s"] = flower[1] if flower else None
            row["flower_over_ours"] = flower[1] / ours if flower else None
            if not row["aborted"]:
                done.append((n, row["server_s"] + row["client_s_mean"] * n))
            rows.append(row)
    fits = []
    for sweep, _, dropout in plans:
        measured = [r for r in rows if r["sweep"] == sweep and r["dropout"] == dropout and "server_s" in r]
        ns_ = [r["n"] for r in measured]
        fits.append(
            {
                "sweep": sweep,
                "dropout": dropout,
                "ns": ns_,
                "server": fitted_exponent(ns_, [r["server_s"] for r in measured]),
                "server_setup": fitted_exponent(ns_, [r["server_setup_s"] for r in measured]),
                "server_vector": fitted_exponent(ns_, [r["server_vector_s"] for r in measured]),
                "server_bytes_sent": fitted_exponent(ns_, [r["server_bytes_sent"] for r in measured]),
                "client_mean": fitted_exponent(ns_, [r["client_s_mean"] for r in measured]),
            }
        )
    masking = []
    peers = _Peers(settings.fixed_k)
    for d in settings.mask_ds:
        say(f"masking against the keystream: k={settings.fixed_k} d={d}")
        m = _client_mask_seconds(peers, d, bits, repeats)
        stream_bytes = (settings.fixed_k + 1) * d * (4 if bits <= 32 else 8)
        masking.append(
            {
                "k": settings.fixed_k,
                "d": d,
                "keystream_bytes": stream_bytes,
                "keystream_gb_per_s": stream_bytes / m.prg / 1e9,
                "prg_s": m.prg,
                "keys_s": m.keys,
                "agreement_s": m.agreement,
                "expand_s": m.expand,
                "mask_s": m.protocol,
                "mask_over_prg": m.protocol / m.prg,
                "expand_over_prg": m.expand / m.prg,
                "keys_share_of_mask": m.keys / m.protocol,
            }
        )
    return {"rows": rows, "fits": fits, "masking": masking}


# ------------------------------------------------------------------------------ the report


def _mb(value: object) -> str:
    return "-" if value is None else f"{float(value) / 1e6:.2f}"  # type: ignore[arg-type]


def _exp(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def scale_to_markdown(result: dict, *, command: str, machine: dict[str, str]) -> str:
    """The scale grid as Markdown: how it was made, the points, the exponents, the masking table."""
    lines = [
        "## Scale grid (`--scale`)",
        "",
        f"Command: `{command}`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()),
        "",
        "Method: see `codream.bench.secagg_scale` (module docstring). One semi-honest session per",
        "point, one vector of d words; CPU seconds per party (`time.process_time`); round(dropout * n)",
        "clients crash before sending their masked input. *client*: mean (max) over the clients that sent",
        "their input. *server set-up*: rounds 0-1; *server vector*: rounds 2-3. *Flower/ours*: a Flower",
        "SecAgg+ client's masking stage against ours (encode + mask) at the same (k, d).",
        "",
        "| sweep | n | drop | k | t | client CPU | client set-up | server CPU | server set-up | "
        "server vector | server MB sent | server MB recv | client MB sent | wall | Flower/ours |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        head = f"| {r['sweep']} | {r['n']} | {r['dropout']} | {r['k']} | {r['threshold']} |"
        if r.get("skipped") or r.get("aborted"):
            reason = f"skipped ({r['skipped']})" if r.get("skipped") else f"aborted ({r['aborted']})"
            lines.append(f"{head} {reason} |" + " - |" * 9)
            continue
        lines.append(
            f"{head} {_fmt(r['client_s_mean'], 's')} ({_fmt(r['client_s_max'], 's')}) | "
            f"{_fmt(r['client_setup_s_mean'], 's')} | {_fmt(r['server_s'], 's')} | "
            f"{_fmt(r['server_setup_s'], 's')} | {_fmt(r['server_vector_s'], 's')} | "
            f"{_mb(r['server_bytes_sent'])} | {_mb(r['server_bytes_received'])} | "
            f"{_mb(r['client_bytes_sent_mean'])} | {_fmt(r['wall_s'], 's')} | "
            f"{_fmt(r['flower_over_ours'], 'x')} |"
        )
    lines += [
        "",
        "Fitted exponents of CPU (and server bytes sent) in n, least squares over each sweep's measured",
        "points (fixed k: k constant; rule: k grows with n and the dropout):",
        "",
        "| sweep | drop | n | server | server set-up | server vector | server bytes sent | client |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in result["fits"]:
        ns = ", ".join(str(n) for n in f["ns"]) or "-"
        lines.append(
            f"| {f['sweep']} | {f['dropout']} | {ns} | {_exp(f['server'])} | {_exp(f['server_setup'])} | "
            f"{_exp(f['server_vector'])} | {_exp(f['server_bytes_sent'])} | {_exp(f['client_mean'])} |"
        )
    lines += [
        "",
        "Client masking against the AES-256-CTR keystream (one vector, k neighbours plus the self mask;",
        "best-of CPU times): *keystream* is the bare AES-256-CTR output for the same words and keys,",
        "*expand* the expansion and adds with the keys already derived, *keys* the k + 1 per-vector HKDFs,",
        "*mask* the protocol's whole per-vector masking step (`secagg.keys.masked_words`, from the pairwise",
        "secrets). *agreement*: the k X25519 agreements, done once per session when the shares arrive",
        "(off the per-vector path; for J vectors, J agreements per neighbour then).",
        "",
        "| k | d | keystream | keystream GB/s | keys | expand | mask | mask/keystream | expand/keystream | "
        "keys share of mask | agreement (once) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in result["masking"]:
        lines.append(
            f"| {m['k']} | {m['d']:.0e} | {_fmt(m['prg_s'], 's')} | {m['keystream_gb_per_s']:.2f} | "
            f"{_fmt(m['keys_s'], 's')} | {_fmt(m['expand_s'], 's')} | {_fmt(m['mask_s'], 's')} | "
            f"{m['mask_over_prg']:.2f} | {m['expand_over_prg']:.2f} | {m['keys_share_of_mask']:.0%} | "
            f"{_fmt(m['agreement_s'], 's')} |"
        )
    lines.append("")
    return "\n".join(lines)
