"""A paired A/B of trainer options at equal time: the experiment's textbook point with and without
them, trained side by side.

Each round trains two runs at once, one core each, with the same seed and the same deadline:
A, the experiment's first `search.points` entry as it is (benchmarks/baselines.py's textbook
recipe), and B, the same point with the options on top. Both see the same machine at the same
time, so a slow spell of the shared machine slows both, where sequential runs of A and then B
measured the spell as the option's cost. Each sizes its own schedule to the deadline from its own
speed (caviar's Trial.refit), so an option that costs time per epoch pays for it in epochs, as a
user's would. The verdict is taken on validation accuracy (a paired t-test over the rounds, and a
difference of at least MIN_DIFF); test accuracy is recorded beside it.

    python benchmarks/bench_ab.py --budget 10m --option lookahead=true --tag lookahead
    python benchmarks/bench_ab.py --tiny        # seconds on the fixture: what the test suite runs

Wall time: rounds x the budget, plus data preparation.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import baselines  # noqa: E402
import bench_search_quality  # noqa: E402
import common  # noqa: E402

NAME = "ab"
EXPERIMENT = "experiments/cpu-budget.yaml"
TINY_BUDGET_S = 12.0
ROUNDS = 5  # paired rounds by default: a paired t-test on 2 rounds has one degree of freedom
SIGNIFICANCE = 0.05  # two-sided p of the paired t-test under which a difference is called
MIN_DIFF = 0.001  # a difference in validation accuracy worth reporting: 0.1 point (5 images of 5000)
# What each run keeps in the results (its probabilities are left out: they are the size of the test set).
KEPT = ("seed", "hparams", "epochs", "max_epochs", "passes", "stopped_at_deadline", "diverged", "kept",
        "first_epoch_s", "last_epoch_s", "val_acc", "val_acc_by_epoch", "test_acc", "test_acc_views", "wall_s")


def parse_options(experiment: str, texts: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`NAME=VALUE` texts (values read as `--set` reads them) as the hyperparameters B adds, and the
    textbook point with them on top. Each is checked as a fixed value of the experiment's space
    (`space.NAME=VALUE`), so a typo or a bad value stops here, not in a child process minutes later."""
    from caviar.config.loading import load_config, parse_override
    from caviar.errors import ConfigError

    config = load_config(str(baselines.REPO / experiment), ["data.download=false"])
    fields = set(type(config.space).model_fields)
    options: dict[str, Any] = {}
    for text in texts:
        name = text.partition("=")[0].strip()
        if "=" not in text or not name:
            raise SystemExit(f"--option {text!r}: expected NAME=VALUE, e.g. lookahead=true")
        if name not in fields:
            raise SystemExit(f"--option {name}: not a hyperparameter of {experiment}'s space; expected one of "
                             f"{sorted(fields)}")
        if name in options:
            raise SystemExit(f"--option {name} is given twice; give each option once")
        options[name] = parse_override(f"space.{text.strip()}")[1]
    if not options:
        raise SystemExit("give at least one --option NAME=VALUE: the setting B adds to the textbook point")
    try:
        load_config(str(baselines.REPO / experiment), ["data.download=false", *(f"space.{t.strip()}" for t in texts)])
    except ConfigError as e:
        raise SystemExit(f"--option: {e}") from None
    return options, baselines.textbook_hparams(config) | options


