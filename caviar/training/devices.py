"""Which device a trial trains on, and whether CUDA works here: the GPU Ray assigned (or none),
the NVIDIA driver the installed PyTorch wheel needs, each trial's share of GPU memory, and a clear
error for a trial that runs out of it. Plain PyTorch: the Ray glue (caviar.search.trainable) passes in
what Ray assigned. `python -m caviar.training.devices` prints what it finds (cluster setup commands run it
on every node, so a node whose driver is too old fails at setup, not trial by trial).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from caviar.errors import DeviceError, TrialOutOfMemory

# Oldest Linux NVIDIA driver that runs a CUDA major version, with CUDA's minor-version
# compatibility (docs.nvidia.com/deploy/cuda-compatibility). PyPI's torch wheels are CUDA 13
# builds since torch 2.9's cu130 default: they need 580, not the 535 that CUDA 12 images need.
MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}
DRIVER_VERSION_FILE = "/proc/driver/nvidia/version"
# GPU memory a process holds outside PyTorch's allocator (CUDA context, cuBLAS/cuDNN workspaces),
# which a per-process memory fraction does not count: kept out of each trial's share.
CUDA_CONTEXT_BYTES = 512 * 2**20


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def required_driver(cuda: str | None = None) -> str | None:
    """The oldest driver for the CUDA version `cuda` ("13.0"; default: this PyTorch's), or None."""
    cuda = cuda if cuda is not None else torch.version.cuda
    if not cuda:
        return None
    return MIN_DRIVER.get(int(cuda.split(".")[0]))


def driver_version(version_file: str | None = None) -> str | None:
    """The loaded NVIDIA kernel driver's version ("580.65.06"), or None on a machine without one."""
    try:
        text = Path(version_file or DRIVER_VERSION_FILE).read_text()
    except OSError:
        text = ""
    if not text and shutil.which("nvidia-smi"):
        try:
            text = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            text = ""
    match = re.search(r"(?<![\d.])(\d{3,}\.\d+(?:\.\d+)?)(?![\d.])", text)
    return match.group(1) if match else None


def cuda_problem(version_file: str | None = None) -> str | None:
    """Why this process cannot train on an NVIDIA GPU, with the fix; None when it can."""
    if not torch.version.cuda:
        return (f"PyTorch {torch.__version__} is a build without CUDA; install the CUDA build "
                "(`pip install torch` from PyPI, or a wheel from https://pytorch.org/get-started/locally/)")
    if torch.cuda.is_available():
        return None
    need, have = required_driver(), driver_version(version_file)
    why = (f"torch.cuda.is_available() is False: PyTorch {torch.__version__} is built for CUDA "
           f"{torch.version.cuda}, which needs an NVIDIA driver >= {need or '(unknown)'}")
    if have is None:
        why += "; no NVIDIA driver was found here (neither /proc/driver/nvidia/version nor nvidia-smi)"
    elif need and _version(have) < _version(need):
        why += (f", but this machine's driver is {have}. Use an image or AMI with driver >= {need}, or install "
                "a PyTorch wheel built for a CUDA this driver runs (https://pytorch.org/get-started/locally/; "
                f"CUDA 12 wheels need driver >= {MIN_DRIVER[12]})")
    else:
        why += f"; the driver is {have}, new enough, so CUDA failed for another reason (see the NVIDIA error above)"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        why += f" [CUDA_VISIBLE_DEVICES={visible!r}]"
    return why


def default_device() -> torch.device:
    """Outside Ray (`caviar ensemble`'s predictions, `caviar check`): the GPU when there is one."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def gpu_index(gpu_id: Any, visible: str | None = None) -> int:
    """CUDA's index of the GPU Ray calls `gpu_id`: Ray normally narrows CUDA_VISIBLE_DEVICES to the
    assigned GPUs (so index 0); with that turned off (RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES)
    the id itself."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    listed = [v.strip() for v in visible.split(",")] if visible else []
    if str(gpu_id) in listed:
        return listed.index(str(gpu_id))
    return int(gpu_id) if str(gpu_id).isdigit() and not listed else 0


def trial_device(gpu_ids: Sequence[Any] | None) -> torch.device:
    """The device of a trial that Ray gave the GPUs `gpu_ids` (ray.get_gpu_ids()).

    No GPU assigned: the CPU, even where CUDA is visible (Ray 2.60 no longer hides GPUs from a
    worker that asked for none; using one anyway would put unaccounted trials on GPU 0). A GPU
    assigned that CUDA cannot use is an error, not a silent fall back to one CPU thread.
    `gpu_ids` None (not under Ray) means `default_device()`.
    """
    if gpu_ids is None:
        return default_device()
    if not gpu_ids:
        return torch.device("cpu")
    problem = cuda_problem()
    if problem:
        raise DeviceError(f"Ray assigned GPU {', '.join(map(str, gpu_ids))} to this trial, but {problem}")
    return torch.device("cuda", gpu_index(gpu_ids[0]))


def memory_fraction(share: float, total_bytes: int) -> float | None:
    """The fraction of a GPU's memory that a trial holding `share` of it may allocate; None for a
    whole GPU (nothing to bound). The CUDA context is outside the allocator, so it comes off."""
    if share <= 0 or share >= 1:
        return None
    return max(share / 2, share - CUDA_CONTEXT_BYTES / total_bytes)


def bound_gpu_memory(device: torch.device, share: float) -> float | None:
    """Cap this process's allocations on `device` at its share, so that one trial's out-of-memory
    fails that trial alone instead of its neighbours on the same GPU. Returns the fraction set."""
    if device.type != "cuda":
        return None
    fraction = memory_fraction(share, torch.cuda.get_device_properties(device).total_memory)
    if fraction is not None:
        torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


MODEL_HPARAMS = {"convnet": ("conv_layers", "conv_width", "fc_layers", "fc_width"), "resnet": ()}


def describe_model(family: str, width: float, hparams: dict[str, Any]) -> str:
    """"convnet (conv_layers=3, conv_width=256, fc_layers=2, fc_width=128)", "resnet (width 2.0)"."""
    shape = [f"{k}={hparams[k]}" for k in MODEL_HPARAMS.get(family, ()) if k in hparams]
    if family == "resnet":
        shape = [f"width {width:g}"]
    return f"{family} ({', '.join(shape)})" if shape else family


@contextlib.contextmanager
def explain_oom(batch_size: Any, model: str, device: torch.device, share: float = 1.0) -> Iterator[None]:
    """Turn a CUDA out-of-memory error into TrialOutOfMemory naming what to change."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "out of memory"
        portion = f"{share:g} of a GPU" if 0 < share < 1 else "a whole GPU"
        raise TrialOutOfMemory(
            f"trial out of GPU memory on {device} with batch_size {batch_size} and model {model}, on {portion}: "
            "lower space.batch_size or the model's size, or give each trial a larger share "
            f"(resources.gpus_per_trial). PyTorch: {first}"
        ) from error


def report() -> tuple[str, bool]:
    """What `python -m caviar.training.devices` prints, and whether this machine is fine: a machine with an
    NVIDIA driver must be able to run this PyTorch on it."""
    driver = driver_version()
    lines = [f"PyTorch {torch.__version__}, CUDA {torch.version.cuda or 'none (CPU build)'}"
             + (f", needs NVIDIA driver >= {required_driver()}" if required_driver() else ""),
             f"NVIDIA driver: {driver or 'none found'}"]
    if driver is None:
        return "\n".join(lines + ["no GPU here: trials on this machine run on CPU"]), True
    problem = cuda_problem()
    if problem:
        return "\n".join(lines + [f"ERROR: a GPU is here but PyTorch cannot use it: {problem}"]), False
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return "\n".join(lines + [f"CUDA works: {names}"]), True


def main() -> int:
    text, ok = report()
    print(text, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
