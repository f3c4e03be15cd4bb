"""caviar.training.devices and the trial's device: what Ray assigned decides, CUDA problems are named, each
trial's GPU memory is bounded, an out-of-memory error says what to change. No GPU here: Ray's and
CUDA's answers are simulated."""

from __future__ import annotations

import types

import pytest
import ray
import torch
from ray import tune

import caviar.search.trainable as trainable
from caviar.config.loading import load_config
from caviar.training import devices
from caviar.training.train import pick_device
from caviar.training.trial import Trial, TrialSettings

HPARAMS = dict(lr=2e-3, weight_decay=1e-4, dropout=0.1, momentum=0.9, batch_size=1024, conv_layers=3,
               conv_width=256, fc_layers=1, fc_width=32, optimizer="adam", lr_schedule="cosine", init="he",
               batch_norm=True, activation="relu", grad_clip=5, seed=1)
GIB = 2**30
PROC_PROPRIETARY = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
PROC_OPEN = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  (dvs-builder@U16)\n"


class Built(Exception):
    """Raised by the stand-in Trial once the trainable has chosen its device."""


@pytest.fixture
def ray_trial(monkeypatch, tmp_path):
    """The trainable's view of Ray and CUDA, simulated: `set(gpu_ids, share, cuda, driver)`; the Trial
    it builds records its device and stops (no training), `memory` records memory fractions set."""
    seen: dict = {"memory": []}

    class StandIn:
        def __init__(self, hparams, settings, device=None):
            seen["device"] = device or pick_device()  # as caviar.training.trial.Trial does
            raise seen.get("raise", Built())

    def set_up(gpu_ids=(), share=0.0, cuda=True, driver=PROC_OPEN, cuda_version="13.0"):
        resources = {"CPU": 1.0} | ({"GPU": share} if share else {})
        context = types.SimpleNamespace(
            get_trial_resources=lambda: types.SimpleNamespace(required_resources=resources))
        monkeypatch.setattr(tune, "get_context", lambda: context)
        monkeypatch.setattr(ray, "get_gpu_ids", lambda: list(gpu_ids))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.version, "cuda", cuda_version)
        (tmp_path / "version").write_text(driver)
        monkeypatch.setattr(devices, "DRIVER_VERSION_FILE", str(tmp_path / "version"))
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda device=None: types.SimpleNamespace(total_memory=24 * GIB))
        monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                            lambda fraction, device=None: seen["memory"].append((fraction, device)))

    monkeypatch.setattr(trainable, "Trial", StandIn)
    monkeypatch.setattr(trainable.torch, "set_num_threads", lambda n: None)
    seen["set"] = set_up
    return seen


def run_trial(**config):
    settings = TrialSettings.from_config(load_config(None, **config))
    trainable.train_trial(HPARAMS, data=None, settings=settings)


def test_no_gpu_assigned_trains_on_cpu_where_cuda_is_visible(ray_trial, monkeypatch):
    """gpus_per_trial 0 on a GPU machine: Ray 2.60 leaves the GPUs visible, the trial stays on CPU."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    ray_trial["set"](gpu_ids=[], cuda=True)
    with pytest.raises(Built):
        run_trial()
    assert ray_trial["device"] == torch.device("cpu")
    assert ray_trial["memory"] == []


@pytest.mark.parametrize("visible,index", [("3", 0), ("1,3", 1), (None, 3)])
def test_assigned_gpu_is_the_trials_device_with_its_memory_share(ray_trial, monkeypatch, visible, index):
    """Ray's GPU 3 is CUDA index 0 when Ray narrowed CUDA_VISIBLE_DEVICES to it (index 3 when it
    did not); a 0.25 share bounds the allocator to a quarter, less the CUDA context."""
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    ray_trial["set"](gpu_ids=["3"], share=0.25, cuda=True)
    with pytest.raises(Built):
        run_trial()
    assert ray_trial["device"] == torch.device("cuda", index)
    [(fraction, device)] = ray_trial["memory"]
    assert device == torch.device("cuda", index)
    assert fraction == pytest.approx(0.25 - 0.5 / 24)


def test_whole_gpu_is_not_bounded(ray_trial, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    ray_trial["set"](gpu_ids=["0"], share=1.0, cuda=True)
    with pytest.raises(Built):
        run_trial()
    assert ray_trial["device"] == torch.device("cuda", 0) and ray_trial["memory"] == []


def test_assigned_gpu_that_cuda_cannot_use_is_an_error(ray_trial, monkeypatch):
    """A driver too old for the wheel: the trial fails naming the wheel's CUDA, the driver it needs
    and the one it found, instead of training on one CPU thread."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    ray_trial["set"](gpu_ids=["0"], share=0.25, cuda=False, driver=PROC_PROPRIETARY, cuda_version="13.0")
    with pytest.raises(devices.DeviceError) as error:
        run_trial()
    message = str(error.value)
    assert "Ray assigned GPU 0" in message and "CUDA 13.0" in message
    assert ">= 580.65.06" in message and "driver is 535.104.05" in message
    assert "device" not in ray_trial  # no Trial was built


