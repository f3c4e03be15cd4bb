"""Which of the search's best configs a `from_top` stage trains (`stages.N.pick`): by rank, or for
what each adds to the ones already picked (`diverse`).

An ensemble gains only on the images its members do not all get wrong, and seeds of one config
share most of their errors (three quarters on Fashion-MNIST, docs/benchmark-history.md section 7);
configs that differ in optimizer, regularisation or augmentation err more differently (hyper-deep
ensembles, Wenzel et al. 2020, choose them this way). `diverse` takes the best config first, then,
among the search's top trials (the stage's `top` share), the one whose search checkpoint lowers the
validation NLL of the average with those already picked the most (Caruana et al. 2004's greedy
selection, without repeats), and so on. Only the validation split is read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from caviar.config.schema import Config, StageConfig
from caviar.layout import TRIAL_PREFIX
from caviar.results.border import scored, top_count
from caviar.results.folder import ExperimentFolder
from caviar.results.scores import nll
from caviar.training.identity import experiment_data
from caviar.training.train import predict_logits
from caviar.training.trial import load_saved_checkpoint, model_from_state

if TYPE_CHECKING:
    from caviar.sweeps.experiment import SweepOutcome


def complementary_order(probs: np.ndarray, labels: np.ndarray) -> list[int]:
    """Candidates (members, N, classes) in the order greedy selection adds them: the first (the
    best by rank) first, then each time the one that gives the average of those taken the lowest
    NLL on `labels`."""
    order, total = [0], probs[0].astype(np.float64)
    left = list(range(1, len(probs)))
    while left:
        scores = [nll((total + probs[i]) / (len(order) + 1), labels) for i in left]
        pick = left.pop(int(np.argmin(scores)))
        order.append(pick)
        total = total + probs[pick]
    return order


def validation_probs(path: str, trial_ids: list[str], config: Config) -> tuple[np.ndarray, np.ndarray]:
    """(trials, N, classes) softmax probabilities of each trial's best checkpoint on the validation
    split, and its labels."""
    data = experiment_data(config, path, "pick the next stage's configs", subset=False)
    records = {r.trial_id: r for r in ExperimentFolder(path).trials(only={f"{TRIAL_PREFIX}{i}" for i in trial_ids})}
    images = torch.from_numpy(data.val_x)
    probs = []
    for trial_id in trial_ids:
        state = load_saved_checkpoint(records[trial_id].checkpoints[0][0])
        logits = predict_logits(model_from_state(state), images, stats=(data.mean, data.std))
        probs.append(torch.softmax(logits, dim=1).double().numpy())
    return np.stack(probs), data.val_y


def pick_order(prior: "SweepOutcome", stage: StageConfig, log: Callable[[str], None]) -> list[int] | None:
    """Positions in `scored(prior.trials)` in the order stage `stage` takes its configs: None for
    rank order (its `pick`, or nothing to choose between), else the diverse order of the top
    candidates, then the rest by rank. A candidate whose checkpoint cannot be read leaves the
    order by rank, with a line in the log."""
    if stage.pick != "diverse" or not stage.from_top:
        return None
    table = scored(prior.trials)
    pool = min(len(table), max(stage.from_top + 1, top_count(len(table), stage.top)))
    if pool <= 1 or "trial_id" not in table:
        return None
    ids = [str(i) for i in table["trial_id"].head(pool)]
    try:
        probs, labels = validation_probs(prior.path, ids, prior.config)
    except Exception as error:  # noqa: BLE001 - a damaged checkpoint must not stop the sweep: rank order
        log(f"   pick diverse: the candidates' checkpoints could not be read ({type(error).__name__}: {error}); "
            "taking the configs by rank")
        return None
    order = complementary_order(probs, labels)
    taken = order[:stage.from_top]
    averaged = nll(probs[taken].mean(axis=0), labels)
    by_rank = nll(probs[:stage.from_top].mean(axis=0), labels)
    log(f"   pick diverse: of the top {pool}, " + ", ".join(f"#{i + 1}" for i in taken)
        + f" (validation NLL of their search checkpoints' average {averaged:.4f}; the top {stage.from_top} by rank: "
        f"{by_rank:.4f})")
    return order + list(range(pool, len(table)))
