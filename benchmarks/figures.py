"""Every benchmark figure the documentation quotes, written from `benchmarks/results/*.json` and
typed nowhere by hand: the current table of each benchmark (the docs' Benchmarks page, built by
`docs/hooks.py`), the README's results table, and the status of every results file (current,
superseded, disturbed) for the history page. `caviar experiments` reads the same files through
`caviar.config.catalog.reached`, which the Benchmarks page quotes as it is.

    python benchmarks/figures.py             # the Benchmarks page, as markdown
    python benchmarks/figures.py --readme    # rewrite the README's results table in place
    python benchmarks/figures.py --check     # exit 1 where the README's table is not the one written here
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported from docs/hooks.py or the tests: the scripts beside it
    sys.path.insert(0, str(HERE))
import bench_multiples  # noqa: E402

RESULTS = HERE / "results"
README = HERE.parent / "README.md"
BEGIN, END = "<!-- figures:begin (benchmarks/figures.py --readme) -->", "<!-- figures:end -->"

# Results files that later runs replaced: file -> why (and by what). Every file not here or in
# DISTURBED is current: the Benchmarks page quotes it.
SUPERSEDED = {
    **{f"search_quality-30m{v}.json": "the 30-minute flow before the fair baselines (runs 1-13); superseded by "
       "runs 14-15 (search_quality-30m-v14-fair, -v15-fair), measured beside the recipe they are compared with"
       for v in ("", "-v2", "-v3", "-v4", "-v5", "-v6", "-v7", "-v8", "-v9", "-v10", "-v11-top4", "-v12-seed1",
                 "-v13-old")},
    **{f"search_quality-60m{v}.json": "an earlier 60-minute flow; superseded by search_quality-60m-v4 (the "
       "ResNet-9 flow)" for v in ("", "-v2", "-v3")},
    **{f"search_quality-ab10{v}.json": "a sequential A/B of trainer options (A and B minutes apart, on a "
       "machine whose load varied); superseded by the paired runs of bench_ab (ab-lookahead, ab-alternate_flips)"
       for v in ("-base", "-label_smoothing-0.1", "-whiten-true", "b-alternate_flips", "b-base", "b-bn_lr_scale",
                 "b-lookahead", "c-base", "c-bn_lr_scale", "c-lookahead")},
    "multiples-subset600.json": "1 and 4 R before the recipe shape reached 2.5 R per slot and the probe timed only the "
                                "recipe; superseded by multiples-subset600-after (the same grid and seeds after)",
    "scale-1000-before.json": "before the fix of Ray's snapshot per checkpoint; scale-1000-after is the same run after",
    "scale-10000-after.json": "a first run after the fix; scale-10000-final is the run with every fix",
}
DISTURBED = {
    "rungs-subset4000.json": "ran beside a smoke sweep for its first five minutes; its figures count epochs, "
                             "not seconds, so they stand",
}
# The Benchmarks page's order and headings: benchmark name (the JSON's "benchmark") -> title.
TITLES = {
    "throughput": "Trial throughput: caviar's trial loop against the tutorial's DataLoader pipeline",
    "sweep_wall": "Sweep wall time: the same trials as a caviar sweep and as a tutorial-style sweep",
    "overhead": "Sweep overhead per trial",
    "memory": "Memory per concurrent trial",
    "search_efficiency": "ASHA against random search",
    "scale": "Scale: thousands of tiny trials in one sweep",
    "search_quality": "Search quality on Fashion-MNIST: the flow against its own recipe at 30 and 60 minutes",
    "multiples": "The flow against the recipe at multiples of R",
    "shape": "One run stretched, or as many runs of R ensembled",
    "rungs": "Do ASHA's rungs rank as full-length runs do?",
    "ab": "Trainer options, paired A/B at equal time",
    "ensemble_views": "Moved views at test time",
    "gpu": "GPU",
}


def status(name: str) -> tuple[str, str]:
    """(current | superseded | disturbed, why) of one results file."""
    if name in SUPERSEDED:
        return "superseded", SUPERSEDED[name]
    if name in DISTURBED:
        return "disturbed", DISTURBED[name]
    return "current", ""


def load(results: Path = RESULTS) -> dict[str, dict[str, Any]]:
    """Every results file, by file name."""
    return {p.name: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}


def when_and_where(doc: dict[str, Any]) -> str:
    machine = doc.get("machine")
    if not isinstance(machine, dict):
        return f"{doc.get('date_utc', '?')}, {machine or '?'}"
    cpu = " ".join(str(machine.get("cpu", "?")).split()[:3])
    gpu = machine.get("gpu")
    return f"{machine.get('date_utc', '?')}, {cpu}, {machine.get('nproc', '?')} cores" + (f", {gpu}" if gpu else "")


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return ", ".join(_number(v) for v in value[:6]) + (" ..." if len(value) > 6 else "")
    return str(value)


def goal_rows(doc: dict[str, Any]) -> list[dict[str, str]]:
    """One row per goal of a results file: the goal, its figures, met or not (nested summaries, as
    bench_shape and bench_rungs write them, one row per entry)."""
    rows = []

    def add(goal: str, value: Any) -> None:
        if isinstance(value, dict) and not any(isinstance(v, (int, float, str, list)) and not isinstance(v, bool)
                                                for v in value.values()) and value:
            for key, inner in value.items():
                add(f"{goal} / {key}" if goal else str(key), inner)
            return
        if isinstance(value, dict):
            figures = {k: v for k, v in value.items() if k != "met" and not isinstance(v, dict)}
            nested = {k: v for k, v in value.items() if isinstance(v, dict)}
            rows.append({"goal": goal, "figures": "; ".join(f"{k} {_number(v)}" for k, v in figures.items()),
                         "met": _number(value["met"]) if "met" in value else "-"})
            for key, inner in nested.items():
                add(f"{goal} / {key}", inner)
        elif isinstance(value, bool):
            rows.append({"goal": goal, "figures": "", "met": _number(value)})
        else:
            rows.append({"goal": goal, "figures": _number(value), "met": "-"})

    for goal, value in (doc.get("goals") or {}).items():
        add("" if goal == "summary" else goal, value)
    return rows


def markdown(rows: list[dict[str, Any]], title: str = "") -> str:
    if not rows:
        return ""
    head = list(rows[0])
    lines = [f"**{title}**", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r.get(h, "")).replace("|", "/") for h in head) + " |" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- the flows against their recipe
def search_quality_rows(docs: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """Per current search_quality file: each flow's ensemble test accuracy, and the baselines
    measured beside it (the recipe trained the whole budget, airbench, the hand-picked convnet)."""
    rows = []
    for name, doc in docs.items():
        settings, results = doc.get("settings", {}), doc.get("results", {})
        for flow, r in (results.get("flows") or {}).items():
            base = {k: b.get("ensemble_acc") for k, b in (results.get("baselines") or {}).items()
                    if isinstance(b, dict) and b.get("ensemble_acc") is not None}
            rows.append({"file": name, "budget": f"{settings.get('budget_s', 0) / 60:.0f} min", "flow": flow,
                         "flow test %": _percent(r.get("ensemble_acc")), "passes": _number(r.get("passes")),
                         "beside it, test %": ", ".join(f"{k} {_percent(v)}" for k, v in base.items()) or "-",
                         "when, machine": when_and_where(doc)})
    return rows


def _percent(value: Any) -> str:
    return f"{100 * value:.2f}" if isinstance(value, (int, float)) else "-"


def flow_against_recipe(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The 30-minute fair comparison (runs 14-15): the flow and its own textbook point trained the
    whole budget, mean over the current runs that measured both."""
    pairs = [(d["results"]["flows"]["budget"]["ensemble_acc"], d["results"]["baselines"]["textbook"]["ensemble_acc"])
             for n, d in docs.items() if n.startswith("search_quality-30m") and status(n)[0] == "current"
             and "budget" in d["results"].get("flows", {}) and "textbook" in (d["results"].get("baselines") or {})]
    if not pairs:
        return {}
    flow, recipe = statistics.mean(p[0] for p in pairs), statistics.mean(p[1] for p in pairs)
    return {"runs": len(pairs), "flow": flow, "recipe": recipe, "spread": max(p[0] for p in pairs) - min(p[0] for p in pairs)}


