"""GPU: epoch time per model family with and without mixed precision and channels_last; several
trials sharing one GPU; trials completed per GPU-hour on the default experiment.

Three parts (``--parts``):

- ``epoch``: one training epoch of ``--images`` images per family, caviar's trial loop, for each
  of amp (bfloat16 autocast) on/off x channels_last on/off;
- ``share``: 1, 2, 4, 8 trials at once on one GPU (``resources.gpus_per_trial = 1/k``) as a
  caviar sweep: images per second summed over the concurrent trials, and the GPU's utilisation
  (nvidia-smi, sampled every 0.5 s) while they run;
- ``per_hour``: ``experiments/default.yaml`` (ASHA, gpus_per_trial auto) with
  ``--per-hour-samples`` trials: trials finished (completed, early-stopped or diverged) per hour of
  the sweep's wall time on one GPU.

On a machine without a GPU, ``--dry-run`` runs the same code on CPU in a tiny configuration (the
figures then say nothing about GPUs; the test suite runs it so the script cannot rot).

    python benchmarks/bench_gpu.py                  # on a GPU machine
    python benchmarks/bench_gpu.py --dry-run        # anywhere, seconds
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import torch  # noqa: E402

NAME = "gpu"


class GpuMonitor(threading.Thread):
    """Samples nvidia-smi's utilization.gpu (%) and memory.used (MiB) every `interval` seconds."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.interval, self.stop, self.util, self.mem = interval, threading.Event(), [], []
        self.available = shutil.which("nvidia-smi") is not None and torch.cuda.is_available()

    def run(self) -> None:
        while self.available and not self.stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits", "-i", "0"],
                                     capture_output=True, text=True, timeout=5).stdout
                util, mem = (float(x) for x in out.strip().split(","))
                self.util.append(util)
                self.mem.append(mem)
            except Exception:
                pass
            self.stop.wait(self.interval)

    def summary(self) -> dict[str, Any]:
        busy = self.util[len(self.util) // 10:] or self.util  # skip the start-up tenth
        return {"gpu_util_mean_pct": sum(busy) / len(busy) if busy else None,
                "gpu_util_max_pct": max(self.util) if self.util else None,
                "gpu_mem_max_mib": max(self.mem) if self.mem else None}


def sweep_monitored(config: Any) -> tuple[Any, dict[str, Any]]:
    """Run `caviar.sweep(config)` while sampling GPU utilisation; (result, utilisation summary)."""
    import caviar

    monitor = GpuMonitor()
    monitor.start()
    try:
        result = caviar.sweep(config)
    finally:
        monitor.stop.set()
        monitor.join()
    return result, monitor.summary()


def part_epoch(root: Path, families: list[tuple[str, float]], images: int, batch_size: int, dev) -> list[dict]:
    from caviar.config.loading import load_config
    from caviar.training.data import prepare_data
    from caviar.training.train import train_one_epoch
    from caviar.training.trial import Trial, TrialSettings, data_tensors

    data = prepare_data(root, val_size=100, download=False)
    tensors = data_tensors(data, dev)
    x, y = tensors[0][:images], tensors[1][:images]
    hparams = dict(common.FIXED_HPARAMS, **common.SMALL_CONVNET, batch_size=batch_size)
    rows = []
    for family, width in families:
        for amp in (False, True):
            for channels_last in (False, True):
                config = load_config(None, model__family=family, model__width=width, train__amp=amp,
                                     train__channels_last=channels_last, resources__gpus_per_trial=0)
                settings = TrialSettings.from_config(config, data)
                trial = Trial(hparams, settings, device=dev)

                def run(xs, ys):
                    train_one_epoch(trial.model, trial.optimizer, xs, ys, batch_size=batch_size,
                                    generator=trial.generator, amp=amp, channels_last=channels_last)

                run(x[: 2 * batch_size], y[: 2 * batch_size])  # warm-up: cuDNN autotuning, allocator
                with common.Timer() as t:
                    run(x, y)
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                seen = len(y) // batch_size * batch_size
                rows.append({"model": family if family == "convnet" else f"resnet:{width:g}", "amp": amp,
                             "channels_last": channels_last, "epoch_s": t.seconds, "img_s": seen / t.seconds})
                print(f"  epoch {rows[-1]['model']:10s} amp={amp!s:5s} channels_last={channels_last!s:5s} "
                      f"{t.seconds:7.2f} s", flush=True)
    return rows


def part_share(root: Path, work: Path, shares: list[int], family: str, width: float, epochs: int, val_size: int,
               batch_size: int, gpu: bool) -> list[dict]:
    from caviar.training.data import prepare_data

    train_images = len(prepare_data(root, val_size=val_size, download=False).train_y)
    rows = []
    cpus = common.cluster_cpus()
    for k in shares:
        config = common.caviar_config(root, work / "results", f"share-{k}",
                                      space=common.fixed_space(**common.SMALL_CONVNET, batch_size=batch_size), num_samples=k,
                                      max_epochs=epochs, val_size=val_size, cpus_per_trial=min(1.0, cpus / k),
                                      gpus_per_trial=(1.0 / k) if gpu else 0, max_concurrent=k,
                                      model={"family": family, "width": width})
        result, utilisation = sweep_monitored(config)
        reports = common.trial_reports(Path(result.path))
        # time_total_s: a trial's own clock (training, validation, checkpoints), not queueing.
        per_trial: dict[str, float] = {}
        for r in reports:
            per_trial[r["trial_dir"]] = max(per_trial.get(r["trial_dir"], 0.0), float(r.get("time_total_s", 0.0)))
        epochs_run = {d: sum(1 for r in reports if r["trial_dir"] == d) for d in per_trial}
        rows.append({"trials_sharing": k, "gpus_per_trial": config.resources.gpus_per_trial,
                     "trial_epochs": len(reports), "sweep_s": result.summary["wall_time_s"],
                     "trial_s_median": common.median(per_trial.values()),
                     # images per second summed over the trials that ran side by side
                     "img_s_total": sum(train_images * epochs_run[d] / s for d, s in per_trial.items() if s)}
                    | utilisation)
        print(f"  share {k}: {result.summary['wall_time_s']:.1f} s", flush=True)
    return rows


def part_per_hour(root: Path, work: Path, samples: int, overrides: list[str]) -> dict[str, Any]:
    import caviar

    config = caviar.load_config(REPO_EXPERIMENT, [f"data.root={root}", f"storage={work / 'results'}",
                                                  "name=per-hour", f"search.num_samples={samples}",
                                                  "data.download=false", *overrides])
    result, utilisation = sweep_monitored(config)
    counts = result.summary["counts"]
    finished = sum(counts.get(s, 0) for s in ("completed", "early-stopped", "diverged"))
    hours = result.summary["wall_time_s"] / 3600
    return {"trials": samples, "finished": finished, "counts": counts, "sweep_s": result.summary["wall_time_s"],
            "trial_epochs": result.summary["total_trial_epochs"], "trials_per_gpu_hour": finished / hours,
            "best_val_acc": float(result.trials["best_val_acc"].max()), "overrides": overrides} | utilisation


REPO_EXPERIMENT = str(common.REPO / "experiments" / "default.yaml")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = common.parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="run on CPU in a tiny configuration (no GPU needed)")
    p.add_argument("--parts", default="epoch,share,per_hour")
    p.add_argument("--models", default="convnet,resnet:1", help="families for the epoch part")
    p.add_argument("--train-size", type=int, default=50000, help="images in the fixture's training files")
    p.add_argument("--images", type=int, default=45000, help="images per timed epoch (epoch part)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--shares", default="1,2,4,8", help="trials sharing the GPU (share part)")
    p.add_argument("--share-model", default="convnet")
    p.add_argument("--share-epochs", type=int, default=3)
    p.add_argument("--per-hour-samples", type=int, default=16, help="trials of the default experiment")
    p.add_argument("--per-hour-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra overrides for the default experiment (repeatable)")
    args = p.parse_args(argv)
    if args.tiny:
        args.dry_run = True
    if args.dry_run:
        args.models, args.train_size, args.images, args.batch_size = "convnet,resnet:0.125", 600, 256, 64
        args.shares, args.share_epochs, args.per_hour_samples = "2", 1, 2
        args.per_hour_set = args.per_hour_set + ["search.max_epochs=1", "data.val_size=100",
                                                 "data.train_subset=128", "resources.gpus_per_trial=0",
                                                 "space.conv_width={low: 8, high: 16, scale: log_int}",
                                                 "space.conv_layers=1", "space.batch_size=[64]"]
    command = common.command_line(argv, "bench_gpu.py")
    info = common.machine()
    gpu = torch.cuda.is_available() and not args.dry_run
    if not gpu and not args.dry_run:
        raise SystemExit("no GPU here; run with --dry-run to exercise the script on CPU")
    dev = torch.device("cuda" if gpu else "cpu")
    parts = [x for x in args.parts.split(",") if x]
    from bench_throughput import parse_model

    families = [parse_model(m) for m in args.models.split(",") if m]
    results: dict[str, Any] = {"device": dev.type, "dry_run": args.dry_run}
    with common.workdir(args.workdir) as work:
        root = common.fixture(work, train_size=args.train_size, test_size=100)
        if "epoch" in parts:
            results["epoch"] = part_epoch(root, families, min(args.images, args.train_size - 100),
                                          args.batch_size, dev)
        if {"share", "per_hour"} & set(parts):
            try:
                import ray  # noqa: F401
            except ImportError:
                results["skipped"] = "share and per_hour need Ray, which is not installed here"
                parts = [x for x in parts if x == "epoch"]
        if {"share", "per_hour"} & set(parts):
            with common.ray_cluster():
                if "share" in parts:
                    family, width = parse_model(args.share_model)
                    results["share"] = part_share(root, work, [int(k) for k in args.shares.split(",")], family,
                                                  width, args.share_epochs, 100 if args.dry_run else 5000,
                                                  args.batch_size, gpu)
                if "per_hour" in parts:
                    results["per_hour"] = part_per_hour(root, work, args.per_hour_samples, args.per_hour_set)

    label = "CPU dry run: says nothing about GPUs" if args.dry_run else torch.cuda.get_device_name(0)
    if "epoch" in results:
        print()
        print(common.table(results["epoch"], ["model", "amp", "channels_last", "epoch_s", "img_s"],
                           title=f"Epoch time, {args.images} images, batch {args.batch_size} ({label})"))
    if "share" in results:
        print()
        print(common.table(results["share"], ["trials_sharing", "gpus_per_trial", "img_s_total", "sweep_s",
                                              "gpu_util_mean_pct", "gpu_util_max_pct", "gpu_mem_max_mib"],
                           title=f"Trials sharing one GPU ({args.share_model}, {args.share_epochs} epochs each)"))
    if "per_hour" in results:
        ph = results["per_hour"]
        print()
        print(common.table([ph], ["trials", "finished", "sweep_s", "trial_epochs", "trials_per_gpu_hour",
                                  "gpu_util_mean_pct"],
                           title=f"Default experiment, {args.per_hour_samples} trials ({label})"))
    settings = {"parts": parts, "models": args.models, "train_size": args.train_size, "images": args.images,
                "batch_size": args.batch_size, "shares": args.shares, "share_model": args.share_model,
                "share_epochs": args.share_epochs, "per_hour_samples": args.per_hour_samples,
                "per_hour_set": args.per_hour_set, "dry_run": args.dry_run}
    return common.write_json(args.out, NAME, command, settings, results, {}, info)


if __name__ == "__main__":
    main()
