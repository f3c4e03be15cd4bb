"""Training options of caviar.training.recipe: decoupled lr and weight decay, a scaled lr for
batch-norm biases, lookahead and alternating flips; each as a Trial trains, resumes and checks it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from caviar.config.loading import load_config
from caviar.errors import ConfigError
from caviar.training.data import prepare_data
from caviar.training.recipe import (
    LOOKAHEAD_DECAY,
    LOOKAHEAD_EVERY,
    AlternatingFlips,
    Lookahead,
    param_groups,
    step_values,
)
from caviar.training.train import evaluate
from caviar.training.trial import Trial, TrialSettings, data_tensors, load_checkpoint_file, model_from_state

HPARAMS = dict(lr=0.05, weight_decay=5e-4, dropout=0.0, momentum=0.9, batch_size=64, conv_layers=2, conv_width=16,
               fc_layers=1, fc_width=32, optimizer="nesterov", lr_schedule="cosine", init="he", batch_norm=True,
               activation="relu", grad_clip=0, seed=3)


@pytest.fixture(scope="module")
def tensors(learnable_root):
    data = prepare_data(learnable_root, val_size=500, train_subset=1500, download=False)
    return data_tensors(data, torch.device("cpu"))


def settings(max_epochs: int = 3) -> TrialSettings:
    return TrialSettings.from_config(load_config(None, search__max_epochs=max_epochs))


def test_decoupled_values_do_not_move_with_batch_size_or_momentum():
    """Per 1024 images: the textbook point (Nesterov 0.1, batch 128, momentum 0.9, L2 5e-4) is lr 8
    and decay 4e-3; torch's lr doubles with the batch and halves when momentum's gain doubles, and
    the shrink per 1024 images (lr x L2 x gain x 1024 / batch) stays the decay given."""
    point = {"optimizer": "nesterov", "lr": 8.0, "weight_decay": 4e-3, "momentum": 0.9, "batch_size": 128,
             "decoupled": True}
    lr, l2 = step_values(point)
    assert lr == pytest.approx(0.1) and l2 == pytest.approx(5e-4)
    assert step_values(point | {"batch_size": 256})[0] == pytest.approx(0.2)
    assert step_values(point | {"momentum": 0.95})[0] == pytest.approx(0.05)
    for changed in ({"batch_size": 512}, {"momentum": 0.99}, {"lr": 2.0}):
        p = point | changed
        lr, l2 = step_values(p)
        shrink = lr * l2 / (1 - p["momentum"]) * 1024 / p["batch_size"]
        assert shrink == pytest.approx(4e-3), changed
    assert step_values(point | {"optimizer": "sgd"})[0] == pytest.approx(1.0)  # no momentum, no gain
    assert step_values(point | {"decoupled": False}) == (8.0, 4e-3)  # off: torch's values as given


def test_decoupled_with_an_optimizer_it_does_not_fit_is_refused():
    """Adam's steps are normalised per parameter: `decoupled` with adam in the space names it."""
    with pytest.raises(ConfigError, match=r"decoupled.*'adam'"):
        load_config(None, ["space.decoupled=true", "space.optimizer=[nesterov, adam]"])
    with pytest.raises(ConfigError, match=r"space.decoupled"):
        load_config(None, ["space.decoupled=maybe"])
    config = load_config(None, ["space.decoupled=[true, false]", "space.optimizer=nesterov"])
    assert config.space.decoupled.choices == [True, False]


