"""caviar on a real multi-node Ray cluster on this machine: a head with no CPUs (it runs the driver
only, like cluster/aws.yaml) and three 1-CPU worker nodes (tests/multinode_cluster.py, its own
process). The driver is the real CLI, `caviar sweep --address HOST:PORT`, as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO
from test_sweep import SMALL_NET

from caviar.search.cluster import NETWORK_FILESYSTEMS, filesystem_type

WORKERS = 3
EPOCHS = 6


def _env(temp_dir: str) -> dict[str, str]:
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray keeps 127.0.0.1 instead of swapping in this
    # machine's network address, so nothing leaves loopback.
    return {**os.environ, "RAY_TMPDIR": temp_dir, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


class LocalCluster:
    def __init__(self, workers: int = WORKERS, own_temp_dirs: bool = False) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="cvc-", dir="/tmp")  # short: AF_UNIX paths < 107 bytes
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "multinode_cluster.py"), self.temp_dir, str(workers)]
            + (["own-temp-dirs"] if own_temp_dirs else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env(self.temp_dir), start_new_session=True,
        )
        line = self.process.stdout.readline()
        if not line:
            self.close()
            pytest.fail("the test cluster did not start")
        info = json.loads(line)
        self.address = info["address"]
        self.raylets = {w["raylet_pid"]: w["index"] for w in info["workers"]}

    def remove(self, index: int) -> None:
        self.process.stdin.write(f"remove {index}\n")
        self.process.stdin.flush()
        assert json.loads(self.process.stdout.readline()) == {"removed": index}

    def node_of(self, pid: int) -> int | None:
        """The worker node (index) whose raylet started process `pid`, None once it is gone."""
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return None
        return self.raylets.get(ppid)

    def sweep(self, *args: str, driver: list[str] | None = None, **env: str) -> subprocess.Popen:
        command = driver + [*args, self.address] if driver else ["-m", "caviar", "sweep", *args, "--address", self.address]
        return subprocess.Popen([sys.executable, *command], cwd=REPO, env=_env(self.temp_dir) | env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def close(self) -> None:
        try:
            self.process.communicate("exit\n", timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)  # the helper's own session: only what it started
            self.process.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    started = LocalCluster()
    yield started
    started.close()


@pytest.fixture
def data_root(tmp_path) -> Path:
    from caviar.training.fixture import write_cifar_fixture

    return write_cifar_fixture(tmp_path / "data", train_size=1500, test_size=100)


def experiment(tmp_path: Path, data_root: Path, name: str, trials: int = 4, **top) -> Path:
    tree = {
        "name": name,
        "storage": str(tmp_path / "results"),
        # All nodes share this machine's disk; on a real cluster that is what NFS or S3 is for.
        "storage_shared": True,
        "data": {"root": str(data_root), "val_size": 200, "download": False},
        "space": dict(SMALL_NET),
        "search": {"scheduler": "random", "num_samples": trials, "max_epochs": EPOCHS, "seed": 0},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
        "checkpoint": {"keep": 2, "max_failures": 2},
    } | top
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def results(trial_dir: Path) -> list[dict]:
    file = trial_dir / "result.json"
    lines = file.read_text().splitlines() if file.exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")]  # a line being written is skipped


def test_trials_spread_over_nodes_and_survive_a_lost_node(cluster, tmp_path, data_root):
    """Trials land on every worker node; a node removed mid-trial costs only its epochs since the last
    checkpoint: the trial resumes on another node with no gap and no repeat, and the sweep completes.
    The data folder is deleted once the driver has loaded it: trials get the data from the object store."""
    folder = tmp_path / "results" / "spread"
    # Results reach storage with Ray's snapshots of the experiment (every 10 s or more by default):
    # every second here, so the test sees trials mid-epoch-run.
    driver = cluster.sweep(str(experiment(tmp_path, data_root, "spread")), TUNE_GLOBAL_CHECKPOINT_S="1")
    node_of_pid: dict[int, int | None] = {}
    victim = removed = None
    deadline = time.time() + 240
    try:
        while driver.poll() is None and time.time() < deadline:
            if data_root.exists() and (folder / "caviar.yaml").exists():
                shutil.rmtree(data_root)  # written after the driver loaded the data, before any trial
            running = {}  # trial folder -> its latest result, for trials that have epochs left
            for trial_dir in folder.glob("trial_*"):
                rows = results(trial_dir)
                for row in rows:
                    if row["pid"] not in node_of_pid:
                        node_of_pid[row["pid"]] = cluster.node_of(row["pid"])
                if rows and rows[-1]["epoch"] <= EPOCHS - 3 and node_of_pid[rows[-1]["pid"]] is not None:
                    running[trial_dir.name] = rows[-1]
            seen = {n for n in node_of_pid.values() if n is not None}
            if removed is None and running and len(seen) >= 2:
                # the least advanced trial, so that it is surely still training when its node goes
                victim, last = min(running.items(), key=lambda item: item[1]["epoch"])
                removed = node_of_pid[last["pid"]]
                cluster.remove(removed)
            time.sleep(0.1)
        output, _ = driver.communicate(timeout=max(1, deadline - time.time()))
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, output
    assert not data_root.exists()
    assert removed is not None, "no trial was caught mid-sweep on a worker node"
    assert {n for n in node_of_pid.values() if n is not None} == set(range(WORKERS))

    board = pd.read_csv(folder / "leaderboard.csv")
    assert list(board["status"]) == ["completed"] * 4
    retries = dict(zip("trial_" + board["trial_id"], board["retries"]))
    assert retries.pop(victim) == 1 and set(retries.values()) == {0}
    for trial_dir in folder.glob("trial_*"):
        assert [row["epoch"] for row in results(trial_dir)] == list(range(1, EPOCHS + 1)), trial_dir.name
    # After the loss, the victim's epochs come from a process on another, surviving node.
    rows = results(folder / victim)
    lost_at = next(i for i, row in enumerate(rows) if node_of_pid.get(row["pid"]) != removed)
    assert 1 <= lost_at < EPOCHS
    assert {node_of_pid.get(row["pid"]) for row in rows[lost_at:]} - {removed, None}
    assert json.loads((folder / "summary.json").read_text())["retries"] == 1


def test_local_storage_on_multinode_cluster_is_refused(cluster, tmp_path, data_root):
    """Without shared storage, `caviar sweep` on a multi-node cluster stops at once, says what to pass,
    and writes nothing."""
    if filesystem_type(str(tmp_path)) in NETWORK_FILESYSTEMS:
        pytest.skip("the temp dir is on a network filesystem, which is shared storage")
    driver = cluster.sweep(str(experiment(tmp_path, data_root, "local-only", storage_shared=False)))
    output, _ = driver.communicate(timeout=120)
    assert driver.returncode == 2, output
    assert "--storage s3://" in output and "storage_shared=true" in output and "nodes" in output
    assert not (tmp_path / "results" / "local-only").exists()


def test_dead_driver_leaves_a_sweep_that_resume_finishes(cluster, tmp_path, data_root):
    """The driver killed (SIGKILL: no chance to save anything) mid-sweep; `caviar sweep --resume`
    against the same cluster finishes every trial from what is on storage: a trial that had
    checkpointed continues from its newest checkpoint (no epoch trained twice), with no gap."""
    folder = tmp_path / "results" / "orphan"
    driver = cluster.sweep(str(experiment(tmp_path, data_root, "orphan", trials=2)))
    deadline = time.time() + 180
    try:
        while time.time() < deadline and not any(len(results(t)) >= 4 for t in folder.glob("trial_*")):
            assert driver.poll() is None, driver.stdout.read()
            time.sleep(0.2)
        driver.kill()
        driver.wait()
    finally:
        if driver.poll() is None:
            driver.kill()
    before = {t.name: len(results(t)) for t in folder.glob("trial_*")}
    resumed = cluster.sweep("--resume", str(folder))
    output, _ = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, output
    board = pd.read_csv(folder / "leaderboard.csv")
    assert list(board["status"]) == ["completed"] * 2
    for trial_dir in folder.glob("trial_*"):
        # Ray's saved state lags behind (it is written every 10 s or so): each trial still continues
        # from the newest checkpoint in its folder, so no epoch is trained twice and none is missing.
        rows = results(trial_dir)
        trained = [row["epoch"] for row in rows if not row.get("replayed")]
        assert len(trained) == len(set(trained)), (trial_dir.name, before, rows)  # none trained twice
        # an epoch whose result the dead driver never logged is reported again on resume, marked
        epochs = sorted(set(trained) | {row["epoch"] for row in rows if row.get("replayed")})
        assert epochs == list(range(1, EPOCHS + 1)), (trial_dir.name, before, rows)


# A driver whose trials are caviar's own, except that each trial's first attempt dies right after
# its epoch-2 checkpoint, taking its node's local working folder with it (a reclaimed spot node).
CRASH_ONCE_DRIVER = """
import shutil, sys
import caviar, caviar.search.tuning, caviar.search.trainable
from ray import tune

