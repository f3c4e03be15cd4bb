"""The thin Ray glue: a trial = hyperparameters -> Trial -> `tune.report(metrics, checkpoint)`.

Each epoch's checkpoint carries everything that rebuilds the trial on another node (see
caviar.training.trial.Trial.state); a restarted or resumed trial continues from the latest one.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import pyarrow.fs
import ray
import torch
from ray import tune

from caviar.layout import BABYSIT_FILE
from caviar.search import reader
from caviar.training import devices, memory
from caviar.training.babysit import Babysitter
from caviar.training.data import SplitData
from caviar.training.trial import Trial, TrialSettings, data_tensors, find_checkpoint_file, load_checkpoint_file


def assigned_gpus() -> tuple[list[str], float]:
    """The GPUs Ray gave this trial (ids) and its share of one (0.25 when four trials share it)."""
    share = float(tune.get_context().get_trial_resources().required_resources.get("GPU", 0))
    return [str(gpu) for gpu in ray.get_gpu_ids()], share


def trial_device() -> tuple[torch.device, float]:
    """The trial's device, from what Ray assigned, with its memory bounded to the trial's share."""
    gpu_ids, share = assigned_gpus()
    device = devices.trial_device(gpu_ids)
    devices.bound_gpu_memory(device, share)
    return device, share


def trial_folder() -> str:
    """The trial's working folder on this node: the one Ray copies to the trial's folder on storage
    (SyncConfig(sync_artifacts=True)), with every checkpoint and when the trial ends.

    Not `get_trial_dir()`: for the first trial of an actor that is the driver's staging folder as
    seen from this node, which only the driver's own node syncs, so on a worker node the files
    were lost. A retried or resumed trial starts in a new, empty working folder (another node,
    another Ray session): the probes of its earlier attempts are fetched from storage first, so
    new ones are appended to them rather than written over them at the next sync.
    """
    storage = tune.get_context().get_storage()
    folder = storage.trial_working_directory
    os.makedirs(folder, exist_ok=True)
    local = os.path.join(folder, BABYSIT_FILE)
    remote = f"{storage.trial_fs_path}/{BABYSIT_FILE}"
    fs = storage.storage_filesystem
    if not os.path.exists(local) and fs.get_file_info(remote).type == pyarrow.fs.FileType.File:
        pyarrow.fs.copy_files(remote, local, source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
    return folder


def train_trial(hparams: dict[str, Any], data: SplitData, settings: TrialSettings) -> None:
    """Ray Tune function trainable: run one trial, resuming from its last checkpoint if any."""
    torch.set_num_threads(settings.threads)
    device, share = trial_device()
    model = devices.describe_model(settings.family, settings.width, hparams)
    with devices.explain_oom(hparams.get("batch_size"), model, device, share):
        _run(Trial(hparams, settings, device=device), data, share)


def resume_point(given: tune.Checkpoint | None, hparams: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """The state the trial continues from, and whether it is newer than the checkpoint Ray gives.

    That is the newest resumable checkpoint in the trial's own folder on storage, else the one Ray
    gives (PBT's exploit hands over another trial's: that one wins). Ray's saved experiment state
    is a snapshot taken every so often, not at every checkpoint (see caviar.search.callbacks), and Ctrl-C
    lets a trial finish the epoch it is in after the driver stopped listening: so Ray may name an
    older checkpoint than the trial reached, or none at all. Continuing from the newest one trains
    no epoch twice. Ray's numbering of checkpoint folders is moved past the newest, so the next
    one never lands in a folder that exists.
    """
    context = tune.get_context().get_storage()
    fs, folder = context.storage_filesystem, context.trial_fs_path
    saved = reader.saved_checkpoints(fs, folder)
    if saved:
        context.current_checkpoint_index = max(context.current_checkpoint_index, saved[-1].index)
    newest = next((s for s in reversed(saved) if s.resumable), None)
    foreign = given is not None and not given.path.startswith(folder.rstrip("/") + "/")  # PBT
    if newest is not None and not foreign and (given is None or newest.checkpoint.path != given.path):
        with newest.checkpoint.as_directory() as local:
            state = load_checkpoint_file(find_checkpoint_file(local))
        # A trial id Ray drew again after a crash, for another config, must not take this state.
        if state.get("hparams") == dict(hparams):
            return state, True
    if given is None:
        return None, False
    with given.as_directory() as local:
        return load_checkpoint_file(find_checkpoint_file(local)), False


def _run(trial: Trial, data: SplitData, share: float) -> None:
    state, newer = resume_point(tune.get_checkpoint(), trial.hparams)
    if state is not None:
        trial.load_state(state)
    if newer and state.get("metrics"):
        # Ray may not have logged this epoch (its driver stopped before the result arrived): report
        # it again, marked, so result.json has every epoch; readers drop it where Ray had it.
        tune.report(dict(state["metrics"]) | {"replayed": True})
    # a GPU trial's own copy of the data, refused before it is made where it leaves no room to train
    memory.check_device_copy((data.train_x, data.train_y, data.val_x, data.val_y), trial.device, share)
    tensors = data_tensors(data, trial.device)
    # Per-layer histograms and update/weight ratios at a few epochs, written into the trial's
    # folder (synced to storage with each checkpoint); measured on a step that is then undone.
    sitter = Babysitter(trial_folder(), trial, tensors[0], tensors[1])
    sitter.maybe_probe()
    # Seconds of each epoch in this process (training, evaluation, probes, checkpoint), the first
    # left out of the mean (warm-up): the speed a trial with a deadline fits its length to.
    epoch_s: list[float] = []
    try:
        while not trial.finished:
            began = time.time()
            metrics = trial.run_epoch(*tensors)
            if metrics["diverged"]:
                # Stop this trial now, with the worst score for ASHA; the sweep goes on.
                tune.report(metrics)
                return
            sitter.maybe_probe()
            with tempfile.TemporaryDirectory() as folder:
                trial.save(folder, metrics)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
            epoch_s.append(time.time() - began)
            if len(epoch_s) > 1:
                trial.refit(sum(epoch_s[1:]) / (len(epoch_s) - 1), time.time())
    finally:
        sitter.close()
