"""Every file and folder name in an experiment folder, once. Writers and readers both use these
names, so a rename is one edit here.

    EXPERIMENT/                      one sweep (or a staged sweep's parent folder)
      caviar.yaml                    CONFIG_FILE: the resolved config, every key
      data.json                      DATA_FILE: what data the trials train on (caviar.training.identity)
      leaderboard.csv, summary.json  LEADERBOARD_FILE, SUMMARY_FILE: written when the sweep ends
      stages.json                    STAGES_FILE: a staged sweep's plan and each stage's outcome
      stage<i>-<name>/               stage_folder(): each stage, an experiment folder of its own
      tuner.pkl, experiment_state-*  Ray Tune's state (its own names), sealed by SEAL_FILE
      caviar-state.json              SEAL_FILE: fingerprints of Ray's state files
      tracking.json                  TRACKING_FILE: the MLflow / W&B runs of this folder
      trial_<id>/                    TRIAL_PREFIX: one trial (Ray's params.json, result.json, progress.csv)
        checkpoint_<n>/              CHECKPOINT_PREFIX
          epoch=007-val_acc=0.8123.pt  checkpoint_name(): weights, averages, hyperparameters
          resume.pt                  RESUME_FILE: optimizer, schedule and RNG state (latest only)
        babysit.jsonl, tensorboard/  BABYSIT_FILE, TENSORBOARD_DIR
      ensemble/                      ENSEMBLE_DIR: what `caviar ensemble` writes by default
        ensemble.json, members.csv, ensemble.png, members/   ENSEMBLE_FILE, MEMBERS_FILE, ...
      report.html, report/           REPORT_FILE, REPORT_IMAGES_DIR
"""

from __future__ import annotations

import re

CONFIG_FILE = "caviar.yaml"
LEADERBOARD_FILE = "leaderboard.csv"
SUMMARY_FILE = "summary.json"
DATA_FILE = "data.json"
STAGES_FILE = "stages.json"
SEAL_FILE = "caviar-state.json"
TRACKING_FILE = "tracking.json"
TUNER_FILE = "tuner.pkl"  # Ray Tune's: its presence says Ray can resume the folder

TRIAL_PREFIX = "trial_"
CHECKPOINT_PREFIX = "checkpoint_"
CHECKPOINT_PATTERN = "epoch=*-val_acc=*.pt"  # a glob for checkpoint_name()
CHECKPOINT_NAME = re.compile(r"epoch=(\d+)-val_acc=([0-9.]+|nan)\.pt")  # groups: epoch, val_acc
RESUME_FILE = "resume.pt"
BABYSIT_FILE = "babysit.jsonl"
TENSORBOARD_DIR = "tensorboard"

ENSEMBLE_DIR = "ensemble"
ENSEMBLE_FILE = "ensemble.json"
MEMBERS_FILE = "members.csv"
MEMBERS_DIR = "members"
ENSEMBLE_PLOT_FILE = "ensemble.png"

REPORT_FILE = "report.html"
REPORT_IMAGES_DIR = "report"


# The longest experiment or stage name, in bytes: file systems hold 255 a name, and caviar adds to
# it (stage<i>-, .prev<k>, .partial).
MAX_NAME_BYTES = 200


def folder_name_problem(name: str) -> str | None:
    """What makes `name` unfit to be an experiment folder's name (None: nothing)."""
    if not name or "/" in name or name in (".", ".."):
        return "must be a plain folder name such as cifar10-asha (no '/')"
    if any(ord(c) < 32 or c in '\\:*?"<>|' for c in name):
        return (f"{name!r} holds characters a file system cannot hold or that break paths (control characters, "
                "\\ : * ? \" < > |); use letters, digits, '-', '_' or '.'")
    if len(name.encode()) > MAX_NAME_BYTES:
        return (f"is {len(name.encode())} bytes long; a folder name holds at most {MAX_NAME_BYTES} here (file "
                "systems allow 255, and caviar adds suffixes such as .prev1); shorten it")
    return None


def checkpoint_name(epoch: int, val_acc: float) -> str:
    """A name that sorts by quality in a folder listing: ``epoch=007-val_acc=0.8123.pt``."""
    return f"epoch={epoch:03d}-val_acc={val_acc:.4f}.pt"


def stage_folder(index: int, name: str) -> str:
    """Stage `index` (1-based) of a staged sweep, in its parent folder: ``stage1-coarse``."""
    return f"stage{index}-{name}"
