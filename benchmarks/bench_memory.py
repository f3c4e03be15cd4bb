"""Memory: peak resident memory of a whole caviar sweep with 1, 2, 4 concurrent trials.

The sweep trains on the full training set (50,000 images written in CIFAR-10's format, 45,000
after the validation split). The memory of the whole sweep is the sum over the driver and every
process it started (Ray's GCS, raylet with the object store, trial workers) of the *proportional*
set size (PSS): a page shared by n processes counts 1/n in each, so data mapped from the object
store by every trial counts once, as it occupies RAM once. (Summed RSS counts it once per process
and is reported beside it to show the difference.) Sampled every ``--interval`` seconds; the peak
is reported.

MB per extra trial is the slope of peak PSS over the number of concurrent trials. Each trial is a
worker process, and a bare one (Python, torch with torch._dynamo, which the first optimizer
imports, Ray Tune, caviar; no data) already holds a few hundred MB of private memory; that is
measured too, and then made to map the dataset from the object store (as a trial does) and read
every image: ``data_private_mb`` is what that added to its private memory (USS), the dataset's
size if a worker held its own copy, about 0 when the one copy in the object store is shared. What
a running trial holds beyond the bare worker (``trial_uss_beyond_bare_mb``) is then its model,
optimizer state and batches: activations of training and evaluation batches and the allocator's
cache of them.

    python benchmarks/bench_memory.py                  # 1, 2, 4 trials; a fresh Ray for each
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "memory"
MB = 2**20
# A fast network, so one epoch over 45,000 images takes seconds: the data, not the model, is
# what this benchmark is about.
TINY_NET = dict(conv_layers=1, conv_width=16, fc_layers=1, fc_width=32)


class Sampler(threading.Thread):
    """Polls the driver's process tree; keeps the sample with the largest summed PSS."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.stop = threading.Event()
        self.peak: dict[str, Any] = {"pss_mb": 0.0}
        self.samples = 0

    def sample(self) -> dict[str, Any]:
        import psutil

        me = psutil.Process()
        totals = {"pss_mb": 0.0, "rss_mb": 0.0, "uss_mb": 0.0, "processes": 0}
        kinds: dict[str, dict[str, float]] = {}
        trials = []
        for proc in [me] + me.children(recursive=True):
            try:
                mem = proc.memory_full_info()
            except Exception:  # exited between listing and reading
                continue
            kind, title = common.classify(proc)
            totals["pss_mb"] += mem.pss / MB
            totals["rss_mb"] += mem.rss / MB
            totals["uss_mb"] += mem.uss / MB
            totals["processes"] += 1
            k = kinds.setdefault(kind, {"count": 0, "pss_mb": 0.0, "uss_mb": 0.0, "titles": []})
            k["count"] += 1
            k["titles"].append(title)
            k["pss_mb"] += mem.pss / MB
            k["uss_mb"] += mem.uss / MB
            if kind == "trial":
                trials.append({"pss_mb": mem.pss / MB, "uss_mb": mem.uss / MB, "rss_mb": mem.rss / MB})
        return totals | {"by_kind": kinds, "trials": trials}

    def run(self) -> None:
        # `peak`: the largest total of the whole sweep. `running`: the largest total among the
        # samples with the most trial processes alive at once (the one to read trials' memory off).
        self.running: dict[str, Any] = {"pss_mb": 0.0, "trials": []}
        while not self.stop.is_set():
            current = self.sample()
            self.samples += 1
            if current["pss_mb"] > self.peak["pss_mb"]:
                self.peak = current
            if (len(current["trials"]), current["pss_mb"]) > (len(self.running["trials"]), self.running["pss_mb"]):
                self.running = current
            self.stop.wait(self.interval)


def bare_worker_mb(split) -> dict[str, float]:
    """A Ray worker that imports what a trial imports and builds an optimizer, measured before and
    after it maps the dataset from the object store (as a trial does) and reads every image.

    uss_mb: the cost of one more process, whatever the dataset. data_private_mb: what reading the
    whole dataset added to its private memory: ~0 when the object store's one copy is shared,
    the dataset's size if the worker had its own copy.
    """
    import ray

    @ray.remote(num_cpus=0)
    def bare(data) -> dict[str, float]:
        import psutil
        import torch
        from ray import tune  # noqa: F401

        import caviar.search.trainable  # noqa: F401
        from caviar.training.trial import data_tensors

        torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)  # imports torch._dynamo, as trials do
        before = psutil.Process().memory_full_info()
        tensors = data_tensors(data, torch.device("cpu"))
        touched = int(tensors[0].sum()) + int(tensors[2].sum())  # every byte of every image
        after = psutil.Process().memory_full_info()
        return {"uss_mb": before.uss / MB, "pss_mb": before.pss / MB, "data_private_mb": (after.uss - before.uss) / MB,
                "data_pss_mb": (after.pss - before.pss) / MB, "touched": touched}

    return ray.get(bare.remote(ray.put(split)))


def load(root: Path, args):
    from caviar.training.data import prepare_data

    return prepare_data(root, val_size=args.val_size, train_subset=args.train_subset, download=False)


