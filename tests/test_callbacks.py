"""caviar.search.callbacks without a Ray cluster: the pruner keeps the best and the latest checkpoints and
deletes nothing a saved experiment state may still name; the console stays short at any scale."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs
from ray import tune

from caviar.layout import RESUME_FILE, checkpoint_name
from caviar.search.callbacks import MAX_EVENT_LINES, CheckpointPruner, ProgressPrinter


def _checkpoint(folder: Path, index: int, epoch: int, val_acc: float) -> tune.Checkpoint:
    path = folder / f"checkpoint_{index:06d}"
    path.mkdir(parents=True)
    (path / checkpoint_name(epoch, val_acc)).write_bytes(b"weights")
    (path / RESUME_FILE).write_bytes(b"optimizer")
    return tune.Checkpoint(path=str(path), filesystem=pyarrow.fs.LocalFileSystem())


def _report(pruner: CheckpointPruner, trial: SimpleNamespace, checkpoint: tune.Checkpoint, val_acc: float) -> None:
    trial.last_result = {"val_acc": val_acc}
    pruner.on_checkpoint(0, [], trial, checkpoint)


def _state(folder: Path) -> dict[str, bool]:
    """checkpoint folder -> still resumable."""
    return {p.name: (p / RESUME_FILE).exists() for p in sorted(folder.glob("checkpoint_*"))}


def test_pruner_keeps_best_and_latest_and_waits_two_snapshots(tmp_path):
    """keep=2 over scores 0.5, 0.7, 0.6, 0.8, 0.65: nothing goes before two snapshots have been written
    since it was superseded; at the end the two best (0.8, 0.7) and the latest (0.65) are left, and only
    the latest can still be resumed from."""
    pruner = CheckpointPruner(keep=2)
    trial = SimpleNamespace(trial_id="t1", last_result={})
    scores = [0.5, 0.7, 0.6, 0.8, 0.65]
    for index, score in enumerate(scores):
        _report(pruner, trial, _checkpoint(tmp_path, index, index + 1, score), score)
    assert len(_state(tmp_path)) == 5 and all(_state(tmp_path).values())  # Ray's last state may name any
    pruner.get_state()  # a snapshot: what was superseded before it is still named by the previous one
    assert len(_state(tmp_path)) == 5
    pruner.get_state()  # a second snapshot: now nothing saved names the superseded ones
    assert _state(tmp_path) == {"checkpoint_000001": False, "checkpoint_000003": False, "checkpoint_000004": True}


def test_pruner_finishes_at_the_end_and_adopts_checkpoints_from_before_a_resume(tmp_path):
    """A resumed sweep's pruner counts the checkpoints already in the trial's folder; at the end of the
    experiment everything superseded goes at once."""
    for i, score in enumerate([0.9, 0.4]):
        _checkpoint(tmp_path, i, i + 1, score)
    pruner = CheckpointPruner(keep=1)
    trial = SimpleNamespace(trial_id="t1", last_result={})
    _report(pruner, trial, _checkpoint(tmp_path, 2, 3, 0.5), 0.5)
    pruner.on_experiment_end([])
    # 0.9 stays as the best, 0.4 (the latest before the resume) goes, the new one is the latest.
    assert _state(tmp_path) == {"checkpoint_000000": True, "checkpoint_000002": True}


def test_console_is_a_line_per_event_kind_and_a_status_line(tmp_path):
    """1,000 trials, a third diverging: a few event lines, a status line with counts and the best."""
    lines: list[str] = []
    printer = ProgressPrinter(1000, log=lines.append, every_s=3600)
    printer.setup()
    trials = []
    for i in range(1000):
        trial = SimpleNamespace(trial_id=f"t{i}", config={"lr": 0.1}, status="TERMINATED",
                                storage=SimpleNamespace(trial_fs_path=f"/r/trial_t{i}"))
        trials.append(trial)
        diverged = i % 3 == 0
        printer.on_trial_result(0, trials, trial, {"epoch": 1, "val_acc": 0.0 if diverged else i / 1000,
                                                   "diverged": diverged})
        printer.on_step_end(0, trials)
    printer.on_trial_error(0, trials, trials[5])
    printer.on_experiment_end(trials)
    assert len(lines) <= 2 * (MAX_EVENT_LINES + 1) + 2 + 1, lines
    assert any("failed; its error: /r/trial_t5/error.txt" in line for line in lines)
    status = lines[-1]
    assert "1000/1000 done (334 diverged, 1 failed)" in status and "best val_acc 0.9980 (t998)" in status
