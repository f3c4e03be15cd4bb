"""`caviar report EXPERIMENT`: an HTML page with PNG charts, from an experiment folder on disk.

Read from the files a sweep writes while it runs (each trial's params.json, result.json,
checkpoints and babysit.jsonl; caviar.yaml; leaderboard.csv once finished), so it works on a
finished experiment and on a running one (trials still running show as "running"). Written into
the experiment folder: ``report.html`` and ``report/*.png``:

- accuracy.png: train and val accuracy per epoch of the top trials, one chart per trial (a wide
  gap = overfitting, both low and close = underfitting);
- loss.png: train and val loss of the same trials;
- hparams.png: each searched hyperparameter against best val_acc, on its sampling scale, with the
  range's borders and outer zones drawn and the border warning (caviar.results.border) in the title;
- rungs.png: how many trials reached each epoch, ASHA's rungs marked (early-stopping survival);
- filters.png: the first-layer filters of the best trial at its best checkpoint;
- update_ratio.png: the best trial's per-layer update/weight ratio at its probes (caviar.training.babysit);
- ensemble.png: member vs ensemble test accuracy, when <experiment>/ensemble/ensemble.json exists.

A staged experiment (stages.json) gets one report per stage and a top page that links them. The
charts are drawn by caviar.results.charts.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from caviar import storage
from caviar.config.loading import build_config, read_yaml
from caviar.config.scales import searched
from caviar.config.schema import Config
from caviar.errors import ConfigError
from caviar.layout import (
    CONFIG_FILE,
    ENSEMBLE_DIR,
    ENSEMBLE_FILE as _ENSEMBLE_JSON,
    REPORT_FILE,
    REPORT_IMAGES_DIR as IMAGES_DIR,
    STAGES_FILE,
    SUMMARY_FILE,
)
from caviar.results.border import border_warnings, scored
from caviar.results.charts import plot_curves, plot_ensemble, plot_filters, plot_hparams, plot_rungs, plot_update_ratio
from caviar.results.folder import ExperimentFolder
from caviar.training import identity

ENSEMBLE_FILE = Path(ENSEMBLE_DIR) / _ENSEMBLE_JSON


# ---------------------------------------------------------------- reading an experiment folder
def read_trials(folder: Path, config: Config) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """(table best first, histories by trial_id) from the trial folders, finished or running."""
    return ExperimentFolder(str(folder)).trial_table(config.search.max_epochs, live=True)


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
    path = folder / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"{folder} has no {CONFIG_FILE}; pass an experiment folder that `caviar sweep` wrote")
    return build_config(read_yaml(path, "saved config"), str(path))


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
    summary_file = folder / SUMMARY_FILE
    parts += _budget_line(json.loads(summary_file.read_text()).get("budget") if summary_file.exists() else None)
    parts += _data_line(str(folder))
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


def _budget_line(budget: dict | None) -> list[str]:
    """What a budgeted sweep's plan bought, in runs of the recipe and the shape it took (summary.json
    or stages.json: caviar.sweeps.shapes), as a paragraph; none for a sweep without a budget."""
    shape = (budget or {}).get("shape") or {}
    return [f"<p class='note'>Budget: {html.escape(str(shape['text']))}</p>"] if shape.get("text") else []


def _data_line(folder: str) -> list[str]:
    """What data the trials trained on (data.json: caviar.training.identity), as a paragraph: the
    report reads no images, so a reader sees which data its figures are of; none for a folder from
    before data.json."""
    found = identity.recorded(folder)
    if found is None:
        return []
    d = found[1]
    return [f"<p class='note'>Data: {html.escape(str(d.get('format')))} at {html.escape(str(d.get('root')))}, "
            f"{len(d.get('classes') or [])} classes, {d.get('images', '?')} training images, "
            f"{d.get('val_size')} held out for validation (split seed {d.get('split_seed')}); content digest "
            f"{html.escape(str(d.get('content', '?'))[:12])} (a resume or <code>caviar ensemble</code> on other "
            "data stops).</p>"]


def report_staged(folder: Path, top: int = 6) -> Path:
    plan = json.loads((folder / STAGES_FILE).read_text())
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>caviar report: {html.escape(folder.name)}"
             f"</title>{_style()}</head><body><h1>caviar staged report: {html.escape(folder.name)}</h1>"]
    parts += _budget_line(plan.get("budget"))
    parts += _data_line(str(folder))
    for entry in plan.get("stages", []):
        stage_dir = folder / entry["folder"]
        acc = entry.get("best_val_acc")
        score = f"best val_acc {acc:.4f}" if isinstance(acc, (int, float)) else "no score yet"
        parts.append(f"<h2>Stage {entry['index']}: {html.escape(entry['name'])}</h2><p>{entry['num_samples']} trials "
                     f"x {entry['epochs']} epochs, {score} [{html.escape(str(entry.get('status')))}]</p>")
        if (stage_dir / CONFIG_FILE).exists():
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
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ConfigError(f"--top {top!r}: the trials whose curves are drawn, 1 or more")
    if storage.is_uri(str(experiment)):
        raise ConfigError(f"{experiment}: the report reads a local folder; copy the experiment folder from object "
                          "storage first (e.g. `aws s3 sync`)")
    folder = Path(experiment).expanduser().resolve()
    if (folder / STAGES_FILE).exists():
        return report_staged(folder, top)
    return report_experiment(folder, top)
