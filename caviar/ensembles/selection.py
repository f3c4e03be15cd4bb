"""Scoring predictions and choosing ensemble weights. Plain numpy, no models.

Shapes: ``probs`` is (N, classes) for one model or (members, N, classes) for several, rows summing
to 1; ``labels`` is (N,) ints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ECE_BINS = 15
_EPS = 1e-12  # floor for probabilities inside log, so a confident mistake costs ~27.6 nats, not inf


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(probs.argmax(-1) == labels))


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels (nats)."""
    picked = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(picked, _EPS))))


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: sum over equal-width confidence bins of
    (bin size / N) * |accuracy in bin - mean confidence in bin|; bin b holds confidences in
    (b/bins, (b+1)/bins], the first bin also 0."""
    confidence = probs.max(-1)
    correct = probs.argmax(-1) == labels
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(total)


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
        scores = -np.mean(np.log(np.maximum((running + true_label) / step, _EPS)), axis=1)
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
