"""Trial throughput: training images per second, caviar's trial loop vs the tutorial's pipeline.

Both pipelines train the same network (caviar's ``build_model``) with the same optimizer, batch size
and torch thread count on the same images, with random-crop + flip augmentation:

- caviar: ``caviar.training.trial.Trial`` + ``caviar.training.train.train_one_epoch`` on the uint8 tensors of
  ``caviar.training.trial.data_tensors`` (batched augmentation on the trial's device, no workers),
- tutorial: torchvision ``CIFAR10`` + ``DataLoader(num_workers=W)`` + per-image PIL transforms,
  a fresh loader iterator per epoch as in the tutorial (worker start-up is part of an epoch).

Optional rows (ablations of what caviar ships): ``--with-nchw`` times caviar with
``train.channels_last`` off (NCHW input), ``--with-fp32`` with ``train.amp`` off (float32; on CPU
caviar autocasts to bfloat16 only where the CPU has native bf16).

Runs are interleaved A/B (the order flips every repeat) and each figure is the median over the
repeats; the ratio is caviar / tutorial. An epoch here is one pass over ``--images`` images.

    python benchmarks/bench_throughput.py                       # CPU, a few minutes
    python benchmarks/bench_throughput.py --device cuda --models convnet,resnet:1
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py; also puts the repo on sys.path)
import torch  # noqa: E402
import tutorial  # noqa: E402

from caviar.config.loading import load_config
from caviar.training.data import prepare_data  # noqa: E402
from caviar.training.train import train_one_epoch, uses_bf16  # noqa: E402
from caviar.training.trial import Trial, TrialSettings, data_tensors  # noqa: E402

NAME = "throughput"
# Ablation rows: a pipeline name and the train settings it changes from what caviar ships.
ABLATIONS = {"caviar_nchw": {"channels_last": False}, "caviar_fp32": {"amp": False}}


def parse_model(spec: str) -> tuple[str, float]:
    """"convnet" (the small convnet) or "resnet:WIDTH" -> (family, width)."""
    family, _, width = spec.partition(":")
    if family not in ("convnet", "resnet"):
        raise SystemExit(f"--models: unknown family {family!r} in {spec!r}; use convnet or resnet:WIDTH")
    return family, float(width or 1.0)


def settings_for(family: str, width: float, threads: int) -> TrialSettings:
    config = load_config(None, model__family=family, model__width=width, resources__cpus_per_trial=threads,
                         resources__gpus_per_trial=0)
    return TrialSettings.from_config(config)


def caviar_epoch(family, width, hparams, tensors, dev, threads, warmup_images: int,
                 **changes: Any) -> tuple[int, float]:
    settings = dataclasses.replace(settings_for(family, width, threads), **changes)
    trial = Trial(hparams, settings, device=dev)
    train_x, train_y = tensors[0], tensors[1]

    def run(x, y) -> None:
        train_one_epoch(trial.model, trial.optimizer, x, y, batch_size=int(hparams["batch_size"]),
                        generator=trial.generator, augment=settings.augment, amp=settings.amp,
                        channels_last=settings.channels_last, max_loss=settings.max_loss)

    run(train_x[:warmup_images], train_y[:warmup_images])  # kernel selection, allocator warm-up
    with common.Timer() as t:
        run(train_x, train_y)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return (len(train_y) // int(hparams["batch_size"])) * int(hparams["batch_size"]), t.seconds


def tutorial_epoch(family, width, hparams, trainset, images, val_size, workers, dev, warmup_batches: int):
    torch.manual_seed(0)
    net, optimizer, _ = tutorial.build(hparams, family, width, 1, dev)
    loader, _ = tutorial.split_loaders(trainset, val_size, int(hparams["batch_size"]), workers, train_size=images)
    tutorial.train_epoch(net, optimizer, loader, dev, max_batches=warmup_batches)
    with common.Timer() as t:
        seen, _ = tutorial.train_epoch(net, optimizer, loader, dev)  # a fresh iterator: workers start again
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return seen, t.seconds


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = common.parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--models", default="convnet,resnet:0.25,resnet:0.5",
                   help="comma-separated: convnet (the small convnet, 2 conv blocks x 32 channels) or resnet:WIDTH")
    p.add_argument("--images", type=int, default=4096, help="training images per timed epoch")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="interleaved A/B repeats; figures are medians")
    p.add_argument("--workers", type=int, default=None, help="tutorial DataLoader workers (default min(8, cores))")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for both (default 1: what a sweep's trial with cpus_per_trial=1 uses; "
                        "several threads on a busy machine mostly measure the scheduler)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--with-nchw", action="store_true",
                   help="also time caviar with train.channels_last off (NCHW input), the layout before the fix")
    p.add_argument("--with-fp32", action="store_true",
                   help="also time caviar with train.amp off (float32; bfloat16 is on where the CPU has it natively)")
    args = p.parse_args(argv)
    if args.tiny:
        args.models, args.images, args.repeats, args.batch_size = "convnet,resnet:0.125", 256, 1, 64
    command = common.command_line(argv, "bench_throughput.py")
    info = common.machine()
    cores = info["nproc"] or 1
    workers = args.workers if args.workers is not None else min(8, cores)
    threads = args.threads
    dev = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                       else "cpu")
    models = [parse_model(m) for m in args.models.split(",") if m]
    val_size = 100
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    runs: dict[tuple[str, str], list[float]] = {}
    try:
        with common.workdir(args.workdir) as work:
            root = common.fixture(work, train_size=args.images + val_size)
            split = prepare_data(root, val_size=val_size, download=False)
            tensors = data_tensors(split, dev)
            trainset, _ = tutorial.load_data(root)
            for rep in range(args.repeats):
                for family, width in models:
                    key = family if family == "convnet" else f"resnet:{width:g}"
                    hparams = dict(common.FIXED_HPARAMS, **common.SMALL_CONVNET, batch_size=args.batch_size)
                    order = (["caviar", "tutorial"] + (["caviar_nchw"] if args.with_nchw else [])
                             + (["caviar_fp32"] if args.with_fp32 else []))
                    order = order if rep % 2 == 0 else order[::-1]
                    for pipeline in order:
                        if pipeline.startswith("caviar"):
                            seen, seconds = caviar_epoch(family, width, hparams, tensors, dev, threads,
                                                         warmup_images=2 * args.batch_size,
                                                         **ABLATIONS.get(pipeline, {}))
                        else:
                            seen, seconds = tutorial_epoch(family, width, hparams, trainset, args.images, val_size,
                                                           workers, dev, warmup_batches=2)
                        runs.setdefault((key, pipeline), []).append(seen / seconds)
                        print(f"  repeat {rep + 1}/{args.repeats} {key:12s} {pipeline:8s} {seen / seconds:8.0f} img/s",
                              flush=True)
    finally:
        torch.set_num_threads(previous_threads)

    rows = []
    for key in dict.fromkeys(k for k, _ in runs):
        cav, tut = runs[(key, "caviar")], runs[(key, "tutorial")]
        paired = [c / t for c, t in zip(cav, tut)]
        rows.append({
            "model": key,
            "caviar_img_s": common.median(cav),
            "tutorial_img_s": common.median(tut),
            "ratio": common.median(cav) / common.median(tut),
            "paired_ratio_min": min(paired),
            "paired_ratio_max": max(paired),
            "caviar_runs": [round(v, 1) for v in cav],
            "tutorial_runs": [round(v, 1) for v in tut],
        })
        for ablation in ABLATIONS:
            if (key, ablation) in runs:
                img_s, short = runs[(key, ablation)], ablation.removeprefix("caviar_")
                rows[-1].update({f"{ablation}_img_s": common.median(img_s),
                                 f"{short}_ratio": common.median(img_s) / common.median(tut),
                                 f"{ablation}_runs": [round(v, 1) for v in img_s]})
    print()
    columns = ["model", "caviar_img_s", "tutorial_img_s", "ratio", "paired_ratio_min", "paired_ratio_max"]
    for ablation, wanted in (("caviar_nchw", args.with_nchw), ("caviar_fp32", args.with_fp32)):
        if wanted:
            columns += [f"{ablation}_img_s", f"{ablation.removeprefix('caviar_')}_ratio"]
    print(common.table(rows, columns,
                       title=f"Trial throughput on {dev.type} ({threads} torch threads, tutorial "
                             f"num_workers={workers}, batch {args.batch_size}, {args.repeats} interleaved repeats)"))
    goals: dict[str, Any] = {}
    for row in rows:
        if dev.type == "cuda":
            goals[f"{row['model']}: caviar >= 5x on GPU"] = {"ratio": row["ratio"], "met": row["ratio"] >= 5}
        elif row["model"] == "convnet":
            goals["convnet: caviar >= 1.5x on CPU"] = {"ratio": row["ratio"], "met": row["ratio"] >= 1.5}
        else:
            goals[f"{row['model']}: caviar never slower on CPU"] = {"ratio": row["ratio"], "met": row["ratio"] >= 1.0}
    settings = {"device": dev.type, "models": args.models, "images_per_epoch": args.images,
                "batch_size": args.batch_size, "repeats": args.repeats, "tutorial_workers": workers,
                "torch_threads": threads, "with_nchw": args.with_nchw, "with_fp32": args.with_fp32,
                "bf16": uses_bf16(dev, True), "convnet": common.SMALL_CONVNET,
                "hparams": {k: v for k, v in common.FIXED_HPARAMS.items()}}
    return common.write_json(args.out, NAME, command, settings, rows, goals, info)


if __name__ == "__main__":
    main()
