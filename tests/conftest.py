"""Shared fixtures: a learnable CIFAR-format dataset and one local Ray instance per test session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import pytest
import torch

# One compute thread in the test process: Ray's trial processes use the other core, and two
# oversubscribed torch thread pools on 2 cores made small models up to 60x slower.
torch.set_num_threads(1)

# Local test clusters: no token auth, our own temp dir, loopback only.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared/data/cifar10-sample"


def ray_env(temp_dir: str) -> dict[str, str]:
    """Environment for a subprocess that starts its own Ray: its own temp dir, auth off."""
    return {**os.environ, "RAY_TMPDIR": temp_dir, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def epochs_reported(trial_dir: Path) -> list[int]:
    """The epochs a trial trained, in order, from its result.json (a line being written is
    skipped). A resumed trial reports its newest checkpoint's epoch again, marked `replayed`, in
    case the stopped driver never logged it (caviar.search.trainable); where Ray had logged it, that row
    is the same result twice, not a second training, and the reader drops it too."""
    import json

    text = (trial_dir / "result.json").read_text() if (trial_dir / "result.json").exists() else ""
    epochs: list[int] = []
    for row in (json.loads(line) for line in text.splitlines() if line.endswith("}")):
        if not (row.get("replayed") and row["epoch"] in epochs):
            epochs.append(row["epoch"])
    return epochs


def interrupt_sweep(experiment: Path, temp_dir: str, until: Callable[[], bool]) -> tuple[int, str]:
    """`caviar sweep EXPERIMENT` in its own process, sent Ctrl-C (SIGINT) once `until()` holds;
    its exit status and output."""
    import signal
    import subprocess
    import sys
    import time

    # Results reach the experiment folder with Ray's snapshots (every 10 s or more by default):
    # every second here, so that `until` sees the sweep's progress in time.
    driver = subprocess.Popen([sys.executable, "-m", "caviar", "sweep", str(experiment)], cwd=REPO,
                              env=ray_env(temp_dir) | {"TUNE_GLOBAL_CHECKPOINT_S": "1"}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not until():
            assert driver.poll() is None, driver.stdout.read()
            time.sleep(0.3)
        driver.send_signal(signal.SIGINT)  # what Ctrl-C sends
        output, _ = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    return driver.returncode, output


@pytest.fixture
def ray_temp_dir():
    """A short temp dir for a Ray started by a subprocess (socket paths must stay < 107 bytes)."""
    temp_dir = tempfile.mkdtemp(prefix="cvray-", dir="/tmp")
    yield temp_dir
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def learnable_root(tmp_path_factory) -> Path:
    """3000 train + 500 test images whose classes a small convnet learns in one epoch."""
    from caviar.training.fixture import write_cifar_fixture

    return write_cifar_fixture(tmp_path_factory.mktemp("learnable"), train_size=3000, test_size=500)


@pytest.fixture(scope="session")
def ray_session():
    """One private local Ray instance for the whole session (starting Ray costs ~10 s)."""
    import ray

    # Short path: Ray's socket paths must stay under the 107-byte AF_UNIX limit.
    temp_dir = tempfile.mkdtemp(prefix="cvray-", dir="/tmp")
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, _temp_dir=temp_dir,
             _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
