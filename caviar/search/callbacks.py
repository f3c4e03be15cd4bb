"""Ray Tune callbacks on the driver: checkpoint pruning that needs no forced snapshot, and the
compact console.

Why caviar prunes checkpoints itself: with ``CheckpointConfig(num_to_keep=k)`` Ray Tune deletes
a trial's superseded checkpoints and, so that its saved experiment state never points at a deleted
one, rewrites that whole state (every trial's entry, ~20 kB each) whenever a trial has saved k
checkpoints since the last snapshot (ray/tune/execution/experiment_state.py calls it "a
non-performant workaround"). At 1,000 one-epoch trials with keep 1 that is a snapshot per trial,
30 GB written for 228 MB of results: bytes grow with the square of the trial count. Here Ray keeps
every checkpoint and snapshots on its own clock (``TUNE_GLOBAL_CHECKPOINT_S``, by default adapted so
snapshots take ~5% of the time), and `CheckpointPruner` deletes a superseded checkpoint only once
two snapshots written after it was superseded no longer point at it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ray import tune
from ray.tune.experiment import Trial

from caviar import storage
from caviar.config.durations import format_duration
from caviar.layout import RESUME_FILE
from caviar.search import reader, seal


# ---------------------------------------------------------------- checkpoint pruning
def _score(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else -math.inf


class CheckpointPruner(tune.Callback):
    """Keeps each trial's `keep` best checkpoints by val_acc plus its latest, as Ray's num_to_keep
    would; a checkpoint kept only for its score loses its RESUME_FILE (optimizer, schedule, RNG:
    what resuming needs, 2/3 of the bytes with Adam) once a later one exists. Both happen two
    experiment snapshots later, when no saved state can name the checkpoint as the one to resume."""

    def __init__(self, keep: int):
        self.keep = keep
        self._kept: dict[str, list[tuple[float, int, tune.Checkpoint]]] = {}  # trial -> (score, order, ckpt)
        self._latest: dict[str, tune.Checkpoint] = {}
        self._since_snapshot: list[tuple[str, tune.Checkpoint]] = []  # ("delete" | "strip", checkpoint)
        self._before_snapshot: list[tuple[str, tune.Checkpoint]] = []  # queued before the last snapshot
        self._order = 0

    def on_checkpoint(self, iteration: int, trials: list[Trial], trial: Trial, checkpoint: tune.Checkpoint, **info: Any):
        # Ray calls this with the result that came with the checkpoint already in trial.last_result.
        self._order += 1
        if trial.trial_id not in self._kept:
            self._kept[trial.trial_id] = saved = self._already_saved(checkpoint)
            if saved:  # the newest was the one to resume from until now
                self._latest[trial.trial_id] = max(saved, key=lambda item: item[1])[2]
        previous = self._latest.get(trial.trial_id)
        self._latest[trial.trial_id] = checkpoint
        kept = self._kept[trial.trial_id]
        kept.append((_score(trial.last_result.get("val_acc")), self._order, checkpoint))
        kept.sort(key=lambda item: (item[0], item[1]), reverse=True)  # best first; a tie keeps the newer
        for item in kept[self.keep:]:
            if item[2] is not checkpoint:  # the latest always stays, for resume
                kept.remove(item)
                self._since_snapshot.append(("delete", item[2]))
        if previous is not None and any(item[2] is previous for item in kept):
            self._since_snapshot.append(("strip", previous))  # kept for its score, no longer to resume from

    def _already_saved(self, checkpoint: tune.Checkpoint) -> list[tuple[float, int, tune.Checkpoint]]:
        """A trial's checkpoints from before this driver started (a resumed sweep), as kept ones."""
        folder = checkpoint.path.rstrip("/").rsplit("/", 1)[0]
        return [(_score(saved.val_acc), saved.index - 10**9, saved.checkpoint)
                for saved in reader.saved_checkpoints(checkpoint.filesystem, folder)
                if saved.checkpoint.path.rstrip("/") != checkpoint.path.rstrip("/")]

    def get_state(self) -> None:
        # Called by Ray each time it writes the experiment state: the snapshot being written names
        # only checkpoints still kept as latest, and the one before it none of those queued before
        # it, so those can go now.
        self._apply(self._before_snapshot)
        self._before_snapshot, self._since_snapshot = self._since_snapshot, []
        return None  # nothing of its own to save

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        # Ray has written the final state (it names each trial's latest checkpoint).
        self._apply(self._before_snapshot + self._since_snapshot)
        self._before_snapshot, self._since_snapshot = [], []

    @staticmethod
    def _apply(actions: list[tuple[str, tune.Checkpoint]]) -> None:
        for action, checkpoint in actions:
            try:
                if action == "delete":
                    checkpoint.filesystem.delete_dir(checkpoint.path)
                else:
                    checkpoint.filesystem.delete_file(f"{checkpoint.path}/{RESUME_FILE}")
            except (FileNotFoundError, OSError):
                pass  # already gone (deleted after a strip, a retried trial): nothing to keep


