"""Choosing ensemble weights (the scores themselves: caviar.results.scores). Plain numpy, no models.

Shapes: ``probs`` is (N, classes) for one model or (members, N, classes) for several, rows summing
to 1; ``labels`` is (N,) ints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from caviar.results.scores import ECE_BINS, EPS, accuracy, ece, nll  # noqa: F401 - the ensemble's scores, here too


def combine(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted soft vote: (members, N, C) x (members,) -> (N, C)."""
    weights = np.asarray(weights, dtype=np.float64)
    return np.tensordot(weights / weights.sum(), probs, axes=1)


def greedy_select(probs: np.ndarray, labels: np.ndarray, rounds: int | None = None) -> np.ndarray:
    """Ensemble selection with replacement (Caruana et al. 2004), scored by NLL on `labels`.

    Each round adds the member (possibly one already chosen) whose addition gives the lowest NLL
    of the averaged probabilities; the weights are the counts of the best round's ensemble. The
    first round picks the best single member, so the result is never worse than it on this data.
    Returns (members,) weights summing to 1.
    """
    members = probs.shape[0]
    rounds = rounds or max(20, 2 * members)
    # Only the probability of the true label enters the NLL: work on (members, N).
    true_label = probs[:, np.arange(len(labels)), labels].astype(np.float64)
    running = np.zeros(true_label.shape[1])
    counts = np.zeros(members)
    best_score, best_counts = np.inf, counts
    for step in range(1, rounds + 1):
        scores = -np.mean(np.log(np.maximum((running + true_label) / step, EPS)), axis=1)
        pick = int(np.argmin(scores))
        counts = counts.copy()
        counts[pick] += 1
        running += true_label[pick]
        if scores[pick] < best_score - 1e-12:
            best_score, best_counts = scores[pick], counts
    return best_counts / best_counts.sum()


def uniform_select(probs: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    return np.full(probs.shape[0], 1.0 / probs.shape[0])


SELECTORS = {"greedy": greedy_select, "uniform": uniform_select}


@dataclass(frozen=True)
class ChosenWeights:
    """Ensemble weights chosen on validation: over every member, and over each group of members alone."""

    overall: np.ndarray  # (members,), summing to 1
    groups: dict[str, list[int]]  # group name (a kind of member, or "all") -> its members' indices
    by_group: dict[str, np.ndarray]  # group name -> (len(groups[name]),) weights, summing to 1


def choose_weights(val_probs: np.ndarray, val_labels: np.ndarray, groups: dict[str, list[int]],
                   select: str) -> ChosenWeights:
    """The `select` weights of the (members, N, classes) validation probabilities, for all members and
    for each group alone. Validation data is all it is given: the test set cannot steer a weight."""
    selector = SELECTORS[select]
    return ChosenWeights(selector(val_probs, val_labels), groups,
                   {name: selector(val_probs[idx], val_labels) for name, idx in groups.items()})