def crash_once(hparams, data, settings):
    if tune.get_checkpoint() is not None:  # the retry
        return caviar.search.trainable.train_trial(hparams, data, settings)
    report = tune.report

    def report_then_die(metrics, checkpoint=None):
        report(metrics, checkpoint=checkpoint)
        if metrics["epoch"] == 2:
            shutil.rmtree(tune.get_context().get_storage().trial_working_directory, ignore_errors=True)
            raise RuntimeError("node lost (simulated)")

    tune.report = report_then_die
    try:
        caviar.search.trainable.train_trial(hparams, data, settings)
    finally:
        tune.report = report

caviar.search.tuning.train_trial = crash_once
caviar.sweep(sys.argv[1], address=sys.argv[2])
"""


def test_babysitting_files_from_a_worker_node_reach_storage_and_survive_a_retry(tmp_path, data_root):
    """On a worker whose local folders are its own (not the driver's /tmp), a trial's babysit.jsonl
    and TensorBoard events land in its folder on storage; after its first attempt dies with the
    node's folder, the retry appends its probes to the first attempt's instead of replacing them."""
    from caviar.layout import TENSORBOARD_DIR
    from caviar.training.babysit import read_babysit

    cluster = LocalCluster(workers=1, own_temp_dirs=True)
    try:
        path = experiment(tmp_path, data_root, "worker-files", trials=1, search={
            "scheduler": "random", "num_samples": 1, "max_epochs": 4, "seed": 0})
        driver = cluster.sweep(str(path), driver=["-c", CRASH_ONCE_DRIVER])
        output, _ = driver.communicate(timeout=240)
    finally:
        cluster.close()
    assert driver.returncode == 0, output
    folder = tmp_path / "results" / "worker-files"
    board = pd.read_csv(folder / "leaderboard.csv")
    assert list(board["status"]) == ["completed"] and list(board["retries"]) == [1]
    trial_dir = folder / f"trial_{board['trial_id'][0]}"
    assert [record["epoch"] for record in read_babysit(trial_dir)] == [0, 1, 2, 4]  # probe points of 4 epochs
    events = list((trial_dir / TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    assert len(events) == 2  # one file per attempt, neither written over
