"""caviar.training.rungs (search.anneal: rung): the LR anneals to zero at each ASHA rung, per step, and
a trial promoted past a rung goes on from its checkpoint on a new schedule to the next one,
exactly as if it had not been paused."""

from __future__ import annotations

import pytest
import torch
from test_train import HPARAMS, tensors  # noqa: F401 - the module-scoped fixture

from caviar.config.loading import load_config
from caviar.errors import ConfigError
from caviar.training.rungs import lr_factor, segment
from caviar.training.trial import Trial, TrialSettings, load_checkpoint_file


def test_the_schedule_anneals_at_every_rung_and_restarts_after_it():
    ends = (1, 3, 9, 27)
    assert segment(ends, 0.0) == (0.0, 1.0) and segment(ends, 1.0) == (1.0, 3.0) and segment(ends, 26.9) == (9.0, 27.0)
    assert lr_factor("cosine", ends, 0.0) == 1.0 and lr_factor("cosine", ends, 0.999) < 1e-5  # zero at rung 1
    assert lr_factor("cosine", ends, 1.0) == 1.0 and lr_factor("cosine", ends, 2.0) == pytest.approx(0.5)
    assert lr_factor("cosine", ends, 3.0) == 1.0 and lr_factor("cosine", ends, 27.0) == pytest.approx(0.0)
    assert lr_factor("constant", ends, 0.9) == 1.0  # nothing to anneal
    assert lr_factor("step", ends, 8.99) == 0.01 and lr_factor("exponential", ends, 2.0) == pytest.approx(0.1)


def test_rungs_come_from_the_asha_ladder_and_count_epochs():
    """max_epochs 27, grace 1, eta 3: the LR reaches zero at 1, 3, 9 and 27; a sweep that anneals
    over the whole schedule (the default) or does not use ASHA has no rungs to anneal at."""
    config = load_config(None, search__max_epochs=27, search__reduction_factor=3, search__anneal="rung")
    settings = TrialSettings.from_config(config)
    assert settings.anneal_at == (1, 3, 9) and settings.anneal_ends == (1, 3, 9, 27)
    assert TrialSettings.from_config(load_config(None, search__max_epochs=27)).anneal_at == ()
    with pytest.raises(ConfigError, match="search.anneal: rung .* set search.fidelity: epochs"):
        load_config(None, search__anneal="rung", search__fidelity="seconds", budget="30m")
    with pytest.raises(ConfigError, match="no sweep of this experiment uses ASHA"):
        load_config(None, search__anneal="rung", search__scheduler="random")


def _settings(max_epochs: int) -> TrialSettings:
    config = load_config(None, search__max_epochs=max_epochs, search__grace_period=1, search__reduction_factor=2,
                         search__anneal="rung")
    return TrialSettings.from_config(config)


def test_a_promoted_trial_goes_on_from_its_checkpoint_on_a_new_schedule(tensors, tmp_path):  # noqa: F811
    """Rungs at 1 and 2 of 4 epochs: each epoch's LR is the initial one at the start of a segment
    (1, 2, 3) and half of it in the middle of the last (4); the steps in between anneal. Paused at
    rung 1 (a checkpoint) and resumed in a fresh trial, it ends with the same weights as a trial
    that was never paused."""
    settings = _settings(4)
    straight = Trial(HPARAMS, settings)
    lrs = [straight.run_epoch(*tensors)["lr"] for _ in range(4)]
    assert lrs == pytest.approx([2e-3, 2e-3, 2e-3, 1e-3])
    assert straight.optimizer.param_groups[0]["lr"] < 2e-3 * 0.05  # annealed by the last step

    first = Trial(HPARAMS, settings)
    path = first.save(tmp_path, first.run_epoch(*tensors))
    resumed = Trial(HPARAMS, settings)
    resumed.load_state(load_checkpoint_file(path))
    for _ in range(3):
        resumed.run_epoch(*tensors)
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
