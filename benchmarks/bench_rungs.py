"""Do ASHA's rungs rank configs as full-length runs do? Rank agreement (Spearman) between each rung's
scores and the full-length annealed results, for today's schedule and for rungs that anneal
(search.anneal: rung, caviar.training.rungs), continued from the rung's checkpoint or restarted.

For each config (the experiment's search points, then draws from its space with a fixed seed, so
Adam and SGD points are among them), on one core each, two at a time:

- `full`: the whole schedule, max_epochs epochs of one cosine (what a rung sees today: the scores
  at its first epochs, mid-schedule, at a high LR); its last epoch is the full-length result;
- `continue`: the LR annealed to zero at each rung (1, 3, 9 ...), a warm restart after each, to
  max_epochs: the rung scores of search.anneal: rung, and what a trial promoted through every rung
  ends at;
- `restart`: for each rung after the first, a fresh run annealed over that rung's epochs (what a
  promotion that restarts from scratch would see; rung 1 is `continue`'s first segment).

Epochs, not seconds, so a busy machine slows it without changing its figures. The unit is small (a
class-balanced subset of Fashion-MNIST; the ladder of the budget flow's search stage: max_epochs 27
of a quarter pass each, eta 3): how each rung ranks is the question at any size.

    python benchmarks/bench_rungs.py --configs 16 --train-subset 4000 --val-size 1000
    python benchmarks/bench_rungs.py --tiny      # seconds on the fixture: what the test suite runs
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import baselines  # noqa: E402
import bench_search_quality  # noqa: E402
import common  # noqa: E402

NAME = "rungs"
EXPERIMENT = "experiments/cpu-budget.yaml"


def draw_configs(experiment: str, count: int, seed: int) -> list[dict[str, Any]]:
    """The experiment's search points, completed from the space, then draws from it: `count` in all."""
    from caviar.config.loading import load_config
    from caviar.search.space import sample

    config = load_config(str(baselines.REPO / experiment), ["data.download=false"])
    drawn = sample(config.space, count + len(config.search.points), seed=seed)
    points = [drawn[-1 - i] | dict(point) for i, point in enumerate(config.search.points)]
    return [config | {"seed": 100 + i} for i, config in enumerate((points + drawn)[:count])]


def _config(root: str, val_size: int, experiment: str, overrides: list[str], max_epochs: int) -> Any:
    from caviar.config.loading import load_config

    # one search-stage ladder: ASHA's rungs at grace x eta**k, the weight average off (rungs read the model)
    return load_config(str(baselines.REPO / experiment), [
        f"data.root={root}", f"data.val_size={val_size}", "data.download=false", "resources.cpus_per_trial=1",
        "stages=[]", "search.scheduler=asha", "search.fidelity=epochs", f"search.max_epochs={max_epochs}",
        "search.grace_period=1", "search.reduction_factor=3", "average.method=none", *overrides])


def run_config(root: str, val_size: int, experiment: str, overrides: list[str], max_epochs: int,
               hparams: dict[str, Any]) -> dict[str, Any]:
    """The three schedules of one config; validation accuracy after every epoch of each."""
    from dataclasses import replace

    import torch

    from caviar.training.data import data_for
    from caviar.training.settings import annealed_rungs
    from caviar.training.trial import Trial, TrialSettings, data_tensors

    torch.set_num_threads(1)
    began = time.time()
    config = _config(root, val_size, experiment, overrides, max_epochs)
    data = data_for(config)
    tensors = data_tensors(data, torch.device("cpu"))
    base = TrialSettings.from_config(config, data)
    rungs = annealed_rungs(config.model_copy(update={"search": config.search.model_copy(update={"anneal": "rung"})}))

    def curve(settings: TrialSettings) -> list[float]:
        trial = Trial(hparams, settings, torch.device("cpu"))
        accs = []
        while not trial.finished:
            metrics = trial.run_epoch(*tensors)
            accs.append(float(metrics["val_acc"]))
            if metrics["diverged"]:
                break
        return accs + [accs[-1] if accs else 0.0] * (settings.max_epochs - len(accs))  # diverged: stays at 0

    full = curve(replace(base, anneal_at=()))
    continued = curve(replace(base, anneal_at=rungs))
    restarted = {str(m): curve(replace(base, anneal_at=()).with_epochs(m))[-1] for m in rungs[1:]}
    return {"hparams": hparams, "rungs": list(rungs), "full": full, "continue": continued, "restart": restarted,
            "wall_s": round(time.time() - began, 1)}


