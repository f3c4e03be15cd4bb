"""Thin commands: parse arguments, call the API, print. Errors become one message and exit 2."""

from __future__ import annotations

import argparse
import errno
import sys
import warnings
from typing import Sequence

from caviar.errors import CaviarError


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", nargs="?", help="a shipped experiment's name (smoke, staged, cpu-budget, ...: "
                        "`caviar experiments` lists them) or a YAML file (default: the built-in defaults, "
                        "identical to the shipped `default`)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set search.num_samples=128 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="caviar", description="Train many CIFAR-10 models in parallel with "
                                     "Ray Tune and keep the best.")
    commands = parser.add_subparsers(dest="command", required=True)

    sweep = commands.add_parser("sweep", help="run a random-search or ASHA sweep")
    _config_args(sweep)
    sweep.add_argument("--address", help="join an existing Ray cluster ('auto' or HOST:PORT); "
                       "default: start a private local Ray instance")
    sweep.add_argument("--storage", help="where experiment folders go (path or s3:// URI); same as --set storage=...")
    sweep.add_argument("--name", help="experiment folder name; same as --set name=...")
    sweep.add_argument("--resume", metavar="FOLDER", help="finish an interrupted sweep in FOLDER "
                       "(completed trials are not re-run). Resuming loads Ray Tune's saved state, which "
                       "unpickles: caviar refuses state files that differ from the fingerprints its sweep saved "
                       "(caviar-state.json)")
    sweep.add_argument("--budget", metavar="DURATION", help="wall-clock budget such as 30m or 2h: trials, epochs and "
                       "stages are sized to fit it on this machine or cluster (throughput measured at the start), "
                       "and the sweep stops at the deadline with everything saved; same as --set budget=...")
    sweep.add_argument("--plan", action="store_true", help="with --budget: print what the budget buys (its multiple "
                       "of R, one run of the recipe on one slot; the shape, stages, trials and members) from a "
                       "throughput probe on this machine, without training or writing anything")
    sweep.add_argument("--slots", type=int, metavar="N", help="with --plan: plan for a cluster that runs N trials at "
                       "once (default: this machine's slots)")
    sweep.add_argument("--log", action="append", choices=["mlflow", "wandb"], help="also log every trial to "
                       "MLflow or Weights & Biases (repeatable); same as --set log=mlflow. Destinations follow the "
                       "trackers' own settings (MLFLOW_TRACKING_URI, WANDB_PROJECT, WANDB_MODE)")
    sweep.add_argument("--stage", type=int, metavar="N", help="staged experiments: rerun from stage N (earlier "
                       "stages are kept; an interrupted stage N resumes); with an experiment file or --resume")
    sweep.add_argument("--verbose", action="store_true", help="Ray Tune's own console output (a box per trial, "
                       "tables of all trials, a line per checkpoint) instead of caviar's status line and events")

    check = commands.add_parser("check", help="sanity checks before spending compute: initial loss, overfitting "
                                "20 images, gradient check; exit 1 if one fails")
    _config_args(check)
    check.add_argument("--images", type=int, default=20, help="images of the overfitting check (default 20)")
    check.add_argument("--tolerance", type=float, default=0.1, help="allowed |initial loss - ln(classes)| in "
                       "nats (default 0.1)")

    report = commands.add_parser("report", help="HTML report with charts of an experiment folder (finished "
                                 "or running): EXPERIMENT/report.html")
    report.add_argument("experiment", help="experiment folder that `caviar sweep` wrote (a staged one too)")
    report.add_argument("--top", type=int, default=6, help="trials whose curves are drawn (default 6)")

    ens = commands.add_parser("ensemble", help="ensemble the best checkpoints, weight averages and new seeds "
                              "of an experiment, chosen on validation, evaluated on test")
    ens.add_argument("experiment", help="experiment folder (path or s3:// URI) that `caviar sweep` wrote")
    ens.add_argument("--top-k", type=int, default=5, help="best trials taken at their best checkpoint (default 5)")
    ens.add_argument("--seeds", type=int, default=3, help="retrain the best config from this many new seeds "
                     "(default 3; 0 = none); finished re-runs are reused")
    ens.add_argument("--no-average", dest="average", action="store_false",
                     help="leave out the trials' running averages of weights")
    ens.add_argument("--snapshots", type=int, default=0, help="checkpoints of other epochs of the best trial")
    ens.add_argument("--select", choices=["greedy", "uniform"], default="greedy",
                     help="greedy forward selection with replacement on validation NLL (default), or equal weights")
    ens.add_argument("--out", help="output folder (default: EXPERIMENT/ensemble)")
    ens.add_argument("--budget", metavar="DURATION", help="wall-clock budget such as 5m: as many of --seeds re-runs as "
                     "fit, with time kept for evaluating the members")
    ens.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                     help="average each member over the image and its mirror image (default: when the members "
                     "trained with random flips, data.augment)")
    ens.add_argument("--translate", action="store_true",
                     help="also average each view moved one pixel diagonally both ways (for members trained with "
                     "random crops; three times the evaluation)")
    ens.add_argument("--address", help="Ray cluster for the seed re-runs ('auto' or HOST:PORT)")
    ens.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override the experiment's saved config, e.g. --set data.root=/data")

    commands.add_parser("experiments", help="the shipped experiments, one line each: trials, epochs, what they "
                        "cost on a CPU and on one GPU, what they reached in the benchmarks")

    export = commands.add_parser("export", help="a saved ensemble as one TorchScript or ONNX file (pixels in, "
                                 "averaged probabilities out) that runs without caviar")
    export.add_argument("ensemble", help="the folder `caviar ensemble` wrote (default EXPERIMENT/ensemble)")
    export.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript",
                        help="torchscript (torch.jit.load; uint8 or float input) or onnx (onnxruntime and others)")
    export.add_argument("--out", help="file to write (default: ENSEMBLE/ensemble.pt or .onnx); never overwritten")
    export.add_argument("--input", choices=["uint8", "float"], default="uint8", help="onnx: the graph's input "
                        "type, uint8 0..255 (default) or float32 0..1; a TorchScript file takes either")

    predict = commands.add_parser("predict", help="run a saved ensemble or an exported file on image files: the "
                                  "top classes of each, by name, with their probabilities")
    predict.add_argument("model", help="the folder `caviar ensemble` wrote, or a .pt / .onnx file `caviar export` wrote")
    predict.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...) or folders of them")
    predict.add_argument("--out", help="write the rows to this CSV file (never overwritten); default: print them")
    predict.add_argument("--top", type=int, default=3, help="classes per image, most probable first (default 3)")

    config = commands.add_parser("config", help="print the resolved config (defaults < file < --set)")
    _config_args(config)

    cluster = commands.add_parser("cluster", help="Ray cluster files (cluster/*.yaml)")
    cluster_commands = cluster.add_subparsers(dest="cluster_command", required=True)
    cluster_check = cluster_commands.add_parser("check", help="check a cluster file before `ray up`: Ray's schema, "
                                                "typos in provider and node_config, Ray version, placeholders")
    cluster_check.add_argument("file", help="cluster file, e.g. cluster/aws.yaml")
    cluster_check.add_argument("--root", help="folder `ray up` runs from (relative file_mounts); default: here")
    return parser


