"""Where the budget shapes switch (caviar.sweeps.shapes): at p runs of the recipe per slot, is one
run stretched over the whole budget better than p runs of the recipe's own length, ensembled?

R is the recipe unit as the planner measures it (caviar.sweeps.budget.recipe_seconds: the first
search point of the experiment trained for its members stage's epochs, on one core). Each round
trains, side by side on one core each, with the same deadline of p x R:

- `stretched`: one seed of the recipe, its cosine schedule spanning the whole p x R;
- `deep`: p seeds of the recipe one after another, each spanning 1 R, ensembled (mean of their
  mirror-averaged probabilities).

The verdict is read on validation (the ensemble's accuracy against the stretched run's), as bench_ab
reads one (a paired t-test over the rounds, and a difference of at least two validation images);
the test set is only recorded. Where the deep ensemble wins from p on, members should come before length
(shape `ensemble`); where stretching wins, one member per slot gets the time (shapes `recipe`,
`search`). To fit a session, the unit is small: a class-balanced subset of Fashion-MNIST, so that
R is minutes; the question (a second member against twice the schedule, for a model that has
saturated its data) is the same one a full-size R asks.

    python benchmarks/bench_shape.py --train-subset 2000 --val-size 1000 --multiples 2,4 --rounds 2
    python benchmarks/bench_shape.py --tiny      # seconds on the fixture: what the test suite runs

Wall time: rounds x sum(multiples) x R, plus data preparation.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import baselines  # noqa: E402
import bench_ab  # noqa: E402
import bench_search_quality  # noqa: E402
import common  # noqa: E402

NAME = "shape"
EXPERIMENT = "experiments/cpu-budget.yaml"
KEPT = ("seed", "epochs", "max_epochs", "passes", "kept", "val_acc", "test_acc_views", "wall_s")


def recipe_unit(root: str, val_size: int, experiment: str, overrides: list[str]) -> tuple[float, dict[str, Any]]:
    """R in seconds on one core, measured as the budget planner measures it, and the throughput."""
    import torch

    from caviar.config.loading import load_config
    from caviar.sweeps.budget import measure, recipe_seconds
    from caviar.sweeps.shapes import members_stage
    from caviar.training.data import data_for
    from caviar.training.train import images_per_epoch

    torch.set_num_threads(1)
    config = load_config(str(baselines.REPO / experiment), [f"data.root={root}", f"data.val_size={val_size}",
                         "data.download=false", "resources.cpus_per_trial=1", *overrides])
    data = data_for(config)
    throughput = measure(config, data, torch.device("cpu"))
    stage = config.stages[members_stage(config)]
    images = images_per_epoch(len(data.train_y) if stage.train_subset is None else int(stage.train_subset),
                              config.train.epoch_size)
    return recipe_seconds(config, throughput, images, len(data.val_y)), vars(throughput)


def _stretched(root: str, val_size: int, seed: int, deadline: float, experiment: str,
               overrides: list[str]) -> list[dict[str, Any]]:
    return [_seed(root, val_size, seed, deadline, experiment, overrides)]


def _deep(root: str, val_size: int, seeds: list[int], unit_s: float, begin: float, experiment: str,
          overrides: list[str]) -> list[dict[str, Any]]:
    """`len(seeds)` runs one after another, the k-th ending at begin + (k + 1) x R."""
    return [_seed(root, val_size, seed, begin + (k + 1) * unit_s, experiment, overrides)
            for k, seed in enumerate(seeds)]


def _seed(root: str, val_size: int, seed: int, deadline: float, experiment: str,
          overrides: list[str]) -> dict[str, Any]:
    from caviar.config.loading import load_config

    config = load_config(str(baselines.REPO / experiment), ["data.download=false"])
    return baselines._caviar_seed(root, val_size, seed, deadline, 1, experiment, baselines.textbook_hparams(config),
                                  overrides)


def _accuracy(probs: list[np.ndarray], labels: np.ndarray) -> float:
    return float((np.mean(probs, axis=0).argmax(1) == labels).mean())


def run_round(root: str, val_size: int, multiple: int, unit_s: float, round_index: int, experiment: str,
              overrides: list[str]) -> dict[str, Any]:
    """One paired round at `multiple` runs per slot: stretched and deep side by side."""
    from caviar.config.loading import load_config
    from caviar.training.data import data_for, load_test_set

    begin = time.time() + 5  # the processes' start-up comes out of neither
    deadline = begin + multiple * unit_s
    base = 1000 * round_index
    with mp.get_context("spawn").Pool(2) as pool:
        stretched = pool.apply_async(_stretched, (root, val_size, base, deadline, experiment, overrides))
        deep = pool.apply_async(_deep, (root, val_size, [base + 1 + k for k in range(multiple)], unit_s, begin,
                                        experiment, overrides))
        runs = {"stretched": stretched.get(), "deep": deep.get()}
    config = load_config(str(baselines.REPO / experiment), [f"data.root={root}", f"data.val_size={val_size}",
                         "data.download=false", *overrides])
    val_y = data_for(config).val_y
    _, test_y = load_test_set(root, download=False)
    record: dict[str, Any] = {"multiple": multiple, "round": round_index, "unit_s": unit_s}
    for name, seeds in runs.items():
        record[name] = {"val_acc": _accuracy([s.pop("val_view_probs") for s in seeds], val_y),
                        "test_acc": _accuracy([s.pop("view_probs") for s in seeds], test_y),
                        "runs": [{k: s[k] for k in KEPT if k in s} for s in seeds]}
        for s in seeds:
            s.pop("probs", None)
    record["deep_minus_stretched_val"] = record["deep"]["val_acc"] - record["stretched"]["val_acc"]
    record["deep_minus_stretched_test"] = record["deep"]["test_acc"] - record["stretched"]["test_acc"]
    return record


def summarise(rounds: list[dict[str, Any]], min_diff: float = bench_ab.MIN_DIFF) -> dict[str, Any]:
    """Per multiple: the mean and spread of deep - stretched on validation and test, and the winner
    on validation: as bench_ab calls one, by a paired t-test over the rounds and a mean difference of
    at least `min_diff`; else undecided."""
    out: dict[str, Any] = {}
    for multiple in sorted({r["multiple"] for r in rounds}):
        same = [r for r in rounds if r["multiple"] == multiple]
        val = [r["deep_minus_stretched_val"] for r in same]
        test = [r["deep_minus_stretched_test"] for r in same]
        p_value, mean = bench_ab.paired_p_value(val), statistics.mean(val)
        decided = p_value is not None and p_value < bench_ab.SIGNIFICANCE and abs(mean) >= min_diff
        out[str(multiple)] = {"rounds": len(same), "val_mean": mean, "val_spread": max(val) - min(val),
                              "test_mean": statistics.mean(test), "test_spread": max(test) - min(test),
                              "p_value": p_value, "min_diff": min_diff,
                              "winner_on_validation": ("deep" if mean > 0 else "stretched") if decided else "undecided"}
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = common.parser(NAME, __doc__.split("\n")[0])
    p.add_argument("--multiples", default=None, help="runs of the recipe per slot, comma-separated (default 2,4)")
    p.add_argument("--rounds", type=int, default=None, help="paired rounds per multiple (default 2; 1 with --tiny)")
    p.add_argument("--train-subset", type=int, default=None, help="data.train_subset: a class-balanced subset, so "
                   "that R is minutes (default 2000; all of the fixture with --tiny)")
    p.add_argument("--unit", type=float, default=None, help="R in seconds instead of measuring it (default: measured)")
    p.add_argument("--experiment", default=EXPERIMENT, help="whose first search.points entry is the recipe")
    bench_search_quality.add_data_arguments(p)
    p.add_argument("--tag", help="results go to benchmarks/results/shape-TAG.json")
    args = p.parse_args(argv)
    multiples = [int(m) for m in (args.multiples or ("2" if args.tiny else "2,4")).split(",")]
    rounds_n = args.rounds if args.rounds is not None else (1 if args.tiny else 2)
    if rounds_n < 1 or any(m < 1 for m in multiples):
        raise SystemExit("--rounds and every --multiples entry must be at least 1")
    common.tag_out(args, NAME)
    args.data = args.data or ("fixture" if args.tiny else "fashion")
    subset = args.train_subset or (None if args.tiny else 2000)
    overrides = [f"data.train_subset={subset}"] if subset else []
    # --tiny: epochs of a few images, so that R is seconds
    overrides += ["stages.1.epochs=8", "average.bn_images=200"] if args.tiny else []
    info = common.machine()
    with common.workdir(args.workdir) as work:
        root, data_name, _, val_size = bench_search_quality.prepared(args, work)
        unit_s, throughput = (args.unit, {}) if args.unit else recipe_unit(str(root), val_size, args.experiment,
                                                                            overrides)
        print(f"Data: {data_name}, train_subset {subset}, {val_size} validation; R = {unit_s:.0f} s on one core; "
              f"multiples {multiples} per slot, {rounds_n} round(s) each: about "
              f"{rounds_n * sum(multiples) * unit_s / 60:.0f} min", flush=True)
        rounds = []
        for multiple in multiples:
            for i in range(rounds_n):
                print(f"[{time.strftime('%H:%M:%S')}] {multiple} R: stretched vs {multiple} x 1 R, round {i}",
                      flush=True)
                rounds.append(run_round(str(root), val_size, multiple, unit_s, i, args.experiment, overrides))
                r = rounds[-1]
                print(f"   val: stretched {r['stretched']['val_acc']:.4f}, deep {r['deep']['val_acc']:.4f}; "
                      f"test: {r['stretched']['test_acc']:.4f}, {r['deep']['test_acc']:.4f}", flush=True)
    # a difference worth reporting: bench_ab's, and at least two validation images
    summary = summarise(rounds, max(bench_ab.MIN_DIFF, 2 / val_size))
    rows = [{"runs per slot": m, "rounds": s["rounds"],
             "deep - stretched, val (mean, spread)": f"{100 * s['val_mean']:+.2f} pt ({100 * s['val_spread']:.2f})",
             "test (mean, spread)": f"{100 * s['test_mean']:+.2f} pt ({100 * s['test_spread']:.2f})",
             "winner on validation": s["winner_on_validation"]} for m, s in summary.items()]
    print("\n" + common.markdown(rows, list(rows[0]), f"Stretched recipe vs deep ensemble at equal time, {data_name}"))
    settings = {"multiples": multiples, "rounds": rounds_n, "experiment": args.experiment, "data": data_name,
                "data_root": str(root), "train_subset": subset, "val_size": val_size, "unit_s": unit_s,
                "throughput": throughput, "overrides": overrides, "threads_per_run": 1}
    return common.write_json(args.out, NAME, common.command_line(argv, f"bench_{NAME}.py"), settings,
                             {"rounds": rounds, "summary": summary}, {"summary": summary}, info)


if __name__ == "__main__":
    main()
