"""The thin Ray glue: a trial = hyperparameters -> Trial -> `tune.report(metrics, checkpoint)`.

Each epoch's checkpoint carries everything that rebuilds the trial on another node (see
caviar.trial.Trial.state); a restarted or resumed trial continues from the latest one.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import pyarrow.fs
import ray
import torch
from ray import tune

from caviar import devices
from caviar.babysit import BABYSIT_FILE, Babysitter
from caviar.data import SplitData
from caviar.trial import Trial, TrialSettings, data_tensors, find_checkpoint_file, load_checkpoint_file


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
        _run(Trial(hparams, settings, device=device), data)


def _run(trial: Trial, data: SplitData) -> None:
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trial.load_state(load_checkpoint_file(find_checkpoint_file(folder)))
    tensors = data_tensors(data, trial.device)
    # Per-layer histograms and update/weight ratios at a few epochs, written into the trial's
    # folder (synced to storage with each checkpoint); measured on a step that is then undone.
    sitter = Babysitter(trial_folder(), trial, tensors[0], tensors[1])
    sitter.maybe_probe()
    try:
        while not trial.finished:
            metrics = trial.run_epoch(*tensors)
            if metrics["diverged"]:
                # Stop this trial now, with the worst score for ASHA; the sweep goes on.
                tune.report(metrics)
                return
            sitter.maybe_probe()
            with tempfile.TemporaryDirectory() as folder:
                trial.save(folder, metrics)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
    finally:
        sitter.close()
