"""Scores of predicted probabilities against labels: accuracy, negative log-likelihood and
calibration error. Plain numpy. Shapes: ``probs`` is (N, classes), rows summing to 1 (or
(..., N, classes) where a function says so); ``labels`` is (N,) ints."""

from __future__ import annotations

import numpy as np

ECE_BINS = 15
EPS = 1e-12  # floor for probabilities inside log, so a confident mistake costs ~27.6 nats, not inf


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(probs.argmax(-1) == labels))


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels (nats)."""
    picked = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(picked, EPS))))


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
