"""The charts of `caviar report` (caviar.results.report), one function each, each writing one PNG.

Each takes the experiment's table (caviar.results.leaderboard rows, best first) and what else it draws,
and returns the path it wrote, or None when there is nothing to draw yet.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from caviar.config.scales import searched  # noqa: E402
from caviar.config.schedulers import SCHEDULERS, milestones  # noqa: E402
from caviar.config.schema import Config
from caviar.config.space import Choice, Range
from caviar.layout import CHECKPOINT_PATTERN, CHECKPOINT_PREFIX  # noqa: E402
from caviar.results.border import at_position, scored  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.figure import Figure
from caviar.training.babysit import read_babysit  # noqa: E402

CHECKPOINT_GLOB = f"{CHECKPOINT_PREFIX}*/{CHECKPOINT_PATTERN}"


def best_checkpoint(trial_dir: str | Path) -> Path | None:
    files = list(Path(trial_dir).glob(CHECKPOINT_GLOB))
    return max(files, key=lambda p: float(p.stem.rsplit("val_acc=", 1)[1]), default=None)


def _grid(count: int, columns: int = 3, size: tuple[float, float] = (4.0, 2.8)) -> tuple[Any, list[Any]]:
    rows = max(1, math.ceil(count / columns))
    cols = min(columns, max(1, count))
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[count:]:
        ax.axis("off")
    return fig, flat[:count]


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _empty(path: Path, message: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center")
    return _save(fig, path)


def plot_curves(table: pd.DataFrame, histories: dict[str, pd.DataFrame], top: int, kind: str, path: Path) -> Path:
    """kind "acc" or "loss": train vs val per epoch, one chart per top trial."""
    shown = [t for t in table["trial_id"].head(top) if len(histories.get(t, ())) and f"val_{kind}" in histories[t]]
    if not shown:
        return _empty(path, "no trial has reported an epoch yet")
    fig, axes = _grid(len(shown))
    for ax, trial_id in zip(axes, shown):
        h = histories[trial_id]
        for column, style in ((f"train_{kind}", "-o"), (f"val_{kind}", "-s")):
            if column in h:
                ax.plot(h["epoch"], h[column], style, markersize=3, label=column.split("_")[0])
        last = h.iloc[-1]
        gap = last.get(f"train_{kind}", np.nan) - last.get(f"val_{kind}", np.nan)
        best = table.loc[table["trial_id"] == trial_id, "best_val_acc"].iloc[0]
        ax.set_title(f"{trial_id}  best val_acc {best:.3f}\nlast train-val gap {gap:+.3f}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if kind == "acc" else "cross-entropy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _axis_values(values: pd.Series, param: Range) -> np.ndarray:
    """Values on the axis drawn: 1 - beta for one_minus_log (on a log axis), the value otherwise."""
    values = values.astype(float).to_numpy()
    return 1.0 - values if param.scale == "one_minus_log" else values


def plot_hparams(table: pd.DataFrame, config: Config, warnings: list[dict[str, Any]], path: Path) -> Path:
    """Each searched hyperparameter against best val_acc, range borders and outer zones drawn."""
    params = {name: p for name, p in searched(config.space).items() if name in table}
    if not params or table.empty:
        return _empty(path, "no searched hyperparameter to show")
    flagged = {w["param"]: w for w in warnings}
    ranked = scored(table)
    failed = table[~table["trial_id"].isin(ranked["trial_id"])] if "trial_id" in table else table.iloc[0:0]
    fraction = config.search.border_fraction
    fig, axes = _grid(len(params), columns=4, size=(3.6, 2.8))
    for ax, (name, param) in zip(axes, params.items()):
        if isinstance(param, Choice):
            labels = [str(c) for c in param.choices]
            spot = {label: i for i, label in enumerate(labels)}
            rng = np.random.default_rng(0)
            for frame, color, marker in ((ranked, "tab:blue", "o"), (failed, "grey", "x")):
                xs = [spot.get(str(v), np.nan) + rng.uniform(-0.15, 0.15) for v in frame[name]]
                y = frame["best_val_acc"].fillna(0).to_numpy()
                ax.scatter(xs, y, s=14, c=color, marker=marker)
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
            ax.set_title(name, fontsize=9)
        else:
            lo, hi = _axis_values(pd.Series([param.low, param.high]), param)
            log_axis = param.scale in ("log", "log_int", "one_minus_log")
            if log_axis:
                ax.set_xscale("log")
            ax.scatter(_axis_values(ranked[name], param), ranked["best_val_acc"], s=14, c="tab:blue")
            if len(failed):
                ax.scatter(_axis_values(failed[name], param), failed["best_val_acc"].fillna(0), s=14, c="grey",
                           marker="x")
            if len(ranked):
                ax.scatter(_axis_values(ranked[name].head(1), param), ranked["best_val_acc"].head(1), s=90,
                           marker="*", c="gold", edgecolors="black", zorder=3)
            # The outer zones, where a best value triggers the border warning: positions in the
            # sampling scale mapped back to the drawn axis.
            for p0, p1 in ((0.0, fraction), (1.0 - fraction, 1.0)):
                edges = _axis_values(pd.Series([at_position(p0, param), at_position(p1, param)]), param)
                ax.axvspan(min(edges), max(edges), color="tab:red", alpha=0.12, lw=0)
            for edge in (lo, hi):
                ax.axvline(edge, color="tab:red", lw=1.2)
            label = f"1 - {name}" if param.scale == "one_minus_log" else name
            ax.set_xlabel(f"{label} ({param.scale})", fontsize=8)
            title = name
            if name in flagged:
                w = flagged[name]
                title = f"{name}: best on the {w['edge']} edge\ntry {w['suggested'][0]:.3g}..{w['suggested'][1]:.3g}"
            ax.set_title(title, fontsize=9, color="tab:red" if name in flagged else "black")
        ax.set_ylabel("best val_acc", fontsize=8)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def rung_epochs(config: Config) -> list[int]:
    s = config.search
    if not SCHEDULERS[s.scheduler].rungs or s.fidelity == "seconds":  # rungs in seconds fall on no fixed epoch
        return []
    return [int(t) for t in milestones(s.max_epochs, s.grace_period, s.reduction_factor)]


def plot_rungs(table: pd.DataFrame, config: Config, path: Path) -> Path:
    """Trials that reached each epoch; ASHA's rungs (where it stops the bottom trials) marked."""
    max_epochs = config.search.max_epochs
    epochs = np.arange(1, max_epochs + 1)
    reached = [int((table["epochs"] >= e).sum()) if len(table) else 0 for e in epochs]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bars = ax.bar(epochs, reached, color="tab:blue", alpha=0.8)
    for rung in rung_epochs(config):
        ax.axvline(rung + 0.5, color="tab:red", ls="--", lw=1)
        ax.text(rung + 0.55, max(reached or [1]) * 0.95, f"rung {rung}", color="tab:red", fontsize=8, va="top")
    ax.bar_label(bars, fontsize=7)
    kind = "no early stopping"
    if SCHEDULERS[config.search.scheduler].rungs:
        kind = "ASHA, rungs in seconds" if config.search.fidelity == "seconds" else "ASHA"
    ax.set_title(f"trials that reached each epoch ({kind}, {len(table)} trials)", fontsize=10)
    ax.set_xlabel("epoch")
    ax.set_ylabel("trials")
    return _save(fig, path)