def one_level(root: Path, storage: Path, concurrent: int, args) -> dict[str, Any]:
    import caviar

    with common.ray_cluster(num_cpus=concurrent) as started:
        cpus = common.cluster_cpus() / concurrent  # a reused (test) Ray: share its CPUs
        idle = Sampler(args.interval).sample()
        config = common.caviar_config(
            root, storage, f"memory-{concurrent}", space=common.fixed_space(**TINY_NET, batch_size=args.batch_size),
            num_samples=concurrent, max_epochs=1, val_size=args.val_size, cpus_per_trial=cpus,
            max_concurrent=concurrent, data={"train_subset": args.train_subset})
        sampler = Sampler(args.interval)
        sampler.start()
        try:
            with common.Timer() as t:
                result = caviar.sweep(config)
        finally:
            sampler.stop.set()
            sampler.join()
        # After the sweep, so its process is not in the sweep's samples; in a reused Ray it would
        # stay as an idle worker and be counted in the next level's, so main() measures it last.
        bare = bare_worker_mb(load(root, args)) if started else {"uss_mb": float("nan"), "data_private_mb": float("nan")}
    peak, running = sampler.peak, sampler.running
    trials = running.get("trials", [])
    return {
        "concurrent_trials": concurrent,
        "peak_pss_mb": peak["pss_mb"],
        "peak_rss_mb": peak.get("rss_mb"),
        "idle_ray_pss_mb": idle["pss_mb"] if started else None,
        "trial_processes_at_peak": len(trials),
        "trial_uss_mb": common.median(t["uss_mb"] for t in trials),
        "trial_pss_mb": common.median(t["pss_mb"] for t in trials),
        "bare_worker_uss_mb": bare["uss_mb"],
        "data_private_mb": bare["data_private_mb"],
        "trial_uss_beyond_bare_mb": common.median(t["uss_mb"] for t in trials) - bare["uss_mb"],
        "pss_mb_all_trials_running": running["pss_mb"],
        "driver_pss_mb": peak.get("by_kind", {}).get("driver", {}).get("pss_mb"),
        "by_kind": peak.get("by_kind"),
        "samples": sampler.samples,
        "wall_s": t.seconds,
        "trials_finished": int((result.trials["status"] == "completed").sum()),
    }


def slope(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    if n < 2:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = common.parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--levels", default="1,2,4", help="numbers of concurrent trials")
    p.add_argument("--train-size", type=int, default=50000, help="images in the training files")
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--train-subset", type=int, default=None, help="data.train_subset (default: all)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--interval", type=float, default=0.25, help="seconds between memory samples")
    args = p.parse_args(argv)
    if args.tiny:
        args.levels, args.train_size, args.val_size = "1,2", 1000, 200
    command = common.command_line(argv, "bench_memory.py")
    info = common.machine()
    levels = [int(x) for x in args.levels.split(",")]
    rows = []
    with common.workdir(args.workdir) as work:
        root = common.fixture(work, train_size=args.train_size, test_size=1000)
        split = load(root, args)
        data_mb = sum(a.nbytes for a in (split.train_x, split.train_y, split.val_x, split.val_y)) / MB
        del split  # this process is the sweep's driver: hold no copy of our own while measuring
        for k in levels:
            row = one_level(root, work / "results", k, args)
            rows.append(row)
            print(f"  {k} concurrent: peak PSS {row['peak_pss_mb']:.0f} MB ({row['wall_s']:.0f} s)", flush=True)
    if any(r["bare_worker_uss_mb"] != r["bare_worker_uss_mb"] for r in rows):  # reused Ray: measure it now
        with common.ray_cluster():
            bare = bare_worker_mb(load(root, args))
        for r in rows:
            r["bare_worker_uss_mb"], r["data_private_mb"] = bare["uss_mb"], bare["data_private_mb"]
            r["trial_uss_beyond_bare_mb"] = r["trial_uss_mb"] - bare["uss_mb"]
    per_trial = slope([r["concurrent_trials"] for r in rows], [r["peak_pss_mb"] for r in rows])
    for r in rows:
        base = rows[0]
        k = r["concurrent_trials"] - base["concurrent_trials"]
        r["mb_per_extra_trial"] = (r["peak_pss_mb"] - base["peak_pss_mb"]) / k if k else None
    print()
    print(common.table(rows, ["concurrent_trials", "peak_pss_mb", "peak_rss_mb", "mb_per_extra_trial",
                              "trial_processes_at_peak", "trial_uss_mb", "bare_worker_uss_mb",
                              "trial_uss_beyond_bare_mb", "data_private_mb", "driver_pss_mb"],
                       title=f"Peak memory of the whole sweep (driver + Ray + trials), dataset {data_mb:.0f} MB "
                             f"({args.train_size - args.val_size} train + {args.val_size} val images, uint8); "
                             f"{per_trial:.0f} MB per extra trial (slope)"))
    private = max(r["data_private_mb"] for r in rows)
    goals = {"dataset held once per node: reading all of it adds < 10% of its size to a worker's private memory":
             {"mb_per_extra_trial": per_trial, "data_private_mb": private, "dataset_mb": data_mb,
              "met": bool(private < 0.1 * data_mb)}}
    settings = {"levels": levels, "train_size": args.train_size, "val_size": args.val_size,
                "train_subset": args.train_subset, "batch_size": args.batch_size, "network": TINY_NET,
                "epochs": 1, "interval_s": args.interval}
    results = {"rows": rows, "mb_per_extra_trial": per_trial, "dataset_mb": data_mb}
    return common.write_json(args.out, NAME, command, settings, results, goals, info)


if __name__ == "__main__":
    main()