def test_cuda_out_of_memory_names_batch_size_and_model(ray_trial, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    ray_trial["set"](gpu_ids=["0"], share=0.25, cuda=True)
    ray_trial["raise"] = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")
    with pytest.raises(devices.TrialOutOfMemory) as error:
        run_trial()
    message = str(error.value)
    assert "batch_size 1024" in message
    assert "convnet (conv_layers=3, conv_width=256, fc_layers=1, fc_width=32)" in message
    assert "0.25 of a GPU" in message and "resources.gpus_per_trial" in message
    assert "Tried to allocate 2.00 GiB" in message


def test_cpu_trial_never_touches_cuda_rng(monkeypatch):
    """Trial.state saves the CUDA RNG only for a CUDA trial: on a CPU trial the call would create a
    CUDA context (memory on GPU 0) wherever CUDA is visible."""
    touched = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": touched.append(device) or torch.zeros(8))
    trial = Trial(HPARAMS | {"batch_size": 64, "conv_width": 8}, TrialSettings.from_config(load_config(None)),
                  device=torch.device("cpu"))
    assert "cuda" not in trial.state()["rng"] and touched == []
    trial.device = torch.device("cuda", 0)  # as a CUDA trial would have it
    assert "cuda" in trial.state()["rng"] and touched == [torch.device("cuda", 0)]


def test_outside_ray_the_default_device_follows_cuda(monkeypatch):
    for available, kind in ((True, "cuda"), (False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda available=available: available)
        assert devices.trial_device(None).type == kind


@pytest.mark.parametrize("text,version", [(PROC_PROPRIETARY, "535.104.05"), (PROC_OPEN, "580.65.06"),
                                          ("550.54\n", "550.54"), ("", None)])
def test_driver_version_is_read_from_the_kernel_module(tmp_path, monkeypatch, text, version):
    monkeypatch.setattr(devices.shutil, "which", lambda name: None)  # no nvidia-smi to fall back on
    (tmp_path / "version").write_text(text)
    assert devices.driver_version(str(tmp_path / "version")) == version


def test_cuda_problems_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(devices.shutil, "which", lambda name: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert devices.required_driver() == "525.60.13" and devices.required_driver("13.0") == "580.65.06"
    assert "no NVIDIA driver was found" in devices.cuda_problem(str(tmp_path / "none"))
    (tmp_path / "new").write_text(PROC_OPEN)
    assert "new enough" in devices.cuda_problem(str(tmp_path / "new"))
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "without CUDA" in devices.cuda_problem()
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.cuda_problem() is None


def test_device_check_command_fails_on_a_gpu_machine_pytorch_cannot_use(tmp_path, monkeypatch, capsys):
    """`python -m caviar.training.devices` (run by the cluster files' setup): exit 1 where a driver is loaded
    but this PyTorch cannot use it; exit 0 on a machine without GPU."""
    monkeypatch.setattr(devices.shutil, "which", lambda name: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(devices, "DRIVER_VERSION_FILE", str(tmp_path / "version"))
    assert devices.main() == 0 and "no GPU here" in capsys.readouterr().out
    (tmp_path / "version").write_text(PROC_PROPRIETARY)
    assert devices.main() == 1
    err = capsys.readouterr().err
    assert "needs NVIDIA driver >= 580.65.06" in err and "driver is 535.104.05" in err


def test_memory_fraction_leaves_room_for_the_cuda_context():
    assert devices.memory_fraction(1.0, 24 * GIB) is None and devices.memory_fraction(0, 24 * GIB) is None
    assert devices.memory_fraction(0.5, 80 * GIB) == pytest.approx(0.5 - 0.5 / 80)
    assert devices.memory_fraction(0.1, 2 * GIB) == pytest.approx(0.05)  # never below half the share
