"""The flow against the recipe at multiples of the recipe unit R: does `caviar sweep --budget T`
followed by `caviar ensemble --budget` give more model than spending T on the recipe alone, at one
run's worth of compute, at a few and at many?

R is one run of the experiment's recipe (its first `search.points` entry, trained for its own
schedule) on one slot, measured as the budget planner measures it (bench_shape.recipe_unit). At a
multiple m (R in all, over the slots) every contender gets the same wall time, m x R / slots, on
the same cores:

- `flow`: what a user types, `caviar sweep EXPERIMENT --budget` (the planner chooses the shape from
  the runs per slot) and `caviar ensemble --budget` on the rest (--ensemble-share);
- `stretched` (a): the recipe, one seed per slot, its schedule stretched over the whole budget, the
  slots' seeds ensembled (bench_search_quality's textbook baseline);
- `deep` (b): a deep ensemble of the recipe: per slot floor(m / slots) independent runs one after
  another, each of m / slots / floor(m / slots) R (1 R where m / slots is whole), all ensembled;
  below 2 R per slot it would be the stretched run again, so it is left out there;
- `airbench` (c): airbench94 (benchmarks/airbench_cpu.py) on the same subset, its schedule fitted to
  the budget, one seed per slot ensembled; left out where the subset holds fewer images than one of
  its batches (1,024).

Every contender's ensemble is scored on validation (what decides) and on the test set (recorded).
The flow's validation figure is its ensemble's, whose weights were chosen on those images, so it
leans optimistic; the baselines choose nothing. To fit a session the unit is small: a
class-balanced `data.train_subset` of Fashion-MNIST, so that R is about two minutes and 16 R on two
slots about 20 minutes; what a multiple buys (searches, members, their lengths) is in units of R, the
same as for a full-size R, but a small R makes the flow's fixed costs (Ray's start, the planner's
probe, a worker's import of torch) a larger share of a small multiple than on a full data set.

    python benchmarks/bench_multiples.py --train-subset 800 --val-size 800 --runs 1,4,16 --rounds 2
    python benchmarks/bench_search_quality.py --runs 1,4,16 --train-subset 800    # the same, from there
    python benchmarks/bench_multiples.py --tiny      # seconds on the fixture: what the test suite runs
    python benchmarks/bench_multiples.py --table benchmarks/results/multiples-*.json   # the README's table

Results are written after every contender, so a run cut short keeps what it measured. Wall time:
rounds x sum(runs) / slots x R x the contenders, plus data preparation.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_search_quality  # noqa: E402
import bench_shape  # noqa: E402
import common  # noqa: E402

NAME = "multiples"
EXPERIMENT = "experiments/cpu-budget.yaml"
CONTENDERS = ("flow", "stretched", "deep", "airbench")
AIRBENCH_BATCH = 1024  # airbench94 trains on whole batches of this many images
# the goals: the flow against the best of the recipe's contenders, by multiple (below 1.5 R
# per slot the flow is the recipe itself and must not lose more than 0.1 pt)
MARGINS = ((1.5, -0.001), (6.0, 0.003), (math.inf, 0.007))
TINY_UNIT_S = 6.0  # --tiny: the fixture's epochs take about a second, so 4 R on 2 slots is 12 s per contender


def margin(runs_per_slot: float) -> float:
    return next(m for below, m in MARGINS if runs_per_slot < below)


def deep_runs(runs_per_slot: float) -> int:
    """How many independent runs of the recipe one slot trains for the deep ensemble (0: none fits)."""
    return int(runs_per_slot) if runs_per_slot >= 2 else 0


# ---------------------------------------------------------------- the recipe's contenders
def _airbench(root: str, val_size: int, seed: int, deadline: float, subset: int | None) -> list[dict[str, Any]]:
    import airbench_cpu

    return [airbench_cpu.train_seed(root, val_size, seed, deadline, 1, train_subset=subset)]


def _recipe(name: str, root: str, val_size: int, wall_s: float, runs_per_slot: float, slots: int, round_index: int,
            experiment: str, overrides: list[str], subset: int | None) -> dict[str, Any]:
    """`slots` processes side by side, one thread each, until the same deadline; their runs
    ensembled (mean of each run's mirror-averaged probabilities)."""
    begin = time.time() + 5  # the processes' start-up comes out of no contender
    deadline = begin + wall_s
    base = 1000 * round_index
    with mp.get_context("spawn").Pool(slots) as pool:
        if name == "stretched":
            jobs = [pool.apply_async(bench_shape._stretched, (root, val_size, base + slot, deadline, experiment,
                                                             overrides)) for slot in range(slots)]
        elif name == "deep":
            k = deep_runs(runs_per_slot)
            jobs = [pool.apply_async(bench_shape._deep, (root, val_size, [base + 100 * slot + i for i in range(k)],
                                                        wall_s / k, begin, experiment, overrides))
                    for slot in range(slots)]
        else:
            jobs = [pool.apply_async(_airbench, (root, val_size, base + slot, deadline, subset)) for slot in range(slots)]
        runs = [run for job in jobs for run in job.get()]
    return _ensembled(root, val_size, experiment, overrides, runs) | {"wall_s": round(time.time() - begin, 1)}


def _ensembled(root: str, val_size: int, experiment: str, overrides: list[str],
               runs: list[dict[str, Any]]) -> dict[str, Any]:
    from caviar.config.loading import load_config
    from caviar.training.data import data_for, load_test_set

    config = load_config(str(common.REPO / experiment), [f"data.root={root}", f"data.val_size={val_size}",
                         "data.download=false", *overrides])
    val_y = data_for(config).val_y
    _, test_y = load_test_set(root, download=False)
    accuracy = lambda key, labels: float((np.mean([r.pop(key) for r in runs], 0).argmax(1) == labels).mean())  # noqa: E731
    record = {"val_acc": accuracy("val_view_probs", val_y), "test_acc": accuracy("view_probs", test_y),
              "members": len(runs)}
    kept = ("seed", "epochs", "max_epochs", "passes", "kept", "val_acc", "test_acc_views", "wall_s")
    return record | {"seeds": [{k: r[k] for k in kept if k in r} for r in runs]}


# ---------------------------------------------------------------- the flow
def _flow(root: Path, val_size: int, wall_s: float, share: float, storage: Path, train_images: int,
          overrides: list[str]) -> dict[str, Any]:
    ray_tmp = tempfile.mkdtemp(prefix="cvmu-", dir="/tmp")  # short: Ray's socket paths < 107 bytes
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        r = bench_search_quality.run_flow("flow", EXPERIMENT, root, storage, val_size, train_images,
                                          wall_s * (1 - share), wall_s * share, env, False, overrides=overrides)
    finally:
        import shutil

        shutil.rmtree(ray_tmp, ignore_errors=True)
    shape = next((s.get("budget", {}).get("shape") for s in r.get("stages", []) if s.get("budget", {}).get("shape")),
                 None)
    doc = storage / "flow" / "ensemble" / "ensemble.json"
    import json

    val_acc = json.loads(doc.read_text()).get("val_accuracy") if doc.exists() else None
    return {"val_acc": val_acc, "test_acc": r.get("ensemble_acc"), "members": r.get("members"),
            "shape": (shape or {}).get("name"), "runs_planned": (shape or {}).get("runs"),
            "trials": r.get("trials"), "passes": r.get("passes"), "wall_s": r.get("wall_s"),
            "sweep_wall_s": r.get("sweep_wall_s"), "ensemble_wall_s": r.get("ensemble_wall_s"),
            "error": r.get("error"), "folder": str(storage / "flow")}


# ---------------------------------------------------------------- summary
def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per multiple: each contender's mean and spread over the rounds (validation, test), and the
    flow against the best recipe contender on validation (the goal) and on test (recorded)."""
    out: dict[str, Any] = {}
    for runs in sorted({r["runs"] for r in records}):
        same = [r for r in records if r["runs"] == runs]
        row: dict[str, Any] = {"rounds": len({r["round"] for r in same}), "runs_per_slot": same[0]["runs_per_slot"]}
        for name in CONTENDERS:
            got = [r for r in same if r["contender"] == name and r.get("val_acc") is not None]
            if got:
                row[name] = {split: {"mean": statistics.mean(r[f"{split}_acc"] for r in got),
                                     "spread": max(r[f"{split}_acc"] for r in got) - min(r[f"{split}_acc"] for r in got)}
                             for split in ("val", "test")} | {"rounds": len(got)}
        recipes = [n for n in CONTENDERS[1:] if n in row]
        if "flow" in row and recipes:
            best = max(recipes, key=lambda n: row[n]["val"]["mean"])
            need = margin(row["runs_per_slot"])
            row["best_recipe"] = best
            row["flow_minus_best_val"] = row["flow"]["val"]["mean"] - row[best]["val"]["mean"]
            row["flow_minus_best_test"] = row["flow"]["test"]["mean"] - row[best]["test"]["mean"]
            row["goal_margin"] = need
            row["goal_met_on_validation"] = row["flow_minus_best_val"] >= need
        out[str(runs)] = row
    return out


def _rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    pt = lambda d: f"{100 * d['mean']:.2f} ({100 * d['spread']:.2f})"  # noqa: E731
    rows = []
    for runs, row in summary.items():
        cells = {"R in all": runs, "per slot": f"{row['runs_per_slot']:.1f}", "rounds": row["rounds"]}
        for name in CONTENDERS:
            cells[f"{name} val / test"] = f"{pt(row[name]['val'])} / {pt(row[name]['test'])}" if name in row else "-"
        if "best_recipe" in row:
            cells["flow - best recipe, val / test"] = (f"{100 * row['flow_minus_best_val']:+.2f} / "
                                                       f"{100 * row['flow_minus_best_test']:+.2f} pt "
                                                       f"(goal {100 * row['goal_margin']:+.1f})")
        rows.append(cells)
    return rows


# ---------------------------------------------------------------- main
def arguments(p: Any) -> None:
    """The options bench_search_quality --runs passes on."""
    p.add_argument("--runs", default=None, help="multiples of R in all (over the slots), comma-separated "
                   "(default 1,4,16; 4 with --tiny)")
    p.add_argument("--rounds", type=int, default=None, help="rounds per multiple (default 2; 1 with --tiny)")
    p.add_argument("--train-subset", type=int, default=None, help="data.train_subset, class-balanced, so that R "
                   "is minutes (default 800; all of the fixture with --tiny)")
    p.add_argument("--contenders", default=None, help=f"comma-separated, of {', '.join(CONTENDERS)} (default: all; "
                   "with --tiny: stretched,deep: bench_search_quality --tiny runs the flow)")
    p.add_argument("--ensemble-share", type=float, default=0.1, help="the flow's share for `caviar ensemble`")
    p.add_argument("--unit", type=float, default=None, help="R in seconds instead of measuring it (with --tiny: "
                   f"{TINY_UNIT_S:g})")
    p.add_argument("--slots", type=int, default=None, help="slots (default: the cores)")
    p.add_argument("--first-round", type=int, default=0, help="number the rounds from this one, so that a later "
                   "run adds new rounds (new seeds for every contender) rather than repeating round 0")


def table(files: list[Path]) -> str:
    """The README's table: the records of one or more results files (runs of one unit, e.g. 1 and 4 R
    in one run and 16 R in another) summarised together."""
    import json

    docs = [json.loads(Path(f).read_text()) for f in files]
    units = {round(d["settings"]["unit_s"]) for d in docs}
    records = [r for d in docs for r in d["results"]["records"]]
    head = docs[0]["settings"]
    title = (f"The flow against the recipe at multiples of R: {head['data']}, train_subset {head['train_subset']}, "
             f"{head['val_size']} validation, R = {', '.join(map(str, sorted(units)))} s, {head['slots']} slots "
             f"(accuracy %, mean (spread) over the rounds; from {', '.join(Path(f).name for f in files)})")
    rows = _rows(summarise(records))
    return common.markdown(rows, list(rows[0]), title) if rows else title + ": no records"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["--table"]:  # the README's table from results files
        print(table([Path(f) for f in given[1:]]))
        return {}
    p = common.parser(NAME, __doc__.split("\n")[0])
    arguments(p)
    bench_search_quality.add_data_arguments(p)
    p.add_argument("--tag", help="results go to benchmarks/results/multiples-TAG.json")
    args = p.parse_args(argv)
    multiples = [float(m) for m in (args.runs or ("4" if args.tiny else "1,4,16")).split(",")]
    rounds_n = args.rounds if args.rounds is not None else (1 if args.tiny else 2)
    contenders = [c.strip() for c in (args.contenders or ("stretched,deep" if args.tiny else
                                                         ",".join(CONTENDERS))).split(",") if c.strip()]
    unknown = [c for c in contenders if c not in CONTENDERS]
    if unknown:
        raise SystemExit(f"--contenders: unknown {unknown}; expected some of {list(CONTENDERS)}")
    if rounds_n < 1 or args.first_round < 0 or any(m <= 0 for m in multiples):
        raise SystemExit("--rounds must be at least 1, --first-round at least 0 and every --runs entry above 0")
    if not 0 < args.ensemble_share < 1:
        raise SystemExit("--ensemble-share must be in (0, 1)")
    common.tag_out(args, NAME)
    args.data = args.data or ("fixture" if args.tiny else "fashion")
    subset = args.train_subset or (None if args.tiny else 800)
    overrides = [f"data.train_subset={subset}"] if subset else []
    info = common.machine()
    slots = args.slots or max(1, min(info["nproc"] or 1, 2))
    if "airbench" in contenders:
        import airbench_cpu

        airbench_cpu.ensure_installed()
    with common.workdir(args.workdir) as work:
        root, data_name, n_train, val_size = bench_search_quality.prepared(args, work)
        train_images = subset or n_train - val_size
        unit_s = args.unit or (TINY_UNIT_S if args.tiny else None)
        unit_s, throughput = (unit_s, {}) if unit_s else bench_shape.recipe_unit(str(root), val_size,
                                                                                        EXPERIMENT, overrides)
        total = rounds_n * sum(multiples) / slots * unit_s * len(contenders)
        print(f"Data: {data_name}, train_subset {subset}, {val_size} validation; R = {unit_s:.0f} s on one core, "
              f"{slots} slots; {', '.join(f'{m:g} R' for m in multiples)}, {rounds_n} round(s), {contenders}: "
              f"at most about {total / 60:.0f} min", flush=True)
        settings = {"runs": multiples, "rounds": rounds_n, "contenders": contenders, "experiment": EXPERIMENT,
                    "data": data_name, "data_root": str(root), "train_subset": subset, "val_size": val_size,
                    "unit_s": unit_s, "slots": slots, "throughput": throughput, "ensemble_share": args.ensemble_share}
        records: list[dict[str, Any]] = []
        payload: dict[str, Any] = {}
        # a multiple's rounds one after another: a run cut short keeps whole multiples
        for runs in multiples:
            for round_index in range(args.first_round, args.first_round + rounds_n):
                per_slot = runs / slots
                wall_s = per_slot * unit_s
                for name in contenders:
                    head = {"runs": runs, "runs_per_slot": per_slot, "round": round_index, "contender": name,
                            "wall_budget_s": round(wall_s, 1)}
                    if name == "deep" and not deep_runs(per_slot):
                        continue  # below 2 R per slot a deep ensemble is the stretched run again
                    if name == "airbench" and (subset or train_images) < AIRBENCH_BATCH:
                        continue
                    print(f"[{time.strftime('%H:%M:%S')}] {runs:g} R ({per_slot:.1f} per slot, {wall_s:.0f} s), "
                          f"round {round_index}: {name}", flush=True)
                    if name == "flow":
                        storage = (work / f"flow-{runs:g}R-{round_index}").resolve()
                        storage.mkdir(parents=True, exist_ok=True)
                        # the search's seed is the round, so rounds draw other configs and member seeds
                        got = _flow(root, val_size, wall_s, args.ensemble_share, storage, train_images,
                                    [*overrides, f"search.seed={round_index}"])
                    else:
                        got = _recipe(name, str(root), val_size, wall_s, per_slot, slots, round_index, EXPERIMENT,
                                      overrides, subset)
                    records.append(head | got)
                    print(f"   val {got.get('val_acc')}, test {got.get('test_acc')}"
                          + (f", shape {got.get('shape')}" if name == "flow" else ""), flush=True)
                    summary = summarise(records)
                    payload = common.write_json(args.out, NAME, common.command_line(argv, f"bench_{NAME}.py"),
                                                settings, {"records": records, "summary": summary},
                                                {f"{k} R: flow - best recipe >= {100 * s['goal_margin']:+.1f} pt on "
                                                 "validation": s["goal_met_on_validation"]
                                                 for k, s in summary.items() if "goal_margin" in s}, info)
    rows = _rows(summarise(records))
    if rows:
        print("\n" + common.markdown(rows, list(rows[0]), f"The flow against the recipe at multiples of R, {data_name} "
                                     "(accuracy %, mean (spread))"))
    return payload


if __name__ == "__main__":
    main()