def run_round(seed_fn: Callable[..., dict[str, Any]], root: str, val_size: int, seed: int, budget_s: float,
              experiment: str, options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A and B with `seed`, at once, one process and one thread each, until the same deadline."""
    deadline = time.time() + budget_s
    runs: dict[str, dict[str, Any]] = {}
    # spawn: a fresh interpreter per run (no forked torch thread state)
    with mp.get_context("spawn").Pool(2) as pool:
        jobs = {variant: pool.apply_async(seed_fn, (root, val_size, seed, deadline, 1, experiment, extra))
                for variant, extra in (("A", {}), ("B", dict(options)))}
        for variant, job in jobs.items():
            try:
                result = job.get(timeout=max(1.0, deadline + 60 + 0.1 * budget_s - time.time()))
                runs[variant] = {k: result[k] for k in KEPT if k in result}
            except mp.TimeoutError:
                runs[variant] = {"seed": seed, "error": "ran past the deadline and was stopped"}
            except Exception as e:  # a run that failed: reported, the other kept
                runs[variant] = {"seed": seed, "error": f"{type(e).__name__}: {e}"}
    return runs


def summarise(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """B - A on validation per round (paired: same seed, same time), their mean and spread, and
    the test figures beside them. Rounds where either run failed are left out and counted."""
    paired = [r for r in rounds if "error" not in r["A"] and "error" not in r["B"]]
    diffs = [r["B"]["val_acc"] - r["A"]["val_acc"] for r in paired]
    summary: dict[str, Any] = {"rounds": len(rounds), "paired_rounds": len(paired),
                               "failed_rounds": len(rounds) - len(paired)}
    if not diffs:
        return summary | {"verdict": "no round finished both runs: nothing to compare"}
    mean = statistics.fmean(diffs)
    wins = sum(d > 0 for d in diffs)
    summary |= {
        "val_diffs": diffs, "val_diff_mean": mean,
        "val_diff_stdev": statistics.stdev(diffs) if len(diffs) > 1 else None,
        "val_diff_min": min(diffs), "val_diff_max": max(diffs), "b_wins": wins,
        **{f"{v}_val_mean": statistics.fmean(r[v]["val_acc"] for r in paired) for v in "AB"},
        **{f"{v}_test_mean": statistics.fmean(r[v]["test_acc_views"] for r in paired) for v in "AB"},
        **{f"{v}_epochs_mean": statistics.fmean(r[v]["epochs"] for r in paired) for v in "AB"},
    }
    p_value = paired_p_value(diffs)
    summary |= {"p_value": p_value, "min_diff": MIN_DIFF, "significance": SIGNIFICANCE}
    # The seeds' spread within a variant (0.1-0.6 point at 10 minutes on Fashion-MNIST) is as large as
    # the options' effects: a winner needs a paired test across rounds, and a difference worth reporting.
    if p_value is None:
        summary["verdict"] = f"too few paired rounds ({len(diffs)}) for a paired test: run at least 2 (5 by default)"
    elif p_value >= SIGNIFICANCE:
        summary["verdict"] = (f"no significant difference: B ahead in {wins} of {len(diffs)} rounds "
                              f"(mean {mean:+.4f}, paired t-test p = {p_value:.3f})")
    elif abs(mean) < MIN_DIFF:
        summary["verdict"] = (f"a difference of {mean:+.4f} (p = {p_value:.3f}), below the {MIN_DIFF:.3f} worth "
                              "reporting")
    else:
        summary["verdict"] = (f"{'B' if mean > 0 else 'A'} better on validation: mean {mean:+.4f} over "
                              f"{len(diffs)} paired rounds (B ahead in {wins}), paired t-test p = {p_value:.3f}")
    return summary


def paired_p_value(diffs: list[float]) -> float | None:
    """Two-sided p-value of a paired t-test that the mean of B - A (per round) is 0 (scipy's
    ttest_rel on the pairs is the same test); None for fewer than 2 rounds. Rounds that all differ
    by the same amount have no spread: p is 0 where that amount is not 0."""
    if len(diffs) < 2:
        return None
    if statistics.pstdev(diffs) == 0:
        return 0.0 if diffs[0] != 0 else 1.0
    from scipy import stats

    return float(stats.ttest_1samp(diffs, 0.0).pvalue)


def _rows(rounds: list[dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for i, r in enumerate(rounds):
        for variant in "AB":
            run = r[variant]
            rows.append({"round": i, "variant": variant, "seed": run.get("seed"),
                         "val": round(run["val_acc"], 4) if "val_acc" in run else run.get("error"),
                         "test": round(run["test_acc_views"], 4) if "test_acc_views" in run else "",
                         "epochs": run.get("epochs", ""), "passes": run.get("passes", ""),
                         "s/epoch first, last": f"{run['first_epoch_s']}, {run['last_epoch_s']}"
                         if "first_epoch_s" in run else ""})
    return rows


def main(argv: Sequence[str] | None = None, seed_fn: Callable[..., dict[str, Any]] | None = None) -> dict[str, Any]:
    p = common.parser(NAME, __doc__.split("\n")[0])
    p.add_argument("--option", dest="options", action="append", default=[], metavar="NAME=VALUE",
                   help="a hyperparameter B sets on top of the textbook point (repeatable; YAML values), "
                   "e.g. lookahead=true (default with --tiny: label_smoothing=0.1)")
    p.add_argument("--budget", default=None, help="wall-clock budget of each round: 10m, 30m, 90s (default 10m; "
                   f"{TINY_BUDGET_S:g}s with --tiny)")
    p.add_argument("--rounds", type=int, default=None, help=f"paired rounds, seeds 0, 1, ... (default {ROUNDS}; 1 with "
                   "--tiny)")
    p.add_argument("--experiment", default=EXPERIMENT, help="whose first search.points entry is the textbook point")
    bench_search_quality.add_data_arguments(p)
    p.add_argument("--tag", help="results go to benchmarks/results/ab-TAG.json")
    args = p.parse_args(argv)
    from caviar.config.durations import parse_duration
    budget_s = parse_duration(args.budget or (f"{TINY_BUDGET_S:g}s" if args.tiny else "10m"))
    rounds_n = args.rounds if args.rounds is not None else (1 if args.tiny else ROUNDS)
    if rounds_n < 1:
        raise SystemExit("--rounds must be at least 1")
    options, hparams_b = parse_options(args.experiment, args.options or (["label_smoothing=0.1"] if args.tiny else []))
    common.tag_out(args, NAME)
    args.data = args.data or ("fixture" if args.tiny else "fashion")
    info = common.machine()
    if (info["nproc"] or 1) < 2:
        print("warning: fewer than 2 cores: A and B share one, each at about half speed", flush=True)
    with common.workdir(args.workdir) as work:
        root, data_name, n_train, val_size = bench_search_quality.prepared(args, work)
        print(f"Data: {data_name}: {n_train - val_size} train / {val_size} validation. {rounds_n} round(s) of "
              f"{budget_s:g}s, A = {args.experiment}'s textbook point, B = A + {options}", flush=True)
        rounds = []
        for i in range(rounds_n):
            print(f"[{time.strftime('%H:%M:%S')}] round {i}: A and B with seed {i}, side by side", flush=True)
            rounds.append(run_round(seed_fn or baselines.textbook_seed, str(root), val_size, i, budget_s,
                                    args.experiment, options))
    summary = summarise(rounds)
    rows = _rows(rounds)
    print("\n" + common.markdown(rows, list(rows[0]),
                                 f"Paired A/B on {data_name}, {budget_s:g}s per run, B = A + {options}"))
    print(f"\n{summary['verdict']}")
    settings = {"budget_s": budget_s, "rounds": rounds_n, "experiment": args.experiment, "options": options,
                "hparams_b": hparams_b, "data": data_name, "data_root": str(root), "train_images": n_train - val_size,
                "val_size": val_size, "threads_per_run": 1}
    return common.write_json(args.out, NAME, common.command_line(argv, f"bench_{NAME}.py"), settings,
                             {"rounds": rounds, "summary": summary}, {"verdict": summary["verdict"]}, info)


if __name__ == "__main__":
    main()
