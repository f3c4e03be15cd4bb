"""A multi-node Ray cluster on this machine (ray.cluster_utils.Cluster), run in its own process
and driven over stdin/stdout by tests/test_multinode.py.

Its own process, because Cluster starts nodes from inside the process that creates it and holds
GCS clients that abort their process once the head is gone: kept apart, the pytest process (and
the Ray session other tests share) never sees any of it.

    python tests/multinode_cluster.py TEMP_DIR WORKERS [own-temp-dirs]
    -> prints one JSON line: {"address": ..., "workers": [{"index", "node_id", "raylet_pid"}, ...]}
    <- "remove I\\n": kill worker I's processes (a lost node); answers {"removed": I}
    <- "exit\\n" or end of input: remove every node, then exit.

Head: 0 CPUs, like cluster/aws.yaml's head, so no trial runs beside the driver. Workers: 1 CPU
each, so one-CPU trials land on different nodes. Everything on 127.0.0.1, auth off, state in
TEMP_DIR; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps Ray from looking up a non-loopback address.
With `own-temp-dirs`, each worker keeps its Ray session files (trials' local working folders
among them) in a folder of its own, TEMP_DIR/w<I>, as a separate machine would: what a trial
leaves only in its node's local folders is then out of the driver's sight.
"""

from __future__ import annotations

import json
import os
import sys


def main(temp_dir: str, workers: int, own_temp_dirs: bool = False) -> None:
    from ray.cluster_utils import Cluster

    def node_temp(name: str) -> str:
        os.makedirs(os.path.join(temp_dir, name), exist_ok=True)
        return os.path.join(temp_dir, name)

    common = dict(node_ip_address="127.0.0.1", num_gpus=0)
    cluster = Cluster(initialize_head=True,
                      head_node_args=dict(num_cpus=0, include_dashboard=False, temp_dir=node_temp("ray"), **common))
    nodes = [cluster.add_node(num_cpus=1, temp_dir=node_temp(f"w{i}" if own_temp_dirs else "ray"), **common)
             for i in range(workers)]
    cluster.wait_for_nodes()
    print(json.dumps({
        "address": cluster.address,
        "workers": [{"index": i, "node_id": node.node_id, "raylet_pid": node.all_processes["raylet"][0].process.pid}
                    for i, node in enumerate(nodes)],
    }), flush=True)
    try:
        for line in sys.stdin:
            command = line.split()
            if command[:1] == ["remove"]:
                index = int(command[1])
                cluster.remove_node(nodes[index], allow_graceful=False)  # a lost node: no goodbye
                print(json.dumps({"removed": index}), flush=True)
            elif command[:1] == ["exit"]:
                break
    finally:
        for node in list(cluster.worker_nodes):
            cluster.remove_node(node)
        cluster.remove_node(cluster.head_node)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # skip Ray's exit hooks: they would wait on the GCS just removed


if __name__ == "__main__":
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=sys.argv[1],
                      RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    main(sys.argv[1], int(sys.argv[2]), own_temp_dirs=sys.argv[3:4] == ["own-temp-dirs"])
