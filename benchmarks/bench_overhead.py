"""Sweep overhead: a sweep's wall time vs its trials' pure training time, with and without reuse.

For N short trials on S parallel slots (S = cluster CPUs / cpus_per_trial), a sweep with no
overhead would take sum(pure training time) / S. The per-trial overhead is what each slot spends
per trial beyond training:

    overhead per trial = (wall - sum(pure) / S) * S / N

Pure training time is ``Trial.run_epoch`` (train + validate) for the same configs (same seeds)
as the sweep, timed inside Ray tasks that run S at a time with the same CPUs each, so the CPU
contention matches the sweep's; warmed up (imports, kernel selection), no checkpoints, no Tune. The sweep is ``caviar.sweep`` as
shipped (trial processes reused) and with ``reuse_actors=False`` (a new process per trial).
Ray is started once beforehand (its start-up time is reported, not counted).

    python benchmarks/bench_overhead.py
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from bench_sweep_wall import sweep_space  # noqa: E402

NAME = "overhead"


@contextlib.contextmanager
def actor_reuse(enabled: bool) -> Iterator[None]:
    """caviar's sweeper as shipped (reuse on) or with Tune's reuse_actors turned off."""
    import caviar.search.tuning as tuning

    if enabled:
        yield
        return
    original = tuning.tune_config

    def without_reuse(config, *args):
        tune_config = original(config, *args)
        tune_config.reuse_actors = False
        return tune_config

    tuning.tune_config = without_reuse
    try:
        yield
    finally:
        tuning.tune_config = original


def pure_training(configs: list[dict[str, Any]], data, settings, cpus_per_trial: float) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of Trial.run_epoch per config (all epochs), S Ray tasks at a time."""
    import ray

    @ray.remote(num_cpus=cpus_per_trial)
    def train(hparams, data, settings) -> tuple[float, float]:
        import time

        import torch

        from caviar.training.trial import Trial, data_tensors

        torch.set_num_threads(settings.threads)
        tensors = data_tensors(data, torch.device("cpu"))
        # Warm-up outside the timing: the first optimizer imports torch._dynamo (seconds), the first
        # batches select kernels. A sweep pays these once per process; they are overhead, not training.
        batch = 2 * int(hparams["batch_size"])
        Trial(hparams, settings).run_epoch(tensors[0][:batch], tensors[1][:batch], *tensors[2:])
        trial = Trial(hparams, settings)
        tensors = data_tensors(data, trial.device)
        begin, begin_cpu = time.perf_counter(), time.process_time()
        while not trial.finished:
            trial.run_epoch(*tensors)
        return time.perf_counter() - begin, time.process_time() - begin_cpu

    data_ref, settings_ref = ray.put(data), ray.put(settings)
    return ray.get([train.remote(hp, data_ref, settings_ref) for hp in configs])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = common.parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--trials", default="8,24",
                   help="sweep sizes (comma-separated); with two or more, the overhead is split into a fixed "
                        "start-up part and a marginal part per trial. Without reuse, only the largest is run")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-size", type=int, default=1000, help="training images per trial epoch")
    p.add_argument("--val-size", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=2, help="rounds of all sweeps, order reversed every other round")
    args = p.parse_args(argv)
    if args.tiny:
        args.trials, args.epochs, args.train_size, args.val_size, args.repeats = "2", 1, 128, 64, 1
    command = common.command_line(argv, "bench_overhead.py")
    info = common.machine()
    sizes = sorted({int(n) for n in args.trials.split(",")})
    largest = sizes[-1]
    variants = [("reuse", n) for n in sizes] + [("no_reuse", largest)]

    import caviar
    from caviar.config.space import SpaceConfig
    from caviar.training.data import prepare_data
    from caviar.training.trial import TrialSettings

    runs: dict[tuple[str, int], list[dict[str, Any]]] = {v: [] for v in variants}
    pure_runs: list[list[float]] = []
    pure_cpu_runs: list[list[float]] = []
    with common.workdir(args.workdir) as work:
        root = common.fixture(work, train_size=args.train_size + args.val_size)
        begin = time.perf_counter()
        with common.ray_cluster() as started:
            ray_start_s = time.perf_counter() - begin if started else float("nan")
            slots = int(common.cluster_cpus() // args.cpus_per_trial)
            with common.Timer() as load:
                data = prepare_data(root, val_size=args.val_size, download=False)
            for rep in range(args.repeats):
                for variant, n in (variants if rep % 2 == 0 else variants[::-1]):
                    config = common.caviar_config(root, work / "results", f"{variant}-{n}-{rep}",
                                                  space=sweep_space(args.batch_size), num_samples=n,
                                                  max_epochs=args.epochs, val_size=args.val_size,
                                                  cpus_per_trial=args.cpus_per_trial)
                    with actor_reuse(variant == "reuse"), common.CpuMeter() as cpu, common.Timer() as t:
                        result = caviar.sweep(config)
                    runs[(variant, n)].append({"wall_s": t.seconds, "fit_s": result.summary["wall_time_s"],
                                               "processes": common.distinct_pids(Path(result.path)),
                                               "cpu_s": {k: round(v, 2) for k, v in cpu.by_kind.items()},
                                               "loadavg_1min": round(os.getloadavg()[0], 2)})
                    print(f"  repeat {rep + 1}/{args.repeats} {variant:8s} {n:3d} trials {t.seconds:6.1f} s", flush=True)
                    if n == largest and variant == "reuse":
                        names = list(SpaceConfig.model_fields) + ["seed"]
                        hparams = [{k: row[k] for k in names if k in row.index} for _, row in result.trials.iterrows()]
                        settings = TrialSettings.from_config(config, data)
                pure = pure_training(hparams, data, settings, args.cpus_per_trial)
                pure_runs.append([w for w, _ in pure])
                pure_cpu_runs.append([c for _, c in pure])
                print(f"  repeat {rep + 1}/{args.repeats} pure training {common.mean(w for w, _ in pure):6.2f} s "
                      f"per trial ({common.mean(c for _, c in pure):.2f} s CPU)", flush=True)

    # Every config trains the same network on the same images (only lr, weight decay and seed
    # differ), so the pure time per trial is one figure for every sweep size.
    pure_per_trial = common.median(common.mean(p) for p in pure_runs)
    pure_cpu_per_trial = common.median(common.mean(p) for p in pure_cpu_runs)
    rows = []
    for variant, n in variants:
        used = min(slots, n)
        wall = common.median(r["wall_s"] for r in runs[(variant, n)])
        ideal = pure_per_trial * n / used
        cpu = {k: common.median(r["cpu_s"].get(k, 0.0) for r in runs[(variant, n)])
               for k in ("trial", "driver", "ray_system", "idle_worker", "ray_task")}
        rows.append({"trial_processes": "reused" if variant == "reuse" else "new per trial", "trials": n,
                     "wall_s": wall, "ideal_s": ideal, "overhead_s": wall - ideal,
                     "overhead_per_trial_s": (wall - ideal) * used / n,
                     # CPU seconds per trial beyond pure training, summed over every process of the sweep;
                     # unlike wall time, other work on the machine does not inflate it.
                     "cpu_overhead_per_trial_s": (sum(cpu.values()) - pure_cpu_per_trial * n) / n,
                     "trial_cpu_per_trial_s": cpu["trial"] / n,
                     "driver_cpu_s": cpu["driver"], "ray_system_cpu_s": cpu["ray_system"],
                     "idle_worker_cpu_s": cpu["idle_worker"] + cpu["ray_task"],
                     "processes": runs[(variant, n)][0]["processes"],
                     "wall_runs": [round(r["wall_s"], 1) for r in runs[(variant, n)]],
                     "loadavg_1min": [r["loadavg_1min"] for r in runs[(variant, n)]]})
    split: dict[str, Any] = {}
    reuse_rows = [r for r in rows if r["trial_processes"] == "reused"]
    if len(reuse_rows) >= 2:
        # overhead(n) = fixed + marginal * n / slots, from the smallest and largest sweep
        a, b = reuse_rows[0], reuse_rows[-1]
        marginal = slots * (b["overhead_s"] - a["overhead_s"]) / (b["trials"] - a["trials"])
        split = {"fixed_startup_s": a["overhead_s"] - marginal * a["trials"] / slots,
                 "marginal_per_trial_s": marginal}
    title = (f"Sweep overhead: trials of {args.epochs} epoch(s) x {args.train_size} images on {slots} slots; "
             f"pure training {pure_per_trial:.2f} s per trial ({pure_cpu_per_trial:.2f} s CPU); data load {load.seconds:.2f} s, "
             f"Ray start {ray_start_s:.1f} s (not counted)")
    if split:
        title += (f"; reused processes: fixed start-up {split['fixed_startup_s']:.1f} s + "
                  f"{split['marginal_per_trial_s']:.2f} s per trial")
    print()
    print(common.table(rows, ["trial_processes", "trials", "wall_s", "ideal_s", "overhead_s",
                              "overhead_per_trial_s", "cpu_overhead_per_trial_s", "driver_cpu_s",
                              "ray_system_cpu_s", "processes"], title=title))
    best = reuse_rows[-1]
    goals = {"overhead <= 1.5 s per trial on CPU (processes reused, as shipped)":
             {"trials": best["trials"], "overhead_per_trial_s": best["overhead_per_trial_s"],
              "met": best["overhead_per_trial_s"] <= 1.5}}
    settings = {"trials": sizes, "epochs": args.epochs, "train_size": args.train_size,
                "val_size": args.val_size, "batch_size": args.batch_size, "cpus_per_trial": args.cpus_per_trial,
                "slots": slots, "repeats": args.repeats}
    results = {"rows": rows, **split, "pure_per_trial_s": pure_per_trial, "pure_cpu_per_trial_s": pure_cpu_per_trial,
               "pure_runs": [[round(x, 3) for x in p] for p in pure_runs], "data_load_s": load.seconds,
               "ray_start_s": ray_start_s,
               "runs": {f"{v}-{n}": r for (v, n), r in runs.items()}}
    return common.write_json(args.out, NAME, command, settings, results, goals, info)


if __name__ == "__main__":
    main()
