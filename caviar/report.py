"""`caviar report EXPERIMENT`: an HTML page with PNG charts, from an experiment folder on disk.

Read from the files a sweep writes while it runs (each trial's params.json, result.json,
checkpoints and babysit.jsonl; caviar.yaml; leaderboard.csv once finished), so it works on a
finished experiment and on a running one (trials still running show as "running"). Written into
the experiment folder: ``report.html`` and ``report/*.png``:

- accuracy.png: train and val accuracy per epoch of the top trials, one chart per trial (a wide
  gap = overfitting, both low and close = underfitting);
- loss.png: train and val loss of the same trials;
- hparams.png: each searched hyperparameter against best val_acc, on its sampling scale, with the
  range's borders and outer zones drawn and the border warning (caviar.border) in the title;
- rungs.png: how many trials reached each epoch, ASHA's rungs marked (early-stopping survival);
- filters.png: the first-layer filters of the best trial at its best checkpoint;
- update_ratio.png: the best trial's per-layer update/weight ratio at its probes (caviar.babysit);
- ensemble.png: member vs ensemble test accuracy, when <experiment>/ensemble/ensemble.json exists.

A staged experiment (stages.json) gets one report per stage and a top page that links them.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from caviar import storage  # noqa: E402
from caviar.babysit import read_babysit  # noqa: E402
from caviar.border import at_position, border_warnings, scored  # noqa: E402
from caviar.config import Choice, Config, ConfigError, Range, build_config  # noqa: E402
from caviar.leaderboard import trial_row  # noqa: E402
from caviar.space import searched  # noqa: E402

REPORT_FILE = "report.html"
IMAGES_DIR = "report"
ENSEMBLE_FILE = Path("ensemble") / "ensemble.json"
CHECKPOINT_GLOB = "checkpoint_*/epoch=*-val_acc=*.pt"


# ---------------------------------------------------------------- reading an experiment folder
def _history(trial_dir: Path) -> pd.DataFrame:
    """One row per reported epoch; a line being written right now is skipped."""
    rows = []
    path = trial_dir / "result.json"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows.append({k: v for k, v in row.items() if k != "config"})
    return pd.DataFrame(rows)


def read_trials(folder: Path, config: Config) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """(table best first, histories by trial_id) from the trial folders, finished or running."""
    statuses: dict[str, str] = {}
    board = folder / "leaderboard.csv"
    if board.exists():
        saved = pd.read_csv(board)
        statuses = dict(zip(saved["trial_id"].astype(str), saved["status"]))
    rows, histories = [], {}
    for trial_dir in sorted(folder.glob("trial_*")):
        params = trial_dir / "params.json"
        if not trial_dir.is_dir() or not params.exists():
            continue
        trial_id = trial_dir.name.removeprefix("trial_")
        history = _history(trial_dir)
        epochs = int(history["epoch"].max()) if "epoch" in history and len(history) else 0
        ray_status = "TERMINATED" if epochs >= config.search.max_epochs else "RUNNING"
        row = trial_row(trial_id, ray_status, json.loads(params.read_text()), history, config.search.max_epochs,
                        path=str(trial_dir))
        if trial_id in statuses:
            row["status"] = statuses[trial_id]
        elif row["status"] == "unfinished":
            row["status"] = "running"
        rows.append(row)
        histories[trial_id] = history
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values("best_val_acc", ascending=False, na_position="last").reset_index(drop=True)
    return table, histories


def best_checkpoint(trial_dir: str | Path) -> Path | None:
    files = list(Path(trial_dir).glob(CHECKPOINT_GLOB))
    return max(files, key=lambda p: float(p.stem.rsplit("val_acc=", 1)[1]), default=None)


# ---------------------------------------------------------------- charts
def _grid(count: int, columns: int = 3, size: tuple[float, float] = (4.0, 2.8)) -> tuple[Any, list[Any]]:
    rows = max(1, math.ceil(count / columns))
    cols = min(columns, max(1, count))
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[count:]:
        ax.axis("off")
    return fig, flat[:count]


def _save(fig: Any, path: Path) -> Path:
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
    if s.scheduler != "asha":
        return []
    rungs, epoch = [], s.grace_period
    while epoch < s.max_epochs:
        rungs.append(epoch)
        epoch *= s.reduction_factor
    return rungs


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
    kind = "ASHA" if config.search.scheduler == "asha" else "no early stopping"
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
    state = torch.load(file, map_location="cpu", weights_only=True)["model"]
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


# ---------------------------------------------------------------- the page
CHARTS = [
    ("accuracy", "Accuracy curves of the top trials", "Train (augmented) and validation accuracy per epoch, one "
     "chart per trial: a widening gap means overfitting (more regularisation), two low close curves underfitting "
     "(a bigger model)."),
    ("loss", "Loss curves of the top trials", "Training and validation cross-entropy per epoch."),
    ("hparams", "Hyperparameters against validation accuracy", "Each searched hyperparameter on its sampling "
     "scale (log axis for log scales, 1 - beta for momentum); red lines: the range's borders, shaded: the outer "
     "zones where a best value (gold star) triggers the border warning; grey crosses: diverged or failed trials."),
    ("rungs", "ASHA rung survival", "Trials that reached each epoch; dashed: the rungs where ASHA stops the "
     "bottom trials."),
    ("filters", "First-layer filters of the best trial", "Smooth, varied colour and edge detectors are healthy; "
     "noisy filters suggest too little training or regularisation."),
    ("update_ratio", "Update/weight ratio per layer (best trial)", "||dW|| / ||W|| of one training step at each "
     "probe; the notes' rule of thumb is about 1e-3 (red line)."),
    ("ensemble", "Ensemble members vs the ensemble", "Test accuracy of each member and of the ensemble "
     "(from ensemble/ensemble.json)."),
]


def _style() -> str:
    return ("<style>body{font-family:sans-serif;max-width:1300px;margin:1em auto;padding:0 1em;color:#222}"
            "img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse;font-size:12px}"
            "td,th{border:1px solid #ccc;padding:2px 6px}.warn{background:#fff3f3;border-left:4px solid #c00;"
            "padding:.4em .8em;margin:.3em 0}.note{color:#555;font-size:13px}</style>")


def _load_config(folder: Path) -> Config:
    path = folder / "caviar.yaml"
    if not path.exists():
        raise ConfigError(f"{folder} has no caviar.yaml; pass an experiment folder that `caviar sweep` wrote")
    return build_config(yaml.safe_load(path.read_text()), str(path))


def report_experiment(folder: Path, top: int = 6) -> Path:
    """report.html + report/*.png for one sweep folder (a stage's folder too)."""
    config = _load_config(folder)
    table, histories = read_trials(folder, config)
    images = folder / IMAGES_DIR
    images.mkdir(exist_ok=True)
    warnings = border_warnings(table, config.space, config.search.border_fraction) if len(table) else []
    made: dict[str, Path | None] = {}
    made["accuracy"] = plot_curves(table, histories, top, "acc", images / "accuracy.png") if len(table) else None
    made["loss"] = plot_curves(table, histories, top, "loss", images / "loss.png") if len(table) else None
    made["hparams"] = plot_hparams(table, config, warnings, images / "hparams.png")
    made["rungs"] = plot_rungs(table, config, images / "rungs.png")
    made["filters"] = plot_filters(table, images / "filters.png")
    made["update_ratio"] = plot_update_ratio(table, images / "update_ratio.png")
    ensemble = folder / ENSEMBLE_FILE
    made["ensemble"] = plot_ensemble(json.loads(ensemble.read_text()), images / "ensemble.png") \
        if ensemble.exists() else None

    counts = table["status"].value_counts().to_dict() if len(table) else {}
    best = scored(table).head(1)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>caviar report: {html.escape(config.name)}"
             f"</title>{_style()}</head><body>",
             f"<h1>caviar report: {html.escape(config.name)}</h1>",
             f"<p>{html.escape(str(folder))}<br>{len(table)} trials: "
             + ", ".join(f"{n} {html.escape(str(s))}" for s, n in counts.items())
             + (f". Best val_acc {best.iloc[0]['best_val_acc']:.4f} ({html.escape(str(best.iloc[0]['trial_id']))})."
                if len(best) else ".")
             + f" Search: {config.search.algorithm}, scheduler {config.search.scheduler}, "
               f"{config.search.max_epochs} epochs max.</p>"]
    for w in warnings:
        parts.append(f"<div class='warn'>Best value on the border: {html.escape(w['message'])}</div>")
    if len(table):
        shown = [c for c in ("trial_id", "status", "best_val_acc", "best_epoch", "epochs") if c in table]
        shown += [name for name in searched(config.space) if name in table]
        parts.append("<h2>Leaderboard (top 10)</h2>" + table[shown].head(10).to_html(index=False, float_format="%.4g"))
    for key, title, note in CHARTS:
        if made.get(key) is not None:
            parts.append(f"<h2>{title}</h2><p class='note'>{note}</p>"
                         f"<img src='{IMAGES_DIR}/{made[key].name}' alt='{key}'>")
    parts.append("<p class='note'>TensorBoard histograms of activations and gradients per layer: "
                 f"<code>tensorboard --logdir {html.escape(str(folder))}</code></p></body></html>")
    out = folder / REPORT_FILE
    out.write_text("\n".join(parts))
    return out


def report_staged(folder: Path, top: int = 6) -> Path:
    plan = json.loads((folder / "stages.json").read_text())
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>caviar report: {html.escape(folder.name)}"
             f"</title>{_style()}</head><body><h1>caviar staged report: {html.escape(folder.name)}</h1>"]
    for entry in plan.get("stages", []):
        stage_dir = folder / entry["folder"]
        acc = entry.get("best_val_acc")
        score = f"best val_acc {acc:.4f}" if isinstance(acc, (int, float)) else "no score yet"
        parts.append(f"<h2>Stage {entry['index']}: {html.escape(entry['name'])}</h2><p>{entry['num_samples']} trials "
                     f"x {entry['epochs']} epochs, {score} [{html.escape(str(entry.get('status')))}]</p>")
        if (stage_dir / "caviar.yaml").exists():
            report_experiment(stage_dir, top)
            parts.append(f"<p><a href='{entry['folder']}/{REPORT_FILE}'>report of this stage</a></p>")
            parts.append(f"<img src='{entry['folder']}/{IMAGES_DIR}/hparams.png' alt='stage {entry['index']} hparams'>")
        rules = entry.get("rules", {})
        if rules:
            parts.append("<ul>" + "".join(f"<li>{html.escape(r['why'])}</li>" for r in rules.values()) + "</ul>")
    parts.append("</body></html>")
    out = folder / REPORT_FILE
    out.write_text("\n".join(parts))
    return out


def write_report(experiment: str | Path, top: int = 6) -> Path:
    """Write the report of the experiment folder `experiment` (local path); returns report.html."""
    if storage.is_uri(str(experiment)):
        raise ConfigError(f"{experiment}: the report reads a local folder; copy the experiment folder from object "
                          "storage first (e.g. `aws s3 sync`)")
    folder = Path(experiment).expanduser().resolve()
    if (folder / "stages.json").exists():
        return report_staged(folder, top)
    return report_experiment(folder, top)