def _sweep(args: argparse.Namespace) -> int:
    from caviar.results.leaderboard import interrupted
    from caviar.sweeps.console import describe
    from caviar.sweeps.sweeper import sweep

    overrides = list(args.overrides)
    if args.storage:
        overrides.append(f"storage={args.storage}")
    if args.name:
        overrides.append(f"name={args.name}")
    if args.log:
        overrides.append(f"log={','.join(args.log)}")
    if args.budget:
        if args.resume:
            raise CaviarError("--budget plans a new sweep; a resumed sweep finishes the trials its plan drew")
        overrides.append(f"budget={args.budget}")
    if args.resume and args.experiment:
        raise CaviarError("--resume takes the experiment folder's own config; drop the experiment file argument")
    if args.slots is not None and not args.plan:
        raise CaviarError("--slots N states a cluster's size for --plan; add --plan (a sweep counts the slots Ray has)")
    if args.plan:
        if args.resume or args.stage:
            raise CaviarError("--plan previews a new budgeted sweep; it cannot go with --resume or --stage")
        from caviar.sweeps.preview import describe as describe_plan, preview

        print(describe_plan(preview(args.experiment, overrides, slots=args.slots)))
        return 0
    try:
        result = sweep(args.experiment, overrides=overrides, address=args.address, resume=args.resume,
                       stage=args.stage, verbose=args.verbose)
    except KeyboardInterrupt:
        print("\nInterrupted. Completed trials and checkpoints are kept; finish with "
              "`caviar sweep --resume <experiment folder>`.", file=sys.stderr)
        return 130
    print(describe(result))
    if interrupted(result.summary):
        return 130
    if result.best is None:  # scripts and CI must see a sweep that produced nothing
        print("caviar: error: no trial produced a score (every one failed or diverged); see the errors above",
              file=sys.stderr)
        return 1
    return 0


