"""Search efficiency: ASHA vs random search, best val_acc reached vs trial-epochs spent.

Both sweeps are ``caviar.sweep`` on the same space with the same seed, so they draw the same N
configs (same trial seeds); random search runs every trial for max_epochs, ASHA stops the bottom
trials at its rungs. Every epoch report of every trial is put in the order it happened (Ray's
timestamp, then the trial's own clock); the x axis counts trial-epochs spent so far, the y axis
is the best val_acc seen so far. The fixture has more pixel noise than the default one, so the
best configs do not all reach 100%.

Goal: ASHA reaches random search's best (within --tolerance) with <= 1/3 of the trial-epochs
random search spends. Which trial comes first matters (ASHA promotes early trials easily), so the
pair of sweeps is repeated for several search seeds (``--seeds``) and the goal is read off the
median over seeds (each seed's figure is reported too). The default budget is the default
experiment's 64 trials; with fewer (``--trials 24``) the first trials to reach a rung are promoted
with few rivals, and ASHA needs a larger share of random search's epochs.

    python benchmarks/bench_search_efficiency.py          # writes results/search_efficiency.{json,png}
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "search_efficiency"


def search_space(net: dict[str, Any]) -> dict[str, Any]:
    """A space with bad regions (lr over four decades, plain SGD, no batch norm) as in real sweeps."""
    return {
        **net,
        "lr": {"low": 1e-4, "high": 1.0, "scale": "log"},
        "weight_decay": {"low": 1e-5, "high": 1e-2, "scale": "log"},
        "dropout": {"low": 0.0, "high": 0.5, "scale": "linear"},
        "momentum": 0.9,
        "batch_size": [64, 128, 256],
        "optimizer": ["sgd", "momentum", "adam"],
        "lr_schedule": ["constant", "cosine"],
        "init": "he",
        "batch_norm": [True, False],
        "activation": "relu",
        "grad_clip": 0,
    }


def curve(experiment: Path) -> list[tuple[int, float]]:
    """[(trial-epochs spent, best val_acc so far)] in the order the epochs were reported."""
    reports = common.trial_reports(experiment)
    reports.sort(key=lambda r: (r.get("timestamp", 0), r.get("time_total_s", 0.0)))
    points, best = [], 0.0
    for spent, report in enumerate(reports, start=1):
        best = max(best, float(report.get("val_acc") or 0.0))
        points.append((spent, best))
    return points


def best_at(points: list[tuple[int, float]], budget: float) -> float:
    """Best val_acc reached within `budget` trial-epochs."""
    reached = [acc for spent, acc in points if spent <= budget]
    return reached[-1] if reached else float("nan")


def first_reaching(points: list[tuple[int, float]], target: float) -> int | None:
    return next((spent for spent, acc in points if acc >= target), None)


def plot(curves: dict[int, dict[str, list[tuple[int, float]]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, (seed, runs) in enumerate(curves.items()):
        for name, style in (("random", "-"), ("asha", "--")):
            points = runs[name]
            label = f"{'random search' if name == 'random' else 'ASHA'}, search seed {seed}"
            ax.step([0] + [s for s, _ in points], [0.0] + [a for _, a in points], style, where="post",
                    color=f"C{i}", label=label)
    ax.set_xlabel("trial-epochs spent")
    ax.set_ylabel("best val_acc so far")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(rand: list[tuple[int, float]], asha: list[tuple[int, float]], tolerance: float) -> dict[str, Any]:
    random_best = rand[-1][1] if rand else float("nan")
    reach = first_reaching(asha, random_best - tolerance)
    return {"random_best": random_best, "asha_best": asha[-1][1] if asha else float("nan"),
            "random_epochs": len(rand), "asha_epochs": len(asha), "asha_epochs_to_reach": reach,
            "random_epochs_to_reach": first_reaching(rand, random_best - tolerance),
            "fraction": reach / len(rand) if reach and rand else float("nan")}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = common.parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=64,
                   help="the same trial budget for both (default: the default experiment's search.num_samples)")
    p.add_argument("--max-epochs", type=int, default=9)
    p.add_argument("--grace-period", type=int, default=1)
    p.add_argument("--reduction-factor", type=int, default=3)
    p.add_argument("--train-size", type=int, default=1500)
    p.add_argument("--val-size", type=int, default=500)
    p.add_argument("--noise", type=float, default=0.6, help="fixture pixel noise (0.25 is the default fixture)")
    p.add_argument("--tolerance", type=float, default=0.005, help="'reached' means best >= random's best - this")
    p.add_argument("--seeds", default="0,1,2", help="search seeds; each gives a pair of sweeps (same configs in both)")
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default: --out with .png)")
    args = p.parse_args(argv)
    if args.tiny:
        args.trials, args.max_epochs, args.train_size, args.val_size = 3, 2, 128, 64
        args.reduction_factor, args.seeds = 2, "0"
    command = common.command_line(argv, "bench_search_efficiency.py")
    info = common.machine()
    net = dict(conv_layers=2, conv_width=16, fc_layers=1, fc_width=32)
    seeds = [int(x) for x in args.seeds.split(",")]
    import caviar

    runs: dict[int, dict[str, Any]] = {}
    with common.workdir(args.workdir) as work, common.ray_cluster():
        root = common.fixture(work, train_size=args.train_size + args.val_size, noise=args.noise)
        for seed in seeds:
            for scheduler in ("random", "asha"):
                config = common.caviar_config(
                    root, work / "results", f"search-{scheduler}-{seed}", space=search_space(net),
                    num_samples=args.trials, max_epochs=args.max_epochs, val_size=args.val_size, scheduler=scheduler,
                    seed=seed, search={"grace_period": args.grace_period, "reduction_factor": args.reduction_factor})
                with common.Timer() as t:
                    result = caviar.sweep(config)
                runs.setdefault(seed, {})[scheduler] = {
                    "points": curve(Path(result.path)), "wall_s": t.seconds, "counts": result.summary["counts"],
                    "seeds": sorted(int(s) for s in result.trials["seed"])}
                print(f"  seed {seed} {scheduler}: {len(runs[seed][scheduler]['points'])} trial-epochs, "
                      f"{t.seconds:.0f} s", flush=True)

    per_seed = []
    for seed in seeds:
        row = {"search_seed": seed} | compare(runs[seed]["random"]["points"], runs[seed]["asha"]["points"],
                                              args.tolerance)
        row["same_configs"] = runs[seed]["random"]["seeds"] == runs[seed]["asha"]["seeds"]
        per_seed.append(row)
    print()
    print(common.table(per_seed, ["search_seed", "random_best", "asha_best", "random_epochs", "asha_epochs",
                                  "random_epochs_to_reach", "asha_epochs_to_reach", "fraction"],
                       title=f"Best val_acc vs trial-epochs: {args.trials} trials x {args.max_epochs} epochs, "
                             f"ASHA eta={args.reduction_factor}; 'reach' = random search's best - {args.tolerance:g}; "
                             f"fraction = ASHA's epochs to reach it / random search's epochs"))
    budget_rows = []
    for seed in seeds:
        rand, asha = runs[seed]["random"]["points"], runs[seed]["asha"]["points"]
        for label, f in (("1/9", 1 / 9), ("1/6", 1 / 6), ("1/3", 1 / 3), ("1/2", 1 / 2), ("all", 1.0)):
            budget_rows.append({"search_seed": seed, "budget": f"{label} of random's", "trial_epochs": round(f * len(rand)),
                                "random_best": best_at(rand, f * len(rand)), "asha_best": best_at(asha, f * len(rand))})
    print()
    print(common.table(budget_rows, ["search_seed", "budget", "trial_epochs", "random_best", "asha_best"],
                       title="Best val_acc within a budget of trial-epochs"))
    plot_path = args.plot or Path(args.out).with_suffix(".png")
    plot({seed: {k: v["points"] for k, v in runs[seed].items()} for seed in seeds}, plot_path,
         f"{args.trials} trials, max {args.max_epochs} epochs, ASHA eta={args.reduction_factor}")
    print(f"plot: {plot_path}")
    fractions = [r["fraction"] if r["fraction"] == r["fraction"] else float("inf") for r in per_seed]
    median_fraction = common.median(fractions)
    print(f"median fraction over {len(seeds)} search seed(s): {median_fraction:.2f}")
    goals = {"ASHA reaches random search's best with <= 1/3 of the trial-epochs (median over search seeds)":
             {"fractions": fractions, "median_fraction": median_fraction,
              "seeds_met": sum(f <= 1 / 3 for f in fractions), "seeds": len(fractions),
              "met": median_fraction <= 1 / 3}}
    settings = {"trials": args.trials, "max_epochs": args.max_epochs, "grace_period": args.grace_period,
                "reduction_factor": args.reduction_factor, "train_size": args.train_size,
                "val_size": args.val_size, "noise": args.noise, "tolerance": args.tolerance, "seeds": seeds,
                "network": net, "space": search_space(net), "same_configs": all(r["same_configs"] for r in per_seed)}
    results = {"per_seed": per_seed, "median_fraction": median_fraction, "budget_rows": budget_rows, "plot": str(plot_path),
               "curves": {seed: {k: v["points"] for k, v in runs[seed].items()} for seed in seeds},
               "wall_s": {seed: {k: v["wall_s"] for k, v in runs[seed].items()} for seed in seeds},
               "counts": {seed: {k: v["counts"] for k, v in runs[seed].items()} for seed in seeds}}
    return common.write_json(args.out, NAME, command, settings, results, goals, info)


if __name__ == "__main__":
    main()
