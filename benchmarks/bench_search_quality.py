"""Search quality on real data: caviar's one-command flows against a hand-picked baseline, each
given the same wall-clock budget.

Each flow is what a user types, run as a subprocess of the CLI:

    caviar sweep EXPERIMENT --budget <B x (1 - share)> --set data.root=... --set storage=... --name FLOW
    caviar ensemble <its folder> --budget <B x share>

(a staged experiment's folder: members from every stage). The baseline is the
issue's hand-picked network and recipe (Adam 1e-3, cosine, batch 128, 3 conv blocks x 64 with
batch norm, ReLU and He init, one hidden layer of 128, dropout 0.2, weight decay 1e-4), trained
with caviar's own Trial on the same train/validation split, `--slots` seeds in parallel (one
process each), for as many epochs as fit in the same budget B: epoch 1 is timed, then the cosine
schedule is set to span floor(time left / epoch time) epochs, and training stops at the deadline
whatever happens. Its seeds are ensembled by the mean of their softmax probabilities. Every
figure is test accuracy; the test set is read only at the end.

    python benchmarks/bench_search_quality.py --budget 30m --workdir benchmarks/.data/sq-30m
    python benchmarks/bench_search_quality.py --data cifar-sample --budget 90s     # a smoke run
    python benchmarks/bench_search_quality.py --dry-run                           # the plan only
    python benchmarks/bench_search_quality.py --tiny                              # what the tests run
    python benchmarks/bench_search_quality.py --runs 1,4,16 --train-subset 800   # at multiples of R (bench_multiples)

Wall time of a run: (flows + 1) x the budget, plus data preparation.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import baselines  # noqa: E402
import common  # noqa: E402

NAME = "search_quality"
REPO = common.REPO
FLOWS = {"default": "experiments/default.yaml", "staged": "experiments/staged.yaml",
         "budget": "experiments/cpu-budget.yaml"}
SAMPLE = REPO.parent / "shared" / "data" / "cifar10-sample"
DATA_CACHE = REPO / "benchmarks" / ".data"
BASELINE = baselines.CONVNET
# staged.yaml is left out of --tiny: its budget plan gives the first of three stages a few seconds
# of a 45-60 s budget, too few to start a trial, so it needs ~2 minutes even on the fixture. The
# budget flow (cpu-budget.yaml) is staged too, so reading a staged folder is still exercised. The
# default flow is left out too (the test suite's time): its sweep is the smoke run test_cli runs.
TINY_FLOWS = "budget"
# airbench is left out of --tiny: its network (64-256-256 channels, batches of 1024) needs minutes
# per epoch on a CPU core; tests/test_benchmarks.py runs its adapter on its own. The convnet floor
# is the textbook baseline's code with another recipe: the test suite runs the textbook one.
TINY_BASELINES = "textbook"
TINY_BASELINE_S = 22.0  # at 15 s the recipe took ~36 one-batch steps on the fixture: test 0.18-0.35, at the edge of learning
TINY_FIXTURE = dict(train_size=400, test_size=200)  # epochs of ~1 s: the budget planner needs 3 in the budget


# ---------------------------------------------------------------- data
def prepare(args: Any, cache: Path) -> tuple[Path, str]:
    """(data.root, a name for it); Fashion-MNIST is converted once into the cache."""
    if args.data_root:
        return Path(args.data_root).resolve(), f"custom ({args.data_root})"
    if args.data == "fashion":
        from caviar.training.fashion_mnist import convert

        return convert(cache / "fashion-mnist", args.idx_dir).resolve(), "fashion-mnist"
    if args.data == "cifar-sample":
        if not SAMPLE.is_dir():
            raise SystemExit(f"{SAMPLE} is absent; use --data fashion, --data fixture or --data-root")
        return SAMPLE.resolve(), "cifar10-sample (200 real CIFAR-10 images)"
    return common.fixture(cache, **TINY_FIXTURE).resolve(), "fixture (caviar.training.fixture, learnable)"


def prepared(args: Any, work: Path) -> tuple[Path, str, int, int]:
    """The data a paired benchmark reads (bench_ab, bench_shape, bench_rungs): (data.root, its name,
    the training images, the validation images); --tiny's fixture goes in `work`, Fashion-MNIST
    is converted once into the benchmarks' cache (or --workdir's)."""
    from caviar.training.data import load_cifar10

    cache = (args.workdir / "data") if args.workdir else DATA_CACHE
    root, name = prepare(args, work / "data" if args.tiny else cache)
    n_train = len(load_cifar10(root, download=False).train_labels)
    return root, name, n_train, args.val_size or default_val_size(n_train)


def add_data_arguments(p: Any) -> None:
    """The options that choose the data `prepare` reads (also bench_ab's)."""
    p.add_argument("--data", choices=["fashion", "cifar-sample", "fixture"], default=None,
                   help="fashion (default): Fashion-MNIST converted once; cifar-sample: 200 real CIFAR-10 images "
                   "(smoke run); fixture: caviar.training.fixture (the default with --tiny)")
    p.add_argument("--data-root", type=Path, help="any folder holding cifar-10-batches-py/ (overrides --data)")
    p.add_argument("--idx-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--val-size", type=int, help="data.val_size (default: 5000 for the full sets, scaled for less)")


def default_val_size(train_images: int) -> int:
    """caviar's 5000 for the full sets; a tenth of a smaller set (at least a quarter, up to 40)."""
    return min(5000, max(train_images // 10, min(40, train_images // 4)))


def seconds_text(seconds: float) -> str:
    return f"{max(1, int(round(seconds)))}s"


# ---------------------------------------------------------------- the flows
def _run(cmd: list[str], log: Path, timeout_s: float, env: dict[str, str]) -> dict[str, Any]:
    """Run `cmd` with its output in `log`; past timeout_s: Ctrl-C (caviar saves what it has), then stop."""
    begin = time.perf_counter()
    with open(log, "w") as out:
        out.write("$ " + shlex.join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        killed = False
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            killed = True
            for sig, wait in ((signal.SIGINT, 90), (signal.SIGTERM, 30), (signal.SIGKILL, 30)):
                try:
                    os.killpg(proc.pid, sig)  # the process group of the command we started
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            rc = proc.wait()
    tail = log.read_text().splitlines()[-15:]
    return {"rc": rc, "wall_s": round(time.perf_counter() - begin, 1), "killed_at_timeout": killed,
            "log": str(log), "log_tail": tail if rc else []}


def passes(config: dict[str, Any], trial_epochs: int, train_images: int) -> float:
    """Trial-epochs in passes over the whole training set: a stage may train on a subset
    (data.train_subset) and an epoch may be part of it (train.epoch_size)."""
    from caviar.training.train import images_per_epoch

    subset = (config.get("data") or {}).get("train_subset")
    n = train_images if subset is None else (round(subset * train_images) if isinstance(subset, float) else subset)
    return trial_epochs * images_per_epoch(int(n), (config.get("train") or {}).get("epoch_size")) / train_images


def read_sweep(folder: Path, train_images: int) -> dict[str, Any]:
    """Trial counts and trial-epochs from summary.json (each stage's, for a staged experiment)."""
    plan = folder / "stages.json"
    if plan.exists():
        dirs = [folder / s["folder"] for s in json.loads(plan.read_text()).get("stages", [])]
    else:
        dirs = [folder]
    counts: Counter = Counter()
    stages, last = [], None
    for d in dirs:
        if not (d / "summary.json").exists():
            continue
        summary = json.loads((d / "summary.json").read_text())
        counts.update(summary.get("counts", {}))
        config = summary.get("config") or {}
        search = config.get("search", {})
        stages.append({"folder": d.name, "trials": summary.get("trials"), "counts": summary.get("counts"),
                       "trial_epochs": summary.get("total_trial_epochs"),
                       "passes": round(passes(config, summary.get("total_trial_epochs") or 0, train_images), 2),
                       "num_samples": search.get("num_samples"),
                       "max_epochs": search.get("max_epochs"), "scheduler": search.get("scheduler"),
                       "wall_time_s": summary.get("wall_time_s"),
                       "best_val_acc": (summary.get("best_trial") or {}).get("best_val_acc")}
                      | {k: summary[k] for k in ("budget", "plan") if k in summary})
        last = d
    return {"folder": str(folder), "last_sweep": str(last) if last else None, "stages": stages,
            "counts": dict(counts), "trials": sum(n for k, n in counts.items() if k != "not-started"),
            "trial_epochs": sum(s["trial_epochs"] or 0 for s in stages),
            "passes": round(sum(s["passes"] for s in stages), 2),
            "best_val_acc": stages[-1]["best_val_acc"] if stages else None}


def read_ensemble(folder: Path) -> dict[str, Any]:
    doc = json.loads((folder / "ensemble" / "ensemble.json").read_text())
    best = doc.get("best_member") or {}
    runs = [*folder.glob("seeds-*"), *folder.glob("*/seeds-*")]  # beside the best trial's sweep (a stage's)
    reruns = [row for d in runs if d.is_dir() for row in common.trial_reports(d)]
    return {"ensemble_acc": doc.get("accuracy"), "best_single_acc": best.get("accuracy"),
            "best_member": best.get("name"), "gain": doc.get("gain_over_best_member"),
            "members": sum(1 for m in doc.get("members", []) if m.get("weight", 0) > 0),
            "seed_rerun_epochs": len(reruns), "mirror_averaged": doc.get("flip") is True,
            # every candidate, chosen or not: what the ensemble could have gained from each kind
            "candidates": [{k: m.get(k) for k in ("name", "kind", "weight", "epoch", "val_acc", "test_acc")}
                           for m in doc.get("members", [])],
            "by_kind": doc.get("by_kind")}


def shared_errors(folder: Path, root: Path) -> dict[str, Any]:
    """How much of its members' test errors an ensemble's members share (the members it saved,
    mirror-averaged as it evaluates them). An image every member gets wrong stays wrong whatever the
    weights, so the errors the members do not share bound what the ensemble can gain over them."""
    from caviar.ensembles.ensembler import Ensemble
    from caviar.training.data import load_test_set

    ens = Ensemble.load(folder / "ensemble")
    images, labels = load_test_set(str(root), download=False)
    wrong = ens.member_probs(images).argmax(-1) != labels[None]
    member, shared = float(wrong.mean()), float(wrong.all(0).mean())
    return {"member_error_mean": round(member, 4), "error_every_member_makes": round(shared, 4),
            "shared_error_fraction": round(shared / member, 3) if member else None}


def run_flow(flow: str, experiment: str, root: Path, storage: Path, val_size: int, train_images: int, sweep_s: float,
             ens_s: float, env: dict[str, str], dry_run: bool, address: str | None = None,
             overrides: Sequence[str] = ()) -> dict[str, Any]:
    joined = ["--address", address] if address else []
    settings = [arg for text in overrides for arg in ("--set", text)]
    sweep_cmd = [sys.executable, "-m", "caviar", "sweep", experiment, "--budget", seconds_text(sweep_s),
                 "--set", f"data.root={root}", "--set", f"storage={storage}", "--name", flow,
                 "--set", f"data.val_size={val_size}", "--set", "data.download=false", *settings, *joined]
    target = storage / flow
    ens_cmd = [sys.executable, "-m", "caviar", "ensemble", "<its folder>", "--budget", seconds_text(ens_s), *joined]
    record: dict[str, Any] = {"flow": flow, "experiment": experiment, "sweep_budget_s": sweep_s,
                              "ensemble_budget_s": ens_s, "sweep_command": shlex.join(sweep_cmd[2:])}
    if dry_run:
        return record | {"ensemble_command": shlex.join(ens_cmd[2:])}
    print(f"[{time.strftime('%H:%M:%S')}] {flow}: caviar sweep {experiment} --budget {seconds_text(sweep_s)}",
          flush=True)
    sweep = _run(sweep_cmd, storage / f"{flow}-sweep.log", 1.25 * sweep_s + 120, env)
    record |= {"sweep_rc": sweep["rc"], "sweep_wall_s": sweep["wall_s"], "sweep_killed": sweep["killed_at_timeout"],
               "sweep_log": sweep["log"]} | read_sweep(target, train_images)
    if sweep["log_tail"]:
        record["sweep_log_tail"] = sweep["log_tail"]
    if not record["last_sweep"]:
        print(f"  {flow}: no finished sweep (exit {sweep['rc']}); see {sweep['log']}", flush=True)
        return record | {"error": "sweep left no summary.json"}
    ens_cmd[4] = str(target)  # a staged experiment's folder: members from every stage
    record["ensemble_command"] = shlex.join(ens_cmd[2:])
    print(f"[{time.strftime('%H:%M:%S')}] {flow}: caviar ensemble --budget {seconds_text(ens_s)}", flush=True)
    ens = _run(ens_cmd, storage / f"{flow}-ensemble.log", 1.25 * ens_s + 120, env)
    record |= {"ensemble_rc": ens["rc"], "ensemble_wall_s": ens["wall_s"], "ensemble_killed": ens["killed_at_timeout"],
               "ensemble_log": ens["log"]}
    try:
        record |= read_ensemble(target)
    except (OSError, ValueError) as e:
        record |= {"error": f"no ensemble.json ({e})", "ensemble_log_tail": ens["log_tail"]}
    else:
        record |= shared_errors(target, root)
    record["wall_s"] = round(record["sweep_wall_s"] + record["ensemble_wall_s"], 1)
    return record


# ---------------------------------------------------------------- the baselines (baselines.py)
def estimate_epoch_s(root: Path, val_size: int, threads: int) -> float:
    """Seconds per baseline epoch from timing a few batches here (for --dry-run; one process, so
    an underestimate when the seeds share the cores)."""
    import torch

    from caviar.config.loading import load_config
    from caviar.training.data import prepare_data
    from caviar.training.train import evaluate, train_one_epoch
    from caviar.training.trial import Trial, TrialSettings, data_tensors

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        config = load_config(str(REPO / FLOWS["default"]), [f"data.root={root}", f"data.val_size={val_size}",
                             "data.download=false", "average.method=none"])
        data = prepare_data(root, val_size=val_size, download=False)
        trial = Trial(BASELINE | {"seed": 0}, TrialSettings.from_config(config, data))
        train_x, train_y, val_x, val_y = data_tensors(data, trial.device)
        s, n = trial.settings, min(len(train_y), 1024)
        run = lambda: train_one_epoch(trial.model, trial.optimizer, train_x[:n], train_y[:n],  # noqa: E731
                                      batch_size=BASELINE["batch_size"], generator=trial.generator,
                                      augment=s.augment, amp=s.amp, channels_last=s.channels_last)
        run()  # warm-up
        t = time.perf_counter()
        run()
        train_s = (time.perf_counter() - t) / n
        m = min(len(val_y), 512)
        t = time.perf_counter()
        evaluate(trial.model, val_x[:m], val_y[:m], batch_size=s.eval_batch_size, amp=s.amp,
                 channels_last=s.channels_last)
        return train_s * len(train_y) + (time.perf_counter() - t) / max(1, m) * len(val_y)
    finally:
        torch.set_num_threads(saved)


def flow_outline(experiment: str) -> str:
    """The experiment's own sizes, which the budget planner scales at the start of the sweep."""
    from caviar.config.loading import load_config

    config = load_config(str(REPO / experiment), ["data.download=false"])
    if config.stages:
        return "stages " + " -> ".join(f"{st.num_samples} x {st.epochs} ep" for st in config.stages)
    return f"{config.search.scheduler}, {config.search.num_samples} trials x up to {config.search.max_epochs} epochs"


# ---------------------------------------------------------------- main
MARGIN = 0.005  # the goal: a flow beats the best single recipe by half a point


def goals_met(flows: list[dict[str, Any]], bases: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """Each flow's ensemble against the convnet floor, and against the best of the single recipes a
    knowledgeable user would run (textbook, airbench) + MARGIN."""
    goals = {}
    recipes = {n: b["ensemble_acc"] for n, b in bases.items() if n != "convnet" and b.get("ensemble_acc") is not None}
    for r in flows:
        acc = r.get("ensemble_acc") or 0
        if bases.get("convnet", {}).get("ensemble_acc") is not None:
            goals[f"{r['flow']}: ensemble beats the convnet baseline"] = acc > bases["convnet"]["ensemble_acc"]
        if recipes:
            best = max(recipes, key=recipes.get)
            goals[f"{r['flow']}: ensemble >= the best single recipe ({best}) + {MARGIN:.1%}"] = \
                acc >= recipes[best] + MARGIN
    return goals


def _rows(flows: list[dict[str, Any]], bases: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    named = [b | {"flow": f"{name} ({b.get('slots')} seeds)"} for name, b in bases.items()]
    for r in flows + named:
        acc = lambda k: f"{r[k]:.4f}" if isinstance(r.get(k), float) else None  # noqa: E731
        rows.append({"flow": r["flow"], "best single": acc("best_single_acc"), "ensemble": acc("ensemble_acc"),
                     "gain": f"{r['gain']:+.4f}" if isinstance(r.get("gain"), float) else None,
                     "trials": r.get("trials"), "trial-epochs": r.get("trial_epochs"), "passes": r.get("passes"),
                     "re-run epochs": r.get("seed_rerun_epochs"),
                     "sweep s": r.get("sweep_wall_s"), "ensemble s": r.get("ensemble_wall_s"),
                     "total s": r.get("wall_s"),
                     "note": r.get("error")})
    return rows


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    given = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--runs" or a.startswith("--runs=") for a in given):
        import bench_multiples  # imported here: it builds on this module

        return bench_multiples.main(given)
    p = common.parser(NAME, __doc__.split("\n")[0])
    p.add_argument("--runs", help="multiples of the recipe unit R, e.g. 1,4,16: the flow against the recipe at each "
                   "(benchmarks/bench_multiples.py, which takes the other options; see its --help)")
    p.add_argument("--budget", default=None, help="wall-clock budget per flow and for the baseline: 30m, 1h, 90s "
                   "(default 30m; 45s with --tiny)")
    p.add_argument("--ensemble-share", type=float, default=0.15, help="share of the budget for `caviar ensemble`")
    p.add_argument("--baselines", default=None,
                   help=f"comma-separated, of {', '.join(baselines.NAMES)} (default: all; with --tiny: "
                   f"{TINY_BASELINES}); each trained the whole budget, seeds in parallel")
    p.add_argument("--no-baseline", dest="baselines", action="store_const", const="none",
                   help="leave out every baseline (when an earlier run at the same budget measured them)")
    p.add_argument("--flows", default=None, help=f"comma-separated, of {', '.join(FLOWS)} (default: all; with "
                   f"--tiny: {TINY_FLOWS}); none: the baseline only")
    add_data_arguments(p)
    p.add_argument("--address", default=None,
                   help="run the flows' commands on this Ray cluster (HOST:PORT) instead of a new Ray per command")
    p.add_argument("--slots", type=int, default=None, help="baseline seeds trained in parallel (default: cores)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to every flow's `caviar sweep` (repeatable), e.g. stages.1.from_top=4")
    p.add_argument("--baseline-set", dest="baseline_hparams", action="append", default=[], metavar="NAME=VALUE",
                   help="a hyperparameter set on top of the convnet and textbook recipes (repeatable; YAML "
                   "values), e.g. label_smoothing=0.1: an A/B of a trainer option at equal time")
    p.add_argument("--tag", help="results go to benchmarks/results/search_quality-TAG.json")
    p.add_argument("--dry-run", action="store_true", help="print the plan (commands, budgets) without training")
    args = p.parse_args(argv)
    from caviar.config import catalog
    from caviar.config.durations import parse_duration

    budget_s = parse_duration(args.budget or ("45s" if args.tiny else "30m"))
    common.tag_out(args, NAME)
    args.data = args.data or ("fixture" if args.tiny else "fashion")
    args.flows = args.flows or (TINY_FLOWS if args.tiny else ",".join(FLOWS))
    flows = [f.strip() for f in args.flows.split(",") if f.strip() and f.strip() != "none"]
    unknown = [f for f in flows if f not in FLOWS]
    if unknown:
        raise SystemExit(f"--flows: unknown {unknown}; expected some of {list(FLOWS)}")
    args.baselines = args.baselines or (TINY_BASELINES if args.tiny else ",".join(baselines.NAMES))
    chosen = [b.strip() for b in args.baselines.split(",") if b.strip() and b.strip() != "none"]
    unknown = [b for b in chosen if b not in baselines.NAMES]
    if unknown:
        raise SystemExit(f"--baselines: unknown {unknown}; expected some of {list(baselines.NAMES)}")
    extra = {}
    for text in args.baseline_hparams:
        name, sep, value = text.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"--baseline-set {text!r}: expected NAME=VALUE, e.g. label_smoothing=0.1")
        extra[name.strip()] = yaml.safe_load(value)
    if extra and "airbench" in chosen:
        raise SystemExit("--baseline-set applies to the convnet and textbook baselines; leave airbench out of "
                         "--baselines for that run")
    # the textbook baseline trains the first flow's experiment (cpu-budget.yaml without --flows)
    textbook_experiment = FLOWS[flows[0]] if flows else FLOWS["budget"]
    missing = [FLOWS[f] for f in flows if not (REPO / FLOWS[f]).exists()]
    if missing and not args.dry_run:
        raise SystemExit(f"experiment files missing: {missing}")
    if not 0 < args.ensemble_share < 1:
        raise SystemExit("--ensemble-share must be in (0, 1)")
    info = common.machine()
    cores = info["nproc"] or 1
    slots = args.slots or max(1, min(cores, 2) if args.tiny else cores)
    threads = max(1, cores // slots)
    ens_s = budget_s * args.ensemble_share
    sweep_s = budget_s - ens_s
    # --tiny: the fixture needs seconds, not the flows' 45 s (mostly Ray start-up and the planner's probe)
    baseline_s = min(budget_s, TINY_BASELINE_S) if args.tiny else budget_s

    from caviar.training.data import load_cifar10

    cache = (args.workdir / "data") if args.workdir else DATA_CACHE
    with common.workdir(args.workdir) as work:
        root, data_name = prepare(args, cache if not args.tiny else work / "data")
        full = load_cifar10(root, download=False)
        n_train, n_test = len(full.train_labels), len(full.test_labels)
        del full
        val_size = args.val_size or default_val_size(n_train)
        storage = (work / f"runs-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
        storage.mkdir(parents=True, exist_ok=True)
        settings = {"budget_s": budget_s, "sweep_budget_s": sweep_s, "ensemble_budget_s": ens_s,
                    "baseline_budget_s": baseline_s, "ensemble_share": args.ensemble_share,
                    "flows": {f: FLOWS[f] for f in flows}, "data": data_name,
                    # what each experiment file asked for (caviar experiments marks other versions' figures stale)
                    "experiment_fingerprint": {f: catalog.fingerprint(REPO / FLOWS[f]) for f in flows},
                    "data_root": str(root), "train_images": n_train - val_size, "val_size": val_size,
                    "test_images": n_test, "baselines": chosen, "convnet": BASELINE,
                    "textbook_experiment": textbook_experiment,
                    "baseline_hparams": extra, "slots": slots, "threads_per_seed": threads,
                    "storage": str(storage), "tiny": args.tiny, "overrides": args.overrides}
        print(f"Data: {data_name} at {root}: {n_train - val_size} train / {val_size} validation / {n_test} test; "
              f"budget {seconds_text(budget_s)} per flow ({seconds_text(sweep_s)} sweep + {seconds_text(ens_s)} "
              f"ensemble), {seconds_text(baseline_s) + ' for each of ' + ', '.join(chosen) if chosen else 'no baseline'}; "
              f"about {seconds_text(budget_s * len(flows) + baseline_s * len(chosen))} in all", flush=True)
        ray_tmp = tempfile.mkdtemp(prefix="cvsq-", dir="/tmp")  # short: Ray's socket paths < 107 bytes
        env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        try:
            results = [run_flow(f, FLOWS[f], root, storage, val_size, n_train - val_size, sweep_s, ens_s, env,
                                args.dry_run, args.address, args.overrides) for f in flows]
            if args.dry_run:
                for r in results:
                    outline = flow_outline(r["experiment"]) if (REPO / r["experiment"]).exists() else "file missing"
                    print(f"\n{r['flow']} ({outline}; the budget planner sizes it):\n  {r['sweep_command']}\n"
                          f"  {r['ensemble_command']}")
                epoch_s = estimate_epoch_s(root, val_size, threads)
                print(f"\nbaseline: {slots} seeds in parallel x {threads} thread(s), {BASELINE}\n"
                      f"  epoch ~{epoch_s:.1f} s "
                      f"(timed here, alone): ~{int((budget_s - 10) / epoch_s)} epochs; in the run epoch 1 is timed, "
                      f"then cosine over floor(time left / epoch time) epochs, stopped at {seconds_text(budget_s)}")
                return None
            bases = {name: baselines.run_baseline(name, root, val_size, baseline_s, slots, threads,
                                                  textbook_experiment, extra) for name in chosen}
        finally:
            import shutil

            shutil.rmtree(ray_tmp, ignore_errors=True)
    rows = _rows(results, bases)
    columns = list(rows[0])
    title = (f"Search quality: test accuracy on {data_name}, {seconds_text(budget_s)} per flow "
             f"({cores} cores{', ' + info['gpu'] if info.get('gpu') else ''})")
    print("\n" + common.markdown(rows, columns, title))
    print(f"\nbest single: the member chosen on validation (ensemble.json's best_member; the baseline's best seed); "
          f"passes: trial-epochs in passes over the {n_train - val_size} training images; re-run epochs: the "
          "ensemble's seed re-runs; seconds are wall time.")
    for r in results:
        for stage in r.get("stages", []):
            counts = ", ".join(f"{n} {k}" for k, n in (stage["counts"] or {}).items() if n)
            print(f"  {r['flow']}/{stage['folder']}: {stage['trials']} trials ({counts}), {stage['trial_epochs']} "
                  f"trial-epochs = {stage['passes']} passes over the training set, max_epochs {stage['max_epochs']}")
        if r.get("shared_error_fraction") is not None:
            print(f"  {r['flow']} ensemble: {r['members']} members, test error {r['member_error_mean']:.2%} each on "
                  f"average, {r['error_every_member_makes']:.2%} made by every one of them "
                  f"({r['shared_error_fraction']:.0%} of a member's errors: no weighting can fix those)")
    for name, base in bases.items():
        for seed in base.get("seeds", []):
            print(f"  {name} seed {seed['seed']}: test {seed['test_acc_views']:.4f} ({base['views']}; one view "
                  f"{seed['test_acc']:.4f}), {seed['epochs']} epochs = {seed['passes']} passes")
    goals = goals_met(results, bases)
    return common.write_json(args.out, NAME, common.command_line(argv, f"bench_{NAME}.py"), settings,
                             {"flows": {r["flow"]: r for r in results}, "baselines": bases, "rows": rows},
                             goals, info)


if __name__ == "__main__":
    main()
