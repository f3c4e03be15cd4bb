"""Sweep wall time: the same N short trials as a caviar sweep and as a tutorial-style Ray Tune sweep.

Both sweeps draw the same configs (caviar's search space, the same BasicVariantGenerator seed),
train the same network for the same epochs on the same data with the same resources per trial,
checkpoint every epoch, and run in the same Ray instance (started once, not timed):

- caviar: ``caviar.sweep(config)``: the driver loads the data once and shares it through Ray's
  object store; trial processes are reused; batched augmentation on uint8 tensors,
- tutorial: every trial ``load_data``s from disk, ``random_split``s, builds DataLoaders with
  worker processes and per-image transforms, in a new process per trial (``reuse_actors=False``).

Wall time is end to end: from the call until the results are back (caviar's includes loading the
data and writing its leaderboard). Sweeps are interleaved (A B, then B A, ...).

    python benchmarks/bench_sweep_wall.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import tutorial  # noqa: E402

NAME = "sweep_wall"


def sweep_space(batch_size: int) -> dict[str, Any]:
    """The small convnet with fixed settings; only lr, weight decay and the seed vary per trial."""
    return common.fixed_space(**common.SMALL_CONVNET, batch_size=batch_size,
                              lr={"low": 3e-3, "high": 3e-2, "scale": "log"},
                              weight_decay={"low": 1e-5, "high": 1e-3, "scale": "log"})


def run_caviar(config) -> dict[str, Any]:
    import caviar

    with common.Timer() as t:
        result = caviar.sweep(config)
    return {"wall_s": t.seconds, "trials": len(result.trials), "trial_epochs": int(result.trials["epochs"].sum()),
            "best_val_acc": float(result.trials["best_val_acc"].max()),
            "processes": common.distinct_pids(Path(result.path)),
            "seeds": sorted(int(s) for s in result.trials["seed"])}


def run_tutorial(config, workers: int, storage: Path, name: str) -> dict[str, Any]:
    from caviar.search.space import to_param_space

    settings = {"family": config.model.family, "width": config.model.width, "epochs": config.search.max_epochs,
                "val_size": config.data.val_size, "workers": workers, "augment": config.data.augment}
    wall, grid = tutorial.sweep(to_param_space(config.space), config.search.num_samples, config.search.seed,
                                config.data.root, settings, config.resources.cpus_per_trial,
                                float(config.resources.gpus_per_trial), str(storage), name)
    reports = common.trial_reports(storage / name)
    return {"wall_s": wall, "trials": len(grid), "trial_epochs": len(reports),
            "best_val_acc": max((r["val_acc"] for r in reports), default=float("nan")),
            "processes": common.distinct_pids(storage / name),
            "seeds": sorted(int(r.config["seed"]) for r in grid)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = common.parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-size", type=int, default=4500, help="training images per trial epoch")
    p.add_argument("--val-size", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="for both sweeps")
    p.add_argument("--workers", type=int, default=None, help="tutorial DataLoader workers (default min(8, cores))")
    p.add_argument("--repeats", type=int, default=1, help="pairs of sweeps, interleaved A B / B A")
    args = p.parse_args(argv)
    if args.tiny:
        args.trials, args.epochs, args.train_size, args.val_size, args.repeats = 2, 1, 256, 64, 1
    command = common.command_line(argv, "bench_sweep_wall.py")
    info = common.machine()
    workers = args.workers if args.workers is not None else min(8, info["nproc"] or 1)
    runs: dict[str, list[dict[str, Any]]] = {"caviar": [], "tutorial": []}
    with common.workdir(args.workdir) as work, common.ray_cluster():
        root = common.fixture(work, train_size=args.train_size + args.val_size)
        slots = min(args.trials, int(common.cluster_cpus() // args.cpus_per_trial))
        for rep in range(args.repeats):
            order = ["caviar", "tutorial"] if rep % 2 == 0 else ["tutorial", "caviar"]
            for which in order:
                name = f"{which}-{rep}"
                config = common.caviar_config(root, work / "results", name, space=sweep_space(args.batch_size),
                                              num_samples=args.trials, max_epochs=args.epochs,
                                              val_size=args.val_size, cpus_per_trial=args.cpus_per_trial)
                if which == "caviar":
                    run = run_caviar(config)
                else:
                    run = run_tutorial(config.resolved(), workers, work / "results", name)
                runs[which].append(run)
                print(f"  repeat {rep + 1}/{args.repeats} {which:8s} {run['wall_s']:7.1f} s", flush=True)
    rows = []
    for which in ("caviar", "tutorial"):
        r = runs[which]
        rows.append({"pipeline": which, "wall_s": common.median(x["wall_s"] for x in r),
                     "s_per_trial": common.median(x["wall_s"] for x in r) / args.trials,
                     "trial_epochs": r[0]["trial_epochs"], "processes": r[0]["processes"],
                     "best_val_acc": common.median(x["best_val_acc"] for x in r),
                     "wall_runs": [round(x["wall_s"], 1) for x in r]})
    speedup = rows[1]["wall_s"] / rows[0]["wall_s"]
    same_configs = all(c["seeds"] == t["seeds"] for c, t in zip(runs["caviar"], runs["tutorial"]))
    print()
    print(common.table(rows, ["pipeline", "wall_s", "s_per_trial", "trial_epochs", "processes", "best_val_acc"],
                       title=f"Sweep wall time: {args.trials} trials x {args.epochs} epochs, {args.train_size} "
                             f"training images, {args.cpus_per_trial:g} CPU per trial ({slots} at a time), "
                             f"tutorial num_workers={workers}; caviar is {speedup:.2f}x faster"))
    goals = {"caviar >= 3x faster end to end on CPU": {"speedup": speedup, "met": speedup >= 3}}
    settings = {"trials": args.trials, "epochs": args.epochs, "train_size": args.train_size,
                "val_size": args.val_size, "batch_size": args.batch_size, "cpus_per_trial": args.cpus_per_trial,
                "parallel_trials": slots, "tutorial_workers": workers, "repeats": args.repeats,
                "same_configs": same_configs, "space": sweep_space(args.batch_size)}
    results = {"rows": rows, "speedup": speedup, "runs": runs}
    return common.write_json(args.out, NAME, command, settings, results, goals, info)


if __name__ == "__main__":
    main()
