"""Re-runs of one configuration with new seeds, for the ensemble (caviar.ensembles asks for them):
independent initialisations of the best trial, trained in parallel as a Ray Tune experiment inside
the experiment folder."""

from __future__ import annotations

import time
from typing import Any

import pyarrow.fs
import ray
from ray import tune

from caviar import storage
from caviar.config.schema import Config
from caviar.search import connect, tuning
from caviar.search.callbacks import ProgressPrinter
from caviar.search.reader import TrialRecord, has_state, read_trials
from caviar.training.identity import experiment_data


def rerun_with_seeds(
    experiment: str, config: Config, hparams: dict[str, Any], seeds: list[int], *, prefix: str,
    address: str | None = None,
) -> list[TrialRecord]:
    """Train `hparams` from scratch once per seed, in parallel, as a Ray Tune experiment
    ``<prefix>-<time>`` inside the experiment folder (same storage, so `ray up` clusters work too).

    Seeds that already finished in an earlier ``<prefix>-*`` run of the same folder are reused;
    only missing seeds are trained.
    """
    finished = _finished_seed_runs(experiment, prefix)
    missing = [seed for seed in seeds if seed not in finished]
    if missing:
        data = experiment_data(config, experiment, "re-run the best config from new seeds")
        started = connect.start_ray(address)
        try:
            trainable = tuning.trainable(config, data, connect.check_cluster(config, experiment, joined=not started))
            del data  # in the object store now (see sweep)
            run = config.model_copy(update={"name": f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"})
            tuning.fit(tune.Tuner(
                trainable,
                param_space={**hparams, "seed": tune.grid_search(missing)},
                tune_config=tune.TuneConfig(metric="val_acc", mode="max", reuse_actors=True,
                                            trial_dirname_creator=tuning.trial_dirname),
                run_config=tuning.run_config(run, experiment, callbacks=[
                    ProgressPrinter(len(missing), log=print)]),
            ))
        finally:
            if started:
                ray.shutdown()
        finished = _finished_seed_runs(experiment, prefix)
    return [finished[seed] for seed in seeds if seed in finished]


def _finished_seed_runs(experiment: str, prefix: str) -> dict[int, TrialRecord]:
    """seed -> the finished trial that trained it, over every `<prefix>-*` run in the folder."""
    fs, root = storage.filesystem(experiment)
    runs = [info.path for info in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
            if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith(prefix + "-")]
    finished: dict[int, TrialRecord] = {}
    for run in sorted(runs):
        location = storage.join(experiment, run.rsplit("/", 1)[-1])
        if not has_state(location):
            continue
        for record in read_trials(location):
            if record.ray_status == "TERMINATED" and record.checkpoints:
                finished[int(record.hparams["seed"])] = record
    return finished
