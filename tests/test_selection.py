"""caviar.ensembles.selection: NLL, ECE and greedy ensemble selection on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from caviar.ensembles.selection import (
    accuracy,
    choose_weights,
    combine,
    ece,
    greedy_select,
    nll,
    uniform_select,
)


def test_nll_and_accuracy_by_hand():
    """NLL is the mean of -ln p(true label); accuracy counts argmax hits."""
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.25, 0.25]])
    labels = np.array([0, 2, 0])
    assert nll(probs, labels) == pytest.approx(-(math.log(0.7) + math.log(0.1) + math.log(0.5)) / 3)
    assert accuracy(probs, labels) == pytest.approx(2 / 3)


def test_ece_by_hand():
    """15 bins: confidences 0.95, 0.95 (one right) and 0.5, 0.5 (both right) -> (2/4)|0.5-0.95| + (2/4)|1-0.5|."""
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.5, 0.5], [0.5, 0.5]])
    labels = np.array([0, 1, 0, 0])
    assert ece(probs, labels) == pytest.approx(0.5 * 0.45 + 0.5 * 0.5)
    perfect = np.eye(3)[[0, 1, 2]]
    assert ece(perfect, np.array([0, 1, 2])) == 0.0


def test_greedy_picks_the_right_weights():
    """Two members each right on a different half, one always wrong: greedy mixes the first two equally."""
    n = 100
    labels = np.zeros(n, dtype=int)
    a = np.tile([0.9, 0.1], (n, 1))
    a[n // 2 :] = [0.2, 0.8]  # A is right on the first half only
    b = a[::-1].copy()  # B is right on the second half only
    bad = np.tile([0.05, 0.95], (n, 1))
    weights = greedy_select(np.stack([a, b, bad]), labels)
    np.testing.assert_allclose(weights, [0.5, 0.5, 0.0])
    # members that disagree: the ensemble is at least as accurate as the best one
    ensemble = combine(np.stack([a, b, bad]), weights)
    assert accuracy(ensemble, labels) >= max(accuracy(m, labels) for m in (a, b, bad))


@pytest.mark.parametrize("seed", range(5))
def test_greedy_is_never_worse_than_the_best_member(seed):
    """On the data it selects on, greedy's NLL <= the best single member's (its first pick)."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(10) * 0.5, size=(6, 300))
    labels = rng.integers(0, 10, 300)
    weights = greedy_select(probs, labels)
    assert weights.sum() == pytest.approx(1) and (weights >= 0).all()
    assert nll(combine(probs, weights), labels) <= min(nll(p, labels) for p in probs) + 1e-12


def test_uniform_and_combine():
    """Uniform selection weighs members equally; combine is the weighted average of probabilities."""
    probs = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert list(uniform_select(probs)) == [0.5, 0.5]
    np.testing.assert_allclose(combine(probs, [3, 1]), [[0.75, 0.25]])


def test_weights_are_chosen_from_validation_data_alone():
    """choose_weights takes validation probabilities, labels, the member groups and the selector's
    name (no test data can reach it), and gives each group the weights its members alone get."""
    import inspect

    assert list(inspect.signature(choose_weights).parameters) == ["val_probs", "val_labels", "groups", "select"]
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10) * 0.5, size=(4, 200))
    labels = rng.integers(0, 10, 200)
    groups = {"top": [0, 1], "seed": [2, 3], "all": [0, 1, 2, 3]}
    chosen = choose_weights(probs, labels, groups, "greedy")
    np.testing.assert_array_equal(chosen.overall, greedy_select(probs, labels))
    assert chosen.groups == groups and list(chosen.by_group) == ["top", "seed", "all"]
    np.testing.assert_array_equal(chosen.by_group["seed"], greedy_select(probs[[2, 3]], labels))
    np.testing.assert_array_equal(choose_weights(probs, labels, groups, "uniform").overall, np.full(4, 0.25))