# ---------------------------------------------------------------- the README's table
def _goal(doc: dict[str, Any], key: str, field: str) -> Any:
    return (doc.get("goals") or {}).get(key, {}).get(field)


def readme_rows(docs: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """The README's one table: caviar against the tutorial's pipeline, and what the flow buys."""
    rows: list[dict[str, str]] = []

    def row(what: str, file: str, figure: Callable[[dict[str, Any]], str], goal: str, met: Any) -> None:
        doc = docs.get(file)
        if doc is None:
            return
        rows.append({"what": what, "measured": figure(doc), "goal": goal, "met": _number(met) if met is not None
                     else "-", "when, machine": when_and_where(doc), "results": file})

    th = docs.get("throughput.json", {})
    row("training images/s per trial, against the tutorial's pipeline", "throughput.json",
        lambda d: ", ".join(f"{k.split(': caviar')[0]} {v['ratio']:.1f}x" for k, v in d["goals"].items()),
        "convnet >= 1.5x; ResNet never slower", all(v.get("met") for v in th.get("goals", {}).values()))
    for file, label in (("sweep_wall_short.json", "24 one-epoch trials"), ("sweep_wall.json", "8 trials x 2 epochs"),
                        ("sweep_wall_long.json", "8 trials x 6 epochs")):
        key = "caviar >= 3x faster end to end on CPU"
        row(f"sweep wall time, the same {label}", file, lambda d, k=key: f"{_goal(d, k, 'speedup'):.1f}x faster",
            ">= 3x", _goal(docs.get(file, {}), key, "met"))
    key = "overhead <= 1.5 s per trial on CPU (processes reused, as shipped)"
    row("overhead per trial (24 trials)", "overhead.json", lambda d: f"{_goal(d, key, 'overhead_per_trial_s'):.2f} s",
        "<= 1.5 s", _goal(docs.get("overhead.json", {}), key, "met"))
    mem = next(iter(docs.get("memory.json", {}).get("goals", {}).values()), {})
    row("memory per extra concurrent trial", "memory.json",
        lambda d: f"{mem.get('mb_per_extra_trial', 0):.0f} MB, the data held once per node", "data shared, not copied",
        mem.get("met"))
    eff = next(iter(docs.get("search_efficiency.json", {}).get("goals", {}).values()), {})
    row("ASHA: trial-epochs to reach random search's best (64 trials)", "search_efficiency.json",
        lambda d: f"{eff.get('median_fraction', 0):.2f} of random's (median of 3 seeds)", "<= 1/3", eff.get("met"))
    scale = docs.get("scale-10000-final.json", {}).get("goals", {})
    key = "overhead <= 0.1 s per trial per slot (Ray Tune's anchor: ~0.15 s)"
    row("10,000 tiny trials: overhead per trial per slot", "scale-10000-final.json",
        lambda d: f"{scale[key]['value']:.2f} s", "<= 0.1 s", all(v.get("met") for v in scale.values()))
    fair = flow_against_recipe(docs)
    if fair:
        rows.append({"what": "Fashion-MNIST, 30 min on 2 cores: the flow against its own recipe trained the whole time",
                     "measured": f"{100 * fair['flow']:.2f}% against {100 * fair['recipe']:.2f}% "
                                 f"(mean of {fair['runs']} runs, test)",
                     "goal": "flow >= recipe - 0.1 pt", "met": _number(fair["flow"] >= fair["recipe"] - 0.001),
                     "when, machine": when_and_where(docs["search_quality-30m-v15-fair.json"]),
                     "results": "search_quality-30m-v14-fair.json, -v15-fair.json"})
    for runs, (flow_minus, met, file) in multiples_headline(docs).items():
        rows.append({"what": f"{runs} R (runs of the recipe) on 2 cores, Fashion-MNIST subset: the flow against "
                             "the best way to spend it on the recipe", "measured": f"{100 * flow_minus:+.2f} pt "
                             "(validation)", "goal": f">= {100 * _multiples_margin(runs):+.1f} pt",
                     "met": _number(met), "when, machine": when_and_where(docs[file]), "results": file})
    return rows


def _multiples(docs: dict[str, dict[str, Any]]) -> list[str]:
    return [n for n in docs if n.startswith("multiples-") and status(n)[0] == "current"]


def _multiples_margin(runs: str) -> float:
    return bench_multiples.margin(float(runs) / 2)


def multiples_headline(docs: dict[str, dict[str, Any]]) -> dict[str, tuple[float, bool, str]]:
    """Per multiple of R: flow minus the best recipe contender on validation, met, and a file."""
    files = _multiples(docs)
    records = [(r, n) for n in files for r in docs[n]["results"]["records"]]
    summary = bench_multiples.summarise([r for r, _ in records])
    out = {}
    for runs, s in summary.items():
        if "flow_minus_best_val" in s:
            file = next(n for r, n in records if str(float(r["runs"])) == runs)
            out[f"{float(runs):g}"] = (s["flow_minus_best_val"], s["goal_met_on_validation"], file)
    return out


def multiples_table(docs: dict[str, dict[str, Any]] | None = None) -> str:
    """The flow against the recipe at multiples of R, from the current bench_multiples results."""
    docs = load() if docs is None else docs
    return bench_multiples.table([RESULTS / n for n in _multiples(docs)])


def readme_table(docs: dict[str, dict[str, Any]] | None = None) -> str:
    docs = load() if docs is None else docs
    return "\n".join([BEGIN, markdown(readme_rows(docs)), END])


def write_readme(path: Path = README) -> bool:
    """Rewrite the README's table between its markers; True where it changed."""
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path}: no {BEGIN} ... {END} block to write the table into")
    head, rest = text.split(BEGIN, 1)
    new = head + readme_table() + rest.split(END, 1)[1]
    path.write_text(new)
    return new != text