# ---------------------------------------------------------------- sealing Ray's state
class StateSeal(tune.Callback):
    """Each time Ray saves the experiment state, fingerprint its state files (caviar.search.seal) so that
    `--resume` can refuse ones changed or planted since."""

    def __init__(self) -> None:
        self._storage: Any = None  # Ray's StorageContext of the experiment, from its first trial
        self._carried: dict[str, str] | None = None

    def setup(self, **info: Any) -> None:
        # Also called on resume, with this object as it was pickled at the start (the folder may
        # have moved since): look everything up again.
        self._storage, self._carried = None, None

    def on_step_begin(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if self._storage is None and trials:
            self._storage = trials[0].storage

    def get_state(self) -> None:
        # Ray has just written its state to the driver's staging folder, which it then syncs to
        # the experiment folder with everything in it, the seal too.
        if self._storage is not None:
            if self._carried is None:  # tuner.pkl and earlier sessions' state: only on storage
                self._carried = seal.digests(self._storage.storage_filesystem, self._storage.experiment_fs_path)
            seal.write_seal(self._storage.experiment_driver_staging_path, self._carried)
        return None


# ---------------------------------------------------------------- the console
# Events printed one line each, up to this many of a kind; the rest are counted in the status line.
MAX_EVENT_LINES = 5
STATUS_EVERY_S = 30.0


@dataclass
class _Counts:
    epochs: int = 0
    diverged: set = field(default_factory=set)
    errored: set = field(default_factory=set)


class ProgressPrinter(tune.Callback):
    """A status line every STATUS_EVERY_S seconds (trials by state, best so far, trial-epochs per
    minute, an ETA) and one line per notable event: a new leading trial, a diverged trial, a failed
    one with the path of its error log. Replaces Ray Tune's per-trial boxes and tables, which run
    to tens of thousands of lines at thousands of trials (`caviar sweep --verbose` keeps them)."""

    def __init__(self, total: int, *, deadline: float | None = None, log: Callable[[str], None] = print,
                 every_s: float = STATUS_EVERY_S):
        self.total, self.deadline, self.log, self.every_s = total, deadline, log, every_s
        self.begin = time.time()
        self.last_status = self.begin
        self.best: tuple[float, str, int] | None = None  # (val_acc, trial_id, epoch)
        self.counts = _Counts()
        self.events: dict[str, int] = {}
        self.done_before: int | None = None  # trials already done when this run began (a resume)

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles the callbacks into tuner.pkl; the function printing the lines is the caller's
        # (and `print` itself may have been swapped by then: Ray's tqdm support patches it).
        return {key: value for key, value in self.__dict__.items() if key != "log"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.log = print  # a resumed sweep prints to the console

    def setup(self, **info: Any) -> None:
        # Also called when a sweep resumes, with this object as it was pickled at the start.
        self.begin = self.last_status = time.time()
        self.counts.epochs, self.done_before = 0, None

    def _event(self, kind: str, text: str) -> None:
        self.events[kind] = self.events.get(kind, 0) + 1
        if self.events[kind] <= MAX_EVENT_LINES:
            self.log(text)
        elif self.events[kind] == MAX_EVENT_LINES + 1:
            self.log(f"(further '{kind}' events are counted in the status line)")

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        self.counts.epochs += 1
        if result.get("diverged"):
            self.counts.diverged.add(trial.trial_id)
            self._event("diverged", f"trial {trial.trial_id} diverged at epoch {result.get('epoch')} "
                        f"(lr {trial.config.get('lr', '?')})")
            return
        acc = result.get("val_acc")
        if isinstance(acc, (int, float)) and math.isfinite(acc) and (self.best is None or acc > self.best[0]):
            leader_changed = self.best is None or self.best[1] != trial.trial_id
            self.best = (float(acc), trial.trial_id, int(result.get("epoch", 0)))
            if leader_changed:
                self._event("new best", f"new best: val_acc {acc:.4f}, trial {trial.trial_id} at epoch "
                            f"{result.get('epoch')}")

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.counts.errored.add(trial.trial_id)
        log = storage.join(trial.storage.trial_fs_path, "error.txt") if getattr(trial, "storage", None) else "?"
        self._event("failed", f"trial {trial.trial_id} failed; its error: {log}")

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        now = time.time()
        if now - self.last_status >= self.every_s:
            self.last_status = now
            self.log(self.status(trials, now))

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self.log(self.status(trials, time.time()))

    def status(self, trials: list[Trial], now: float) -> str:
        states: dict[str, int] = {}
        for trial in trials:
            states[trial.status] = states.get(trial.status, 0) + 1
        done = states.get("TERMINATED", 0) + states.get("ERROR", 0)
        if self.done_before is None:
            self.done_before = done
        waiting = self.total - done - states.get("RUNNING", 0) - states.get("PAUSED", 0)
        parts = [f"{done}/{self.total} done"]
        if self.counts.diverged or self.counts.errored:
            parts[-1] += f" ({len(self.counts.diverged)} diverged, {len(self.counts.errored)} failed)"
        parts.append(f"{states.get('RUNNING', 0)} running")
        if states.get("PAUSED"):
            parts.append(f"{states['PAUSED']} paused at a rung")
        parts.append(f"{max(0, waiting)} to start")
        if self.best:
            parts.append(f"best val_acc {self.best[0]:.4f} ({self.best[1]})")
        minutes = max(now - self.begin, 1e-9) / 60
        parts.append(f"{self.counts.epochs / minutes:.0f} trial-epochs/min")
        eta = self._eta(done, now)
        if eta is not None:
            parts.append(f"ETA {format_duration(eta, exact=True)}")
        return f"[{time.strftime('%H:%M:%S', time.localtime(now))}] " + " | ".join(parts)

    def _eta(self, done: int, now: float) -> float | None:
        left = self.deadline - now if self.deadline else None
        finished_here = done - (self.done_before or 0)
        if finished_here > 0 and done < self.total:
            by_trials = (now - self.begin) / finished_here * (self.total - done)
            left = by_trials if left is None else min(left, by_trials)
        return None if left is None else max(0.0, left)


