"""caviar on a running Ray cluster: the shared-storage rule for multi-node sweeps and the GPUs an
autoscaling cluster can add (its cluster files are checked by caviar.search.cluster_files)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from caviar import storage
from caviar.errors import ConfigError

# Written by `ray up` on the head node: the prepared cluster config, node types with resources.
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
# Filesystems every node of a cluster can mount: a local storage path on one of them is shared.
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs",
                       "fuse.glusterfs", "fuse.cephfs", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs",
                       "fuse.mountpoint-s3", "fuse.geesefs", "wekafs"}



HEAD_RESOURCE = "node:__internal_head__"  # the resource Ray gives the head node alone
HEAD_READ_TIMEOUT_S = 60  # a task on the head answers in well under a second; a busy head, slower


def _parse_config(text: str | None) -> dict[str, Any] | None:
    try:
        loaded = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return None
    return loaded if isinstance(loaded, dict) else None


def _read_on_head(path: str) -> str | None:
    """The text of `path` (with ~ expanded there) on the connected cluster's head node, or None when
    it has no such file or cannot be asked. Read by a zero-CPU task pinned to the head, so it
    works from a driver on a laptop or through Ray Client, whose own disk is not the head's."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    heads = [node["NodeID"] for node in ray.nodes() if node.get("Alive") and HEAD_RESOURCE in node.get("Resources", {})]
    if not heads:
        return None

    def read(file: str) -> str | None:  # standard library only: the head needs nothing of caviar's

        try:
            with open(os.path.expanduser(file)) as f:
                return f.read()
        except OSError:
            return None

    task = ray.remote(num_cpus=0)(read).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=heads[0], soft=False))
    try:
        return ray.get(task.remote(path), timeout=HEAD_READ_TIMEOUT_S)
    except ray.exceptions.RayError:  # timed out, or the head is gone
        return None


def autoscaler_config() -> dict[str, Any] | None:
    """The config `ray up` left on the cluster's head node (its node types, with the GPUs each can
    bring), or None off a launcher-made cluster. Asked of the head itself; this machine's copy is
    read only when the head cannot be asked (then this machine is most likely the head)."""
    found = _read_on_head(BOOTSTRAP_CONFIG)
    if found is None:
        path = Path(BOOTSTRAP_CONFIG).expanduser()
        try:
            found = path.read_text() if path.is_file() else None
        except OSError:
            found = None
    return _parse_config(found)


def _max_workers(autoscaler: dict[str, Any] | None) -> int:
    return int(autoscaler.get("max_workers", 0)) if autoscaler else 0


# Default of the `autoscaler` arguments below: ask the head node (a caller that needs the config for
# several checks asks once and passes it, since each ask is a task on the head).
ASK = object()


def _autoscaler(autoscaler: Any, joined: bool) -> dict[str, Any] | None:
    if autoscaler is ASK:
        return autoscaler_config() if joined else None
    return autoscaler


def cluster_gpus(joined: bool = True, autoscaler: Any = ASK) -> float:
    """GPUs the trials may count on: those in the cluster now or, on an autoscaling cluster that
    starts with no GPU worker (cluster/aws.yaml), those its worker types can bring. Both are asked
    of the cluster (its resources, its head's autoscaler config), wherever the driver runs."""
    import ray

    now = float(ray.cluster_resources().get("GPU", 0))
    autoscaler = _autoscaler(autoscaler, joined)
    if not autoscaler:
        return now
    head = autoscaler.get("head_node_type")
    can_add = sum(
        float((t.get("resources") or {}).get("GPU", 0)) * int(t.get("max_workers", 0))
        for name, t in (autoscaler.get("available_node_types") or {}).items() if name != head
    )
    return max(now, can_add)


def filesystem_type(path: str) -> str | None:
    """The filesystem type (/proc/mounts) of the mount holding `path`, or None when unknown."""
    target = Path(path).expanduser().absolute()
    while not target.exists() and target != target.parent:
        target = target.parent
    target = target.resolve()
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return None
    best = None
    for point, kind in mounts:
        point = point.replace("\\040", " ")
        if (target == Path(point) or Path(point) in target.parents) and (best is None or len(point) >= len(best[0])):
            best = (point, kind)
    return best[1] if best else None


def storage_problem(storage_path: str, nodes: int, max_workers: int = 0, shared: bool = False,
                    fstype: str | None = None) -> str | None:
    """Why `storage_path` cannot hold a sweep on this cluster, or None when it can.

    Ray Tune does not copy trial folders between nodes: every node writes its trials' checkpoints
    straight to storage, and a trial retried on another node reads them back from there.
    """
    local = storage_path.removeprefix("file://")
    if (storage.is_uri(storage_path) and not storage_path.startswith("file://")) or shared:
        return None
    if nodes <= 1 and max_workers == 0:
        return None
    fstype = fstype or filesystem_type(local)
    if fstype in NETWORK_FILESYSTEMS:
        return None
    size = f"{nodes} nodes" + (f" and can add up to {max_workers} workers" if max_workers else "")
    return (
        f"storage {local} is a folder on this machine ({fstype or 'local disk'}), but this Ray cluster has {size}: "
        "Ray Tune does not copy trial folders between nodes, so checkpoints written on other nodes would be out of "
        "reach of the driver and of the node a failed trial is retried on. Pass shared storage: "
        "--storage s3://BUCKET/caviar (or gs://...), or a folder every node mounts at the same path "
        "(NFS and similar are recognised); if this folder is shared in a way caviar cannot tell, "
        "add --set storage_shared=true"
    )


def check_storage_for_cluster(storage_path: str, shared: bool = False, joined: bool = True,
                              autoscaler: Any = ASK) -> None:
    """Raise ConfigError at once if the connected Ray cluster cannot use `storage_path`."""
    import ray

    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    problem = storage_problem(storage_path, nodes, _max_workers(_autoscaler(autoscaler, joined)), shared)
    if problem:
        raise ConfigError(problem)


def largest_node(joined: bool = True, autoscaler: Any = ASK) -> dict[str, float]:
    """The most CPUs and GPUs one node has, or can have: alive nodes now and, on an autoscaling
    cluster, its worker types (a trial's resources must fit on one node, or it waits forever)."""
    import ray

    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    types = (_autoscaler(autoscaler, joined) or {}).get("available_node_types", {}) or {}
    nodes += [dict(node_type.get("resources", {}) or {}) for node_type in types.values()]
    return {key: max([float(node.get(key, 0) or 0) for node in nodes] or [0.0]) for key in ("CPU", "GPU")}
