"""How much memory a dataset will take, estimated from its files before any image is decoded, and
a refusal where loading it cannot fit in the memory this process may use.

The figures (bytes), for N training and M test images of S x S pixels (3 bytes a pixel):

- `decoded`: the training images once decoded (N x 3 x S x S); the cache on disk is the same size
  and is memory-mapped when read back, so it adds no second copy;
- `loading`: the peak while the split is made: the decoded images and the train and validation
  arrays taken from them (twice `decoded` where the images were just decoded; about once from the
  cache);
- `per_trial`: what each trial copies onto its device (its training subset and the validation
  split, uint8), on the GPU of a GPU trial;
- `whitening`: the whitening layer's fit, one chunk at a time (caviar.training.models.whiten_chunk);
- `test`: the test set, read once by `caviar ensemble` after the weights are chosen.

On a GPU each trial holds its own copy of its data on the device (a CPU trial reads the node's one
copy in Ray's object store), so 1 / gpus_per_trial copies share a GPU. A trial refuses to start
where its copy would take more than DEVICE_DATA_SHARE of what its share of the GPU lets it allocate
(caviar.training.devices.memory_fraction), naming the figures and what to change.

The limit is the smallest of the memory the machine has free (/proc/meminfo's MemAvailable), the
cgroup's limit (a container's), the address space left under `ulimit -v`, and CAVIAR_MEMORY_LIMIT
(bytes, or 8G, 500M) where set.
"""

from __future__ import annotations

import os
import re
import resource
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from caviar.config.schema import Config
from caviar.errors import DataError
from caviar.training.devices import memory_fraction
from caviar.training.models import whiten_chunk

if TYPE_CHECKING:
    import numpy as np
    import torch

ENV = "CAVIAR_MEMORY_LIMIT"
UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
HEADROOM = 0.9  # of the limit, what the data may take: the interpreter, torch and Ray need the rest
# Of what a GPU trial may allocate, the most its copy of the data may take: the model, its optimizer
# state and the activations of a batch need the rest.
DEVICE_DATA_SHARE = 0.5


def estimate(config: Config, train_images: int, test_images: int) -> dict[str, Any]:
    """The figures of the module docstring for `config`'s data, of `train_images` and `test_images`
    images (caviar.training.data.image_counts counts them from the files)."""
    d = config.data
    size = d.image_size
    image = 3 * size * size
    val = min(d.val_size, train_images)
    subset = d.train_subset
    trained = (train_images - val) if subset is None else \
        (round(subset * (train_images - val)) if isinstance(subset, float) else min(int(subset), train_images - val))
    decoded = train_images * (image + 8)  # and an int64 label each
    return {"train_images": train_images, "test_images": test_images, "image_size": size,
            "decoded": decoded, "loading": 2 * decoded, "per_trial": (trained + val) * (image + 8),
            "whitening": whiten_chunk(size) * size * size * 60, "test": test_images * (image + 8)}


def limit() -> tuple[int, str] | None:
    """(bytes, where the limit comes from) of the memory this process may still use; None unknown."""
    found: list[tuple[int, str]] = []
    text = os.environ.get(ENV, "").strip()
    if text:
        found.append((parse_bytes(text), f"{ENV}={text}"))
    meminfo = _read("/proc/meminfo")
    match = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo or "", re.MULTILINE)
    if match:
        found.append((int(match.group(1)) * 1024, "the memory free on this machine"))
    cgroup = _read("/sys/fs/cgroup/memory.max") or _read("/sys/fs/cgroup/memory/memory.limit_in_bytes")
    used = _read("/sys/fs/cgroup/memory.current") or _read("/sys/fs/cgroup/memory/memory.usage_in_bytes")
    if cgroup and cgroup.strip().isdigit() and int(cgroup) < 2 ** 60:
        found.append((int(cgroup) - int((used or "0").strip() or 0), "the container's memory limit (cgroup)"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        status = _read("/proc/self/status") or ""
        size = re.search(r"^VmSize:\s+(\d+) kB", status, re.MULTILINE)
        found.append((soft - (int(size.group(1)) * 1024 if size else 0), "the address space left under ulimit -v"))
    return min(found) if found else None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def parse_bytes(text: str) -> int:
    """'8G', '500M', '1.5G', '1073741824' -> bytes; anything else is a DataError naming ENV."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not match:
        raise DataError(f"{ENV}={text!r}: expected bytes or a size such as 8G or 500M")
    return int(float(match.group(1)) * UNITS[match.group(2).upper()])


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def describe(figures: dict[str, Any], found: tuple[int, str] | None) -> str:
    """One line for `caviar check` and the sweep's plan."""
    size = figures["image_size"]
    line = (f"memory: {figures['train_images']} training images of {size}x{size} px take ~{human(figures['decoded'])} "
            f"decoded (~{human(figures['loading'])} at the peak of loading), ~{human(figures['per_trial'])} on each "
            f"trial's device (a GPU trial holds its own copy: 1 / gpus_per_trial copies per GPU), "
            f"~{human(figures['test'])} for the test set")
    return line + (f"; limit ~{human(found[0])} ({found[1]})" if found else "")


def check_fits(config: Config, figures: dict[str, Any]) -> dict[str, Any]:
    """`figures` (an `estimate`), or a DataError before any image is decoded where loading the data
    would not fit in what this process may use."""
    found = limit()
    if found is not None and figures["loading"] > HEADROOM * found[0]:
        size = figures["image_size"]
        raise DataError(
            f"the data at {config.data.root} would not fit in memory: {figures['train_images']} training images of "
            f"{size}x{size} px need ~{human(figures['loading'])} while they are loaded and split, and "
            f"{found[1]} leaves ~{human(found[0])}. Lower data.image_size, or use fewer images (a smaller folder), "
            f"or a machine with more memory (or raise {ENV} if the limit is wrong)")
    return figures


def device_copy_problem(data_bytes: int, share: float, total_bytes: int) -> str | None:
    """Why a GPU trial holding `share` of a GPU of `total_bytes` should not copy `data_bytes` of
    data onto it (more than DEVICE_DATA_SHARE of what it may allocate), or None where it fits."""
    allowed = (memory_fraction(share, total_bytes) or 1.0) * total_bytes
    if data_bytes <= DEVICE_DATA_SHARE * allowed:
        return None
    portion = f"{share:g} of a GPU of {human(total_bytes)}" if 0 < share < 1 else f"a GPU of {human(total_bytes)}"
    return (f"each trial copies its data onto its GPU (~{human(data_bytes)}: its training images and the validation "
            f"split), and a trial on {portion} may allocate ~{human(allowed)} for everything (the model, its optimizer "
            "and a batch's activations too). Give each trial a larger share (resources.gpus_per_trial, up to 1), or "
            "lower data.image_size or data.train_subset")


def check_device_copy(arrays: Sequence[np.ndarray], device: torch.device, share: float) -> None:
    """A DataError, before a GPU trial copies `arrays` (its data) onto the device, where the copy
    would not leave room to train in its share of the GPU (see device_copy_problem); nothing on a CPU."""
    if device.type != "cuda":
        return
    import torch

    total = torch.cuda.get_device_properties(device).total_memory
    problem = device_copy_problem(sum(a.nbytes for a in arrays), share, total)
    if problem:
        raise DataError(problem)
