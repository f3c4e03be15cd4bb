"""Joining or starting Ray, and what the cluster offers a trial: its resources, how many run at
once, and whether any node can run one at all (checked before anything is written)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import ray

from caviar.config.schema import Config
from caviar.errors import ConfigError
from caviar.search import cluster

# GPU share per trial for gpus_per_trial: auto, by family: a small convnet leaves most of a GPU
# idle, so 4 share one; a ResNet-9 keeps half a GPU busy.
AUTO_GPU_SHARE = {"convnet": 0.25, "resnet": 0.5}


def trial_resources(config: Config, cluster_gpus: float) -> dict[str, float]:
    gpus = config.resources.gpus_per_trial
    if gpus == "auto":
        gpus = AUTO_GPU_SHARE[config.model.family] if cluster_gpus > 0 else 0.0
    elif gpus > 0 and cluster_gpus == 0:
        raise ConfigError(
            f"resources.gpus_per_trial is {gpus} but the Ray cluster has no GPU; "
            "set --set resources.gpus_per_trial=0 (or auto) to train on CPU"
        )
    return {"cpu": config.resources.cpus_per_trial, "gpu": float(gpus)}


def check_cluster(config: Config, storage_path: str, joined: bool) -> dict[str, float]:
    """The resources per trial on the Ray cluster just started or joined, after checking that its
    nodes can all reach `storage_path` (raises ConfigError before anything is written)."""
    autoscaler = cluster.autoscaler_config() if joined else None  # asked of the head once, for all three
    cluster.check_storage_for_cluster(storage_path, shared=config.storage_shared, joined=joined, autoscaler=autoscaler)
    resources = trial_resources(config, cluster.cluster_gpus(joined=joined, autoscaler=autoscaler))
    largest = cluster.largest_node(joined=joined, autoscaler=autoscaler)
    for key, name in (("cpu", "cpus_per_trial"), ("gpu", "gpus_per_trial")):
        if resources[key] > largest[key.upper()] + 1e-9:
            raise ConfigError(f"resources.{name} is {resources[key]:g} but no node of this Ray cluster has (or can "
                              f"add) more than {largest[key.upper()]:g}: the trials would wait forever; set "
                              f"--set resources.{name}={largest[key.upper()]:g} or less")
    return resources


def start_ray(address: str | None, verbose: bool = False) -> bool:
    """Join `address`, or start a fresh local Ray instance. Returns True if we started one.

    With no address Ray would join any cluster it finds on this machine; address="local" makes
    a private instance so two users' sweeps never land on each other's cluster. Ray's own INFO
    lines from the trials (a "Checkpoint successfully created" per epoch of every trial, a
    "Restored" per resume) reach the console only when `verbose`; warnings and errors always do.
    """
    if address:
        _check_reachable(address)  # even when this process already has Ray: a bad address is an error
    if ray.is_initialized():
        return False
    if address:
        try:
            ray.init(address=address, log_to_driver=True, logging_config=_logging(verbose))
        except ConnectionError as error:
            raise ConfigError(f"--address {address}: no Ray cluster to join ({error}); start one with `ray start "
                              "--head` or `ray up`, or leave --address out to run on this machine") from None
    else:
        # A private instance listens on loopback only: nothing outside this machine can reach it.
        ray.init(address="local", _node_ip_address="127.0.0.1", log_to_driver=True, logging_config=_logging(verbose))
    return True


@contextmanager
def session(address: str | None, verbose: bool = False) -> Iterator[bool]:
    """start_ray for the `with` block, which gets whether it started Ray; a Ray instance it started
    is shut down after the block (a cluster it joined runs on)."""
    started = start_ray(address, verbose)
    try:
        yield started
    finally:
        if started:
            ray.shutdown()


T = TypeVar("T")


def run_as_trial(function: Callable[..., T], resources: dict[str, float], *args: Any) -> T:
    """`function(*args, gpu_ids)` run as one Ray task with a trial's `resources`, where the trials
    will run; `gpu_ids` are the GPUs Ray assigned the task (strings; [] when it asked for none).
    `function` must be importable by module path (Ray's workers import it)."""
    task = ray.remote(num_cpus=resources["cpu"], num_gpus=resources["gpu"])(_with_assigned_gpus)
    return ray.get(task.remote(function, *args))


def _with_assigned_gpus(function: Callable[..., T], *args: Any) -> T:
    return function(*args, [str(gpu) for gpu in ray.get_gpu_ids()])


def _logging(verbose: bool) -> ray.LoggingConfig:
    return ray.LoggingConfig(log_level="INFO" if verbose else "WARNING")


# Seconds to wait for a cluster's address to answer before saying so (Ray itself retries for minutes).
CONNECT_TIMEOUT_S = 10.0


def _check_reachable(address: str) -> None:
    """HOST:PORT answers on TCP within CONNECT_TIMEOUT_S, else a ConfigError (Ray would retry on
    and on). 'auto' and ray:// addresses are left to Ray."""
    import socket

    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            return
    except ValueError:
        raise ConfigError(f"--address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379) or auto") from None
    except OSError as error:
        raise ConfigError(f"--address {address}: nothing answers there ({error.strerror or error}); check the "
                          "head node's address and port (`ray status` on the head prints them)") from None


def cluster_slots(config: Config, resources: dict[str, float], pool: dict[str, float] | None = None) -> int:
    """How many trials of `resources` the Ray cluster runs at once now (search.max_concurrent caps
    it), out of `pool` (default: all its resources, ray.cluster_resources()); at least 1: a
    cluster runs a trial at a time even where a trial asks for more than one node has."""
    return max(1, _slots(config, resources, ray.cluster_resources() if pool is None else pool))


def _slots(config: Config, resources: dict[str, float], total: dict[str, float]) -> int:
    slots = int(total.get("CPU", 0) / resources["cpu"] + 1e-9)
    if resources["gpu"] > 0:
        slots = min(slots, int(total.get("GPU", 0) / resources["gpu"] + 1e-9))
    if config.search.max_concurrent:
        slots = min(slots, config.search.max_concurrent)
    return slots


# Ray returns a finished stage's resources a moment after its Tuner ends.
FREE_WAIT_S = 10.0


def free_slots(config: Config, resources: dict[str, float], expected: int, wait_s: float = FREE_WAIT_S) -> int:
    """How many trials of `resources` can start now (ray.available_resources()), waiting up to
    `wait_s` for `expected` to be free. Fewer stay free when other jobs share the cluster, or when
    Ray did not give back a stopped trial's CPU: seen once on Ray 2.60 after it killed paused
    trials' processes at the end of a search stage, where the next stage's second trial then
    waited 15 minutes for a slot and the deadline cut it. 0 when none is free."""
    ends = time.monotonic() + wait_s
    while True:
        free = _slots(config, resources, ray.available_resources())
        if free >= expected or time.monotonic() >= ends:
            return free
        time.sleep(0.5)