def plot_filters(table: pd.DataFrame, path: Path) -> Path | None:
    """The best trial's first-layer filters (3 input channels shown as RGB), each scaled to 0..1."""
    import torch

    if table.empty or pd.isna(table.iloc[0]["best_val_acc"]):
        return None
    file = best_checkpoint(table.iloc[0]["path"])
    if file is None:
        return None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)["model"]
    except Exception as error:  # noqa: BLE001 - a checkpoint being written (or damaged): no chart, a warning
        warnings.warn(f"no filters chart: checkpoint {file} is unreadable ({type(error).__name__})", stacklevel=2)
        return None
    first = next((w for w in state.values() if w.dim() == 4 and w.shape[1] == 3), None)
    if first is None:
        return None
    w = first.float().numpy().transpose(0, 2, 3, 1)  # (filters, k, k, RGB)
    low, high = w.min(axis=(1, 2, 3), keepdims=True), w.max(axis=(1, 2, 3), keepdims=True)
    w = (w - low) / np.maximum(high - low, 1e-12)
    count = len(w)
    cols = min(16, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(0.6 * cols + 0.4, 0.6 * rows + 0.6), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < count:
            ax.imshow(w[i], interpolation="nearest")
    fig.suptitle(f"first-layer filters of {table.iloc[0]['trial_id']} ({file.name})", fontsize=9)
    return _save(fig, path)


def plot_update_ratio(table: pd.DataFrame, path: Path) -> Path | None:
    """Per-layer ||dW||/||W|| of the best trial at each probe; the notes' ~1e-3 drawn."""
    if table.empty:
        return None
    records = read_babysit(table.iloc[0]["path"])
    if not records:
        return None
    layers = list(records[-1]["update_ratio"])
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for layer in layers:
        points = [(r["epoch"], r["update_ratio"].get(layer)) for r in records]
        points = [(e, v) for e, v in points if v is not None and v > 0 and math.isfinite(v)]
        if points:
            ax.plot(*zip(*points), "-o", markersize=3, label=layer)
    ax.axhline(1e-3, color="tab:red", ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("epoch (probe)")
    ax.set_ylabel("||dW|| / ||W|| per step")
    ax.set_title(f"update/weight ratio per layer, {table.iloc[0]['trial_id']} (red: 1e-3)", fontsize=10)
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_ensemble(info: dict[str, Any], path: Path) -> Path:
    members = info.get("members", [])
    names = [str(m.get("name", i)) for i, m in enumerate(members)]
    accs = [float(m.get("accuracy", np.nan)) for m in members]
    used = ["tab:blue" if m.get("weight", 1) else "lightgrey" for m in members]
    fig, ax = plt.subplots(figsize=(max(6.5, 0.45 * len(names) + 2), 3.6))
    ax.bar(range(len(names)), accs, color=used, label="members")
    ax.axhline(float(info["accuracy"]), color="tab:red", lw=2, label=f"ensemble {float(info['accuracy']):.4f}")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    finite = [a for a in accs + [float(info["accuracy"])] if math.isfinite(a)]
    if finite:
        ax.set_ylim(max(0.0, min(finite) - 0.05), min(1.0, max(finite) + 0.03))
    ax.set_ylabel("test accuracy")
    ax.set_title("members vs the ensemble (grey: candidates not chosen)", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)