# ---------------------------------------------------------------- the Benchmarks page
def page(docs: dict[str, dict[str, Any]] | None = None) -> str:
    """The Benchmarks page: per benchmark, its current results files with date, machine, command
    and figures."""
    from caviar.config import catalog, shipped

    docs = load() if docs is None else docs
    current = {n: d for n, d in docs.items() if status(n)[0] != "superseded"}
    parts = ["# Benchmarks", "",
             "Written from `benchmarks/results/*.json` by `benchmarks/figures.py` when the docs are built: no "
             "figure on this page is typed by hand. Each script's command, settings and machine are in its JSON; "
             "how each was run and what it changed is in the [history](benchmark-history.md), which also lists "
             "the superseded and disturbed runs. Rerun a benchmark with the command shown, then rebuild.", "",
             "## What the shipped experiments reached (`caviar experiments`)", ""]
    parts += [f"- `{name}`: {catalog.reached(name) or 'not benchmarked yet'}" for name in shipped.names()]
    names = list(TITLES) + sorted({d.get("benchmark", "?") for d in current.values()} - set(TITLES))
    for bench in names:
        files = [n for n, d in current.items() if d.get("benchmark") == bench]
        if not files:
            continue
        parts += ["", f"## {TITLES.get(bench, bench)}", ""]
        if bench == "search_quality":
            parts += [markdown(search_quality_rows({n: current[n] for n in files})), ""]
        if bench == "multiples":
            parts += [multiples_table(docs), ""]
        for name in files:
            doc = current[name]
            state, why = status(name)
            parts += [f"`{name}`: {when_and_where(doc)}" + (f" ({state}: {why})" if state != "current" else ""), "",
                      f"    {doc.get('command', '(no command recorded)')}", ""]
            table = markdown(goal_rows(doc))
            parts += [table, ""] if table else []
    return "\n".join(parts).rstrip() + "\n"


def status_table(docs: dict[str, dict[str, Any]] | None = None) -> str:
    """Every results file with its date and status, for the history page."""
    docs = load() if docs is None else docs
    rows = [{"results file": n, "benchmark": d.get("benchmark", "?"), "when, machine": when_and_where(d),
             "status": status(n)[0], "why": status(n)[1]} for n, d in docs.items()]
    return markdown(rows)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--readme" in args:
        print("README table " + ("rewritten" if write_readme() else "already current"))
    elif "--check" in args:
        current = readme_table() in README.read_text()
        print("README table current" if current else "README table differs: run python benchmarks/figures.py --readme")
        return 0 if current else 1
    else:
        print(page())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