def spearman(a: list[float], b: list[float]) -> float:
    from scipy import stats

    return float(stats.spearmanr(a, b).statistic)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per rung: Spearman of each way's rung scores against the full-length results."""
    rungs = runs[0]["rungs"]
    final = [r["full"][-1] for r in runs]
    out: dict[str, Any] = {"configs": len(runs), "by_rung": {}}
    for m in rungs:
        today = [r["full"][m - 1] for r in runs]
        annealed = [r["continue"][m - 1] for r in runs]
        row = {"today": spearman(today, final), "continue": spearman(annealed, final)}
        if str(m) in runs[0]["restart"]:
            row["restart"] = spearman([r["restart"][str(m)] for r in runs], final)
        out["by_rung"][str(m)] = row
    chained = [r["continue"][-1] for r in runs]
    out["continued_to_the_end"] = {"spearman_with_full": spearman(chained, final),
                                   "mean_minus_full": statistics.fmean(c - f for c, f in zip(chained, final)),
                                   "best_config_full": max(final), "best_config_continued": max(chained)}
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = common.parser(NAME, __doc__.split("\n")[0])
    p.add_argument("--configs", type=int, default=None, help="configs to rank (default 16; 4 with --tiny)")
    p.add_argument("--max-epochs", type=int, default=None, help="the full length (default 27, the budget flow's "
                   "search stage; 4 with --tiny)")
    p.add_argument("--train-subset", type=int, default=None, help="data.train_subset (default 4000)")
    p.add_argument("--seed", type=int, default=1, help="seed of the configs drawn from the space")
    p.add_argument("--experiment", default=EXPERIMENT, help="whose space and search points are drawn")
    bench_search_quality.add_data_arguments(p)
    p.add_argument("--tag", help="results go to benchmarks/results/rungs-TAG.json")
    args = p.parse_args(argv)
    count = args.configs or (4 if args.tiny else 16)
    max_epochs = args.max_epochs or (4 if args.tiny else 27)
    if count < 3 or max_epochs < 2:
        raise SystemExit("--configs must be at least 3 and --max-epochs at least 2 (a rank needs rivals and a rung)")
    common.tag_out(args, NAME)
    args.data = args.data or ("fixture" if args.tiny else "fashion")
    subset = args.train_subset or (None if args.tiny else 4000)
    overrides = [f"data.train_subset={subset}"] if subset else []
    overrides += ["model.width=0.125", "average.bn_images=200"] if args.tiny else []
    info = common.machine()
    configs = draw_configs(args.experiment, count, args.seed)
    with common.workdir(args.workdir) as work:
        root, data_name, _, val_size = bench_search_quality.prepared(args, work)
        print(f"Data: {data_name}, train_subset {subset}, {val_size} validation; {count} configs x "
              f"{max_epochs} epochs, three schedules each, two at a time", flush=True)
        with mp.get_context("spawn").Pool(2) as pool:
            jobs = [pool.apply_async(run_config, (str(root), val_size, args.experiment, overrides, max_epochs, c))
                    for c in configs]
            runs = []
            for i, job in enumerate(jobs):
                runs.append(job.get())
                print(f"[{time.strftime('%H:%M:%S')}] config {i + 1}/{count} ({runs[-1]['hparams']['optimizer']}): "
                      f"full {runs[-1]['full'][-1]:.4f}, continued {runs[-1]['continue'][-1]:.4f}", flush=True)
    summary = summarise(runs)
    rows = [{"rung (epochs)": m} | {k: f"{v:+.2f}" for k, v in row.items()} for m, row in summary["by_rung"].items()]
    print("\n" + common.markdown(rows, ["rung (epochs)", "today", "continue", "restart"],
                                 f"Spearman of rung scores with the full-length results, {count} configs, {data_name}"))
    settings = {"configs": count, "max_epochs": max_epochs, "experiment": args.experiment, "data": data_name,
                "data_root": str(root), "train_subset": subset, "val_size": val_size, "seed": args.seed,
                "overrides": overrides, "threads_per_run": 1}
    return common.write_json(args.out, NAME, common.command_line(argv, f"bench_{NAME}.py"), settings,
                             {"runs": runs, "summary": summary}, {"summary": summary}, info)


if __name__ == "__main__":
    main()
