"""What `caviar ensemble` returns and writes: `EnsembleResult` (test figures, one row per member,
the reloadable `Ensemble`), its output folder (ensemble.json, members.csv, the plot) and the table
it prints."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from caviar import storage
from caviar.ensembles.model import Ensemble, Images
from caviar.errors import ConfigError
from caviar.layout import ENSEMBLE_FILE, ENSEMBLE_PLOT_FILE as PLOT_FILE, MEMBERS_DIR, MEMBERS_FILE


@dataclass
class EnsembleResult:
    accuracy: float  # on the test set
    nll: float
    ece: float
    members: pd.DataFrame  # one row per member: kind, weight, validation and test figures
    by_kind: dict[str, dict[str, float]]  # the same selection restricted to one kind of member
    ensemble: Ensemble
    info: dict[str, Any] = field(default_factory=dict)  # everything written to ensemble.json

    @property
    def gain(self) -> float:
        """Test accuracy of the ensemble minus that of the best single member (chosen on validation)."""
        return self.info["gain_over_best_member"]

    def predict(self, images: Images) -> np.ndarray:
        return self.ensemble.predict(images)

    def save(self, folder: str) -> None:
        """Ensemble (reloadable with Ensemble.load), ensemble.json, members.csv and the plot."""
        if storage.is_uri(folder):  # write locally, then copy to object storage
            with tempfile.TemporaryDirectory() as local:
                self.save(local)
                import pyarrow.fs

                fs, path = storage.filesystem(folder)
                pyarrow.fs.copy_files(local, path, destination_filesystem=fs)
            return
        target = Path(folder).expanduser()
        check_output_folder(str(target))
        if (target / MEMBERS_DIR).exists():
            shutil.rmtree(target / MEMBERS_DIR)  # stale members of an earlier `caviar ensemble` (checked above)
        self.ensemble.save(target, self.info)
        self.members.to_csv(target / MEMBERS_FILE, index=False)
        _plot(self, target / PLOT_FILE)


def check_output_folder(folder: str) -> None:
    """`folder` can take an ensemble: writable, and any members/ in it is one `caviar ensemble` wrote
    (next to its ensemble.json), since saving replaces it. Checked before any work, and again on save."""
    if storage.is_uri(folder):
        return
    target = Path(folder).expanduser()
    if (target / MEMBERS_DIR).exists() and not (target / ENSEMBLE_FILE).is_file():
        raise ConfigError(f"--out {target}: it holds a members/ folder that `caviar ensemble` did not write (no "
                          f"{ENSEMBLE_FILE} beside it); choose another --out")
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target, prefix=".caviar-write-test-"):
            pass
    except OSError as error:
        raise ConfigError(f"--out {target}: cannot write there ({error.strerror or error}); choose another --out") \
            from None


def _plot(result: EnsembleResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = result.members.sort_values("test_acc")
    colours = {"top": "tab:blue", "average": "tab:green", "seed": "tab:orange", "snapshot": "tab:purple"}
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(table) + 2), 4))
    ax.bar(range(len(table)), table["test_acc"], color=[colours[k] for k in table["kind"]])
    ax.axhline(result.accuracy, color="black", linestyle="--", label=f"ensemble {result.accuracy:.4f}")
    ax.set_xticks(range(len(table)), table["name"], rotation=60, ha="right", fontsize=7)
    low = min(table["test_acc"].min(), result.accuracy)
    ax.set_ylim(max(0, low - 0.05), min(1, max(table["test_acc"].max(), result.accuracy) + 0.02))
    ax.set_ylabel("test accuracy")
    ax.set_title("members (colour = kind) vs ensemble")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    ax.legend(handles + ax.get_legend_handles_labels()[0], list(colours) + ax.get_legend_handles_labels()[1],
              fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def describe(result: EnsembleResult) -> str:
    """The short table `caviar ensemble` prints."""
    shown = result.members[["name", "kind", "weight", "val_acc", "test_acc", "test_nll", "test_ece"]]
    lines = [shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"), ""]
    for kind, figures in result.by_kind.items():
        lines.append(f"{kind + ' only' if kind != 'all' else 'all members':>16}: acc {figures['accuracy']:.4f}  "
                     f"nll {figures['nll']:.4f}  ece {figures['ece']:.4f}  ({figures['members']} members)")
    best = result.info["best_member"]
    if result.ensemble.flip:
        lines.append("each member averaged over the image and its mirror image (--no-flip to leave that out)")
    if result.ensemble.translate:
        lines.append("each view averaged with itself moved one pixel diagonally both ways (--translate)")
    lines.append(f"ensemble (test): acc {result.accuracy:.4f}  nll {result.nll:.4f}  ece {result.ece:.4f};  "
                 f"best single member {best['name']}: acc {best['accuracy']:.4f}  (gain {result.gain:+.4f})")
    return "\n".join(lines)
