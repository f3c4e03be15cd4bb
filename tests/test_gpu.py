"""The CUDA paths of caviar.training.train and caviar.training.trial. Skipped without a GPU (CI has none): run them
on a GPU machine with `pytest tests/test_gpu.py`."""

from __future__ import annotations

import warnings

import pytest
import torch

from caviar.config.loading import load_config
from caviar.training.data import prepare_data
from caviar.training.train import train_one_epoch, uses_bf16
from caviar.training.trial import Trial, TrialSettings, data_tensors, load_checkpoint_file

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

HPARAMS = dict(lr=2e-3, weight_decay=1e-4, dropout=0.1, momentum=0.9, batch_size=64, conv_layers=2, conv_width=16,
               fc_layers=1, fc_width=32, optimizer="adam", lr_schedule="cosine", init="he", batch_norm=True,
               activation="relu", grad_clip=5, seed=1)
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def tensors(learnable_root):
    data = prepare_data(learnable_root, val_size=500, download=False)
    return data_tensors(data, CUDA)


def settings(max_epochs: int = 3) -> TrialSettings:
    return TrialSettings.from_config(load_config(None, search__max_epochs=max_epochs))


def test_trial_learns_on_the_gpu_in_bf16(tensors):
    """Model, data and the shuffling generator live on the GPU; bf16 autocast; it learns."""
    trial = Trial(HPARAMS, settings(3), device=CUDA)
    assert uses_bf16(CUDA, trial.settings.amp)
    assert trial.generator.device.type == "cuda" and next(trial.model.parameters()).is_cuda
    for _ in range(3):
        metrics = trial.run_epoch(*tensors)
    assert metrics["val_acc"] > 0.4 and not metrics["diverged"]


def test_an_epoch_waits_for_the_gpu_only_a_few_times(tensors):
    """No host sync per step: far fewer synchronising calls than steps (the loss is read
    every DIVERGENCE_CHECK_STEPS steps, the update ratio once, the totals at the end)."""
    trial = Trial(HPARAMS, settings(), device=CUDA)
    train_one_epoch(trial.model, trial.optimizer, tensors[0][:640], tensors[1][:640], batch_size=64,
                    generator=trial.generator)  # warm-up: first-use allocations and kernel choice
    torch.cuda.synchronize()
    steps = len(tensors[1]) // 64
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_one_epoch(trial.model, trial.optimizer, tensors[0], tensors[1], batch_size=64,
                            generator=trial.generator, max_loss=trial.settings.max_loss)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert steps >= 30
    assert len(syncs) < steps // 2, [str(w.message) for w in syncs[:5]]


def test_resume_on_the_gpu_continues_from_the_checkpoint(tensors, tmp_path):
    """Epoch 1, save, load into a fresh GPU trial: it continues at epoch 2 with the same weights."""
    first = Trial(HPARAMS, settings(), device=CUDA)
    path = first.save(tmp_path, first.run_epoch(*tensors))
    resumed = Trial(HPARAMS, settings(), device=CUDA)
    resumed.load_state(load_checkpoint_file(path))
    assert resumed.epoch == 1
    for a, b in zip(resumed.model.state_dict().values(), first.model.state_dict().values()):
        assert torch.equal(a.cpu(), b.cpu())
    assert resumed.run_epoch(*tensors)["epoch"] == 2


def test_recipe_options_train_and_resume_on_the_gpu(tensors, tmp_path):
    """Lookahead's slow weights and the per-image flips live on the GPU; a checkpoint (loaded onto
    the CPU) puts them back there, and the resumed trial continues."""
    hparams = HPARAMS | {"lookahead": True, "alternate_flips": True, "bn_lr_scale": 4.0}
    first = Trial(hparams, settings(), device=CUDA)
    path = first.save(tmp_path, first.run_epoch(*tensors))
    assert first.flips.flipped.is_cuda and all(v.is_cuda for v in first.lookahead.slow.values())
    resumed = Trial(hparams, settings(), device=CUDA)
    resumed.load_state(load_checkpoint_file(path))
    assert resumed.flips.flipped.is_cuda and all(v.is_cuda for v in resumed.lookahead.slow.values())
    assert resumed.run_epoch(*tensors)["epoch"] == 2


def test_a_trial_share_bounds_its_gpu_memory_and_oom_names_the_trial(monkeypatch):
    """Ray's GPU 0 is the trial's device; its 0.25 share caps the allocator, and going past it is a
    TrialOutOfMemory naming batch size and model (the neighbours' memory is untouched)."""
    from caviar.training import devices

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    device = devices.trial_device(["0"])
    assert device == torch.device("cuda", 0) and devices.cuda_problem() is None
    total = torch.cuda.get_device_properties(device).total_memory
    try:
        fraction = devices.bound_gpu_memory(device, 0.25)
        assert 0.2 < fraction < 0.25
        with pytest.raises(devices.TrialOutOfMemory, match="batch_size 1024 and model convnet"):
            with devices.explain_oom(1024, "convnet", device, 0.25):
                torch.empty(int(total * 0.3), dtype=torch.uint8, device=device)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