def _config(args: argparse.Namespace) -> int:
    from caviar.config.loading import load_config

    print(load_config(args.experiment, args.overrides).to_yaml(), end="")
    return 0


def _ensemble(args: argparse.Namespace) -> int:
    from caviar.ensembles.ensembler import describe, ensemble

    result = ensemble(args.experiment, top_k=args.top_k, seeds=args.seeds, average=args.average,
                      snapshots=args.snapshots, select=args.select, out=args.out, address=args.address,
                      overrides=args.overrides, budget=args.budget, flip=args.flip,
                      translate=args.translate)
    print(describe(result))
    print(f"Written: {args.out or args.experiment.rstrip('/') + '/ensemble'} (ensemble.json, members.csv, ensemble.png)")
    return 0


def _experiments(args: argparse.Namespace) -> int:
    from caviar.config.catalog import describe

    print(describe())
    return 0


def _export(args: argparse.Namespace) -> int:
    from caviar.ensembles.export import export

    print(f"Exported: {export(args.ensemble, args.format, out=args.out, input_type=args.input)}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from caviar.ensembles.export import check_out
    from caviar.ensembles.predict import predict_files

    out = Path(args.out).expanduser() if args.out else None
    if out is not None:
        check_out(out)  # before any image is decoded
    rows = predict_files(args.model, args.images, top=args.top)
    if out is None:
        print(rows.to_string(index=False, float_format=lambda p: f"{p:.4f}"))
    else:
        rows.to_csv(out, index=False)
        print(f"Predictions: {out} ({len(rows)} image{'s' * (len(rows) != 1)})")
    return 0


def _check(args: argparse.Namespace) -> int:
    from caviar.training.checks import check_experiment, format_results

    results = check_experiment(args.experiment, args.overrides, images=args.images, tolerance=args.tolerance,
                               log=print)
    print(format_results(results))
    return 0 if all(r.passed for r in results) else 1


def _report(args: argparse.Namespace) -> int:
    from caviar.results.report import write_report

    print(f"Report: {write_report(args.experiment, top=args.top)}")
    return 0


def _cluster(args: argparse.Namespace) -> int:
    from caviar.search.cluster_files import check_cluster_file, describe_cluster

    print(f"{args.file}: OK, {describe_cluster(check_cluster_file(args.file, root=args.root))}")
    return 0


COMMANDS = {"sweep": _sweep, "ensemble": _ensemble, "config": _config, "check": _check, "report": _report,
            "cluster": _cluster, "experiments": _experiments, "export": _export, "predict": _predict}


def _format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 - warnings' signature
    # A warning is for the person at the terminal: what happened and what to do, not a source line.
    return f"caviar: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = _format_warning
    try:
        return COMMANDS[args.command](args)
    except CaviarError as error:
        print(f"caviar: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if not _name_too_long(error):
            raise
        # A path the user gave that the file system cannot hold, met wherever it is first used
        # (storage, --out, a folder to read): the path and the fix, not the library's traceback.
        name = error.filename or str(error).split(": ", 1)[-1].strip("'\"")
        print(f"caviar: error: {name}: a name in this path is longer than the file system allows (255 bytes "
              "a folder or file name on most); shorten it", file=sys.stderr)
        return 2


def _name_too_long(error: OSError) -> bool:
    # pyarrow's file system (storage) raises OSError with the errno only in its message
    return error.errno == errno.ENAMETOOLONG or f"[Errno {errno.ENAMETOOLONG}]" in str(error)


if __name__ == "__main__":
    sys.exit(main())
