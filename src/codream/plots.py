"""PNG plots of a run: accuracy per client, the final dreams by class, epsilon over rounds.

matplotlib runs on the Agg backend (no display needed); each function writes one file and closes its
figure, so long runs do not accumulate figures. Figures are drawn at 150 dpi with text of at least
7 points, so that labels stay readable when a PNG is viewed at its own size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["DPI", "plot_accuracy", "plot_dreams", "plot_epsilon"]

DPI = 150


def plot_accuracy(
    records: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    models: Sequence[str] | None = None,
    title: str | None = None,
    baselines: Mapping[str, Sequence[float]] | None = None,
) -> Path:
    """Test accuracy of every client over rounds, with the mean in bold and the baselines dashed.

    Round 0 is the clients' accuracy right after their local warm-up, when the records carry it
    (``warmup_accuracy`` in the first record).

    Args:
        records: per-round records with ``round`` and ``accuracy`` (one float per client).
        path: PNG to write.
        models: each client's architecture, for the legend.
        title: figure title.
        baselines: label -> mean client accuracy after each round 1, 2, ... (e.g. local-only, trained
            on the same partitions and budget), drawn as dashed lines.
    Returns:
        The path written.
    """
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=DPI)
    warm = bool(records) and records[0].get("warmup_accuracy") is not None
    if records:
        rounds = [int(r["round"]) for r in records]
        acc = np.array([[100 * float(a) for a in r["accuracy"]] for r in records])  # (R, K)
        warm_acc = records[0].get("warmup_accuracy")
        warm = warm_acc is not None and len(warm_acc) == acc.shape[1]
        if warm:
            rounds = [0] + rounds
            acc = np.vstack([100 * np.asarray(warm_acc, dtype=float)[None, :], acc])
        for k in range(acc.shape[1]):
            label = f"client {k}" + (f" ({models[k]})" if models and k < len(models) else "")
            ax.plot(rounds, acc[:, k], marker="o", markersize=3, linewidth=1, alpha=0.7, label=label)
        ax.plot(rounds, acc.mean(axis=1), color="black", linewidth=2.5, label="CoDream mean")
        styles = iter(["tab:gray", "tab:brown", "tab:olive", "tab:cyan"])
        for label, curve in (baselines or {}).items():
            ys = [100 * float(v) for v in curve][: int(rounds[-1])]
            if ys:
                xs = list(range(1, len(ys) + 1))
                ax.plot(
                    xs, ys, linestyle="--", linewidth=2, color=next(styles, "gray"), label=f"{label} (mean)"
                )
        ax.set_xticks(rounds if len(rounds) <= 20 else rounds[:: max(1, len(rounds) // 10)])
        ax.legend(fontsize=8, loc="lower right", ncol=2 if acc.shape[1] > 6 else 1)
    else:
        ax.text(0.5, 0.5, "no finished round", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("round (0 = after local warm-up)" if warm else "round")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.set_title(title or "Client accuracy over rounds")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_epsilon(
    records: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    delta: float | None = None,
    target: float | None = None,
    note: str | None = None,
) -> Path:
    """Privacy spent (epsilon) after each round; a note instead of a curve when the run has no DP.

    Args:
        records: per-round records with ``round`` and ``epsilon`` (None without DP).
        path: PNG to write.
        delta: the delta epsilon is stated at, for the axis label.
        target: the run's target epsilon, drawn as a dashed line.
        note: text to show when no record carries an epsilon.
    Returns:
        The path written.
    """
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=DPI)
    pts = [
        (int(r["round"]), float(r["epsilon"]))
        for r in records
        if r.get("epsilon") is not None and math.isfinite(float(r["epsilon"]))
    ]
    if pts:
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o", color="tab:red", label="epsilon spent")
        if target is not None:
            ax.axhline(target, linestyle="--", color="gray", label=f"target {target:g}")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    else:
        ax.text(
            0.5,
            0.5,
            note or "no differential privacy in this run (epsilon = inf)",
            ha="center",
            va="center",
            transform=ax.transAxes,
            wrap=True,
        )
    ax.set_xlabel("round")
    ax.set_ylabel(f"epsilon (delta = {delta:g})" if delta else "epsilon")
    ax.grid(alpha=0.3)
    ax.set_title("Privacy spent over rounds")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_dreams(
    x: Any,
    soft_labels: Any,
    path: str | Path,
    *,
    per_class: int = 8,
    class_names: Sequence[str] | None = None,
) -> Path:
    """A grid of the final dreams, one row per class by the argmax of the aggregated soft label.

    Within a row the dreams are sorted by the soft label's confidence, most confident first, and the
    confidence is printed above each. Each image is min-max scaled on its own for display.

    Args:
        x: dreams, (B, C, H, W) tensor or array, C in {1, 3}.
        soft_labels: aggregated soft labels, (B, K).
        path: PNG to write.
        per_class: columns of the grid.
        class_names: labels of the rows (default: the class index).
    Returns:
        The path written.
    """
    path = Path(path)
    xs = _as_numpy(x)  # (B, C, H, W)
    ys = _as_numpy(soft_labels)  # (B, K)
    if xs.ndim != 4 or ys.ndim != 2 or xs.shape[0] != ys.shape[0]:
        raise ValueError(
            f"dreams must be (B, C, H, W) with soft labels (B, K); got {xs.shape} and {ys.shape}"
        )
    probs = ys if np.all(ys >= 0) and np.allclose(ys.sum(axis=1), 1, atol=1e-3) else _softmax(ys)
    num_classes = probs.shape[1]
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    cols = max(1, per_class)
    _, c, h, w = xs.shape
    pad = max(1, h // 8)
    # One mosaic image (rows = classes) drawn with a single imshow: fast for any grid size.
    shape = (num_classes * (h + pad) + pad, cols * (w + pad) + pad) + ((3,) if c >= 3 else ())
    canvas = np.ones(shape)
    label_width = max([len(n) for n in (class_names or [])] + [2]) * 0.07
    fig, ax = plt.subplots(figsize=(cols * 0.8 + 1.0 + label_width, num_classes * 0.8 + 0.6), dpi=DPI)
    for k in range(num_classes):
        idx = np.flatnonzero(pred == k)
        idx = idx[np.argsort(-conf[idx])][:cols]
        top = pad + k * (h + pad)
        for j, i in enumerate(idx):
            left = pad + j * (w + pad)
            canvas[top : top + h, left : left + w] = _display(xs[i])
            ax.text(left + w / 2, top - pad / 2, f"{conf[i]:.2f}", ha="center", va="bottom", fontsize=7)
    ax.imshow(canvas, cmap="gray" if c < 3 else None, interpolation="nearest", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([pad + k * (h + pad) + h / 2 for k in range(num_classes)])
    names = [class_names[k] if class_names and k < len(class_names) else str(k) for k in range(num_classes)]
    ax.set_yticklabels([f"{n} ({int((pred == k).sum())})" for k, n in enumerate(names)], fontsize=9)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title("Final dreams by aggregated soft label: class (count), confidence", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _display(img: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W) or (H, W, 3) in [0, 1]."""
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return img[0] if img.shape[0] == 1 else np.transpose(img[:3], (1, 2, 0))