def test_bn_biases_get_their_own_scaled_lr_and_decay():
    """bn_lr_scale 64: the batch-norm biases (and only they) step at 64 x lr with decay / 64."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    (one,) = param_groups(model, 0.1, 5e-4, 1.0)
    assert len(one["params"]) == len(list(model.parameters()))
    rest, biases = param_groups(model, 0.1, 5e-4, 64.0)
    assert [id(p) for p in biases["params"]] == [id(model[1].bias)]
    assert biases["lr"] == pytest.approx(6.4) and biases["weight_decay"] == pytest.approx(5e-4 / 64)
    assert rest["lr"] == 0.1 and len(rest["params"]) == len(list(model.parameters())) - 1
    with pytest.raises(ConfigError, match=r"space.bn_lr_scale.*negative"):
        load_config(None, ["space.bn_lr_scale=-1"])


def test_lookahead_pulls_toward_slow_weights_on_its_schedule():
    """At the start (progress 0) a pull keeps nothing of the slow weights; at the end each pull
    every LOOKAHEAD_EVERY steps keeps LOOKAHEAD_DECAY of them; `finish` hands the model the slow ones."""
    model = nn.Linear(2, 1, bias=False)
    nn.init.zeros_(model.weight)
    ahead = Lookahead(model)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(LOOKAHEAD_EVERY):
        ahead.step(0.0)
    assert torch.allclose(model.weight, torch.ones(1, 2)) and torch.allclose(ahead.slow["weight"], torch.ones(1, 2))
    with torch.no_grad():
        model.weight.fill_(2.0)
    for step in range(LOOKAHEAD_EVERY):
        assert torch.allclose(model.weight, torch.full((1, 2), 2.0)), step  # no pull between pulls
        ahead.step(1.0)
    expected = LOOKAHEAD_DECAY * 1.0 + (1 - LOOKAHEAD_DECAY) * 2.0
    assert torch.allclose(model.weight, torch.full((1, 2), expected))
    with torch.no_grad():
        model.weight.fill_(5.0)
    ahead.finish()
    assert torch.allclose(model.weight, torch.full((1, 2), expected))


def test_alternating_flips_mirror_each_image_every_other_draw():
    """Drawn twice, every image is seen once each way; the first draw is a fair coin per image."""
    flips = AlternatingFlips.drawn(2000, torch.Generator().manual_seed(0))
    first = flips(torch.arange(2000))
    assert 800 < int(first.sum()) < 1200
    assert torch.equal(flips(torch.arange(2000)), ~first)
    some = torch.tensor([5, 7, 11])
    assert torch.equal(flips(some), first[some])


def test_a_trial_with_every_option_learns_and_resumes_exactly(tensors, tmp_path):
    """decoupled + bn_lr_scale + lookahead + alternate_flips: the trial learns, the last epoch ends
    on the slow weights, and a trial resumed from epoch 1 (lookahead and flip state from the
    checkpoint) continues exactly as the one that ran straight."""
    lr = 0.05 * 1024 / 64 / 0.1  # HPARAMS per 1024 images: torch lr x 1024 / batch x gain
    decay = 5e-4 * lr  # torch L2 x lr
    hparams = HPARAMS | {"decoupled": True, "lr": lr, "weight_decay": decay, "bn_lr_scale": 4.0,
                         "lookahead": True, "alternate_flips": True}
    straight = Trial(hparams, settings(3))
    assert straight.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    assert straight.optimizer.param_groups[1]["lr"] == pytest.approx(0.2)
    first = straight.run_epoch(*tensors)
    path = straight.save(tmp_path, first)
    flipped = straight.flips.flipped.clone()
    straight.run_epoch(*tensors)
    assert not torch.equal(straight.flips.flipped, flipped)
    last = straight.run_epoch(*tensors)
    assert straight.finished and last["val_acc"] > 0.4
    for name, value in straight.model.state_dict().items():
        if value.is_floating_point():
            assert torch.equal(value, straight.lookahead.slow[name]), name

    torch.manual_seed(12345)
    resumed = Trial(hparams, settings(3))
    resumed.load_state(load_checkpoint_file(path))
    assert torch.equal(resumed.flips.flipped, flipped) and resumed.lookahead.steps == straight.lookahead.steps // 3
    resumed.run_epoch(*tensors)
    assert resumed.run_epoch(*tensors) == last
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_lookahead_trial_stopped_before_its_end_is_scored_and_saved_as_its_slow_weights(tensors, tmp_path):
    """After epoch 1 of 3 (where ASHA or a deadline may stop it), a lookahead trial's fast weights
    are steps past its last pull; its metrics and its checkpoint's model are the slow weights, the
    ones it would end as, while it trains on from the fast ones, untouched by the scoring."""
    trial = Trial(HPARAMS | {"lookahead": True}, settings(3))
    metrics = trial.run_epoch(*tensors)
    assert trial.lookahead.steps % LOOKAHEAD_EVERY != 0  # steps since the last pull: fast != slow
    fast = {name: value.clone() for name, value in trial.model.state_dict().items()}
    assert any(not torch.equal(fast[name], slow) for name, slow in trial.lookahead.slow.items())

    saved = load_checkpoint_file(trial.save(tmp_path, metrics))
    for name, value in saved["model"].items():
        assert torch.equal(value, trial.lookahead.slow.get(name, fast[name])), name
    rebuilt = model_from_state(saved)
    assert evaluate(rebuilt, tensors[2], tensors[3], batch_size=trial.settings.eval_batch_size,
                    amp=trial.settings.amp, channels_last=trial.settings.channels_last) == pytest.approx(
        (metrics["val_loss"], metrics["val_acc"]), abs=1e-6)
    assert all(torch.equal(value, fast[name]) for name, value in trial.model.state_dict().items())


def test_pbt_perturbation_rescales_every_group(tensors):
    """A PBT copy with a new lr and decay keeps the batch-norm group's ratio to the others."""
    hparams = HPARAMS | {"bn_lr_scale": 8.0}
    source = Trial(hparams, settings(3))
    source.run_epoch(*tensors)
    copy = Trial(hparams | {"lr": 0.1, "weight_decay": 1e-3}, settings(3))
    copy.load_state(source.state())
    rest, biases = copy.optimizer.param_groups
    assert biases["lr"] == pytest.approx(8 * rest["lr"]) and rest["lr"] == pytest.approx(2 * source.optimizer.param_groups[0]["lr"])
    assert rest["weight_decay"] == pytest.approx(1e-3) and biases["weight_decay"] == pytest.approx(1e-3 / 8)
    assert copy.scheduler.base_lrs == pytest.approx([0.1, 0.8])
