"""Coarse-to-fine: the space of the next stage from the results of the last (caviar.sweeps.stages).

The rule from stage i to stage i+1 (settings `top`, `pad`, `widen` of stage i):

- the top trials are the best `top` (fraction, or a count) of stage i's scored trials;
- a numeric range becomes the span of the top trials' values in its sampling scale (log10 for
  `log`, log10(1 - beta) for `one_minus_log`), padded by `pad` x the old width on each side and
  kept inside the old range; integer ranges round to whole numbers (a range of one value becomes
  a fixed value);
- but if the best trial sits in the outer `search.border_fraction` of the range (caviar.results.border),
  that side moves *past* the edge by `widen` x the old width instead;
- a categorical entry keeps the choices that appear among the top trials, and every choice too
  few scored trials tried to judge (fewer than MIN_TRIES), so that a short stage's noise cannot
  drop one.

Nothing narrows on thin evidence: with fewer than caviar.results.border.MIN_SCORED scored trials the space
is kept as it is, and an edge moves only when the evidence rule of caviar.results.border holds.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from caviar.config.scales import searched
from caviar.config.schema import StageConfig
from caviar.config.space import Choice, Range, Scalar, SpaceConfig
from caviar.errors import CaviarError
from caviar.results.border import (
    MIN_SCORED,
    at_position,
    clip_value,
    edge_with_evidence,
    fmt,
    fmt_range,
    position,
    scored,
    top_count,
    widened,
)


def _same(a: Any, b: Any) -> bool:
    """Choice equality across a CSV round trip (64 vs 64.0, True vs 'True')."""
    if isinstance(a, bool) or isinstance(b, bool):
        return str(a).lower() == str(b).lower()
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def param_spec(param: Range | Choice | Scalar) -> dict[str, Any] | Scalar:
    """A space entry as the plain value, {low, high, scale} or {choices} that configs and stages.json hold."""
    if isinstance(param, Range):
        return {"low": param.low, "high": param.high, "scale": param.scale}
    if isinstance(param, Choice):
        return {"choices": list(param.choices)}
    return param


# A choice is dropped only if at least this many scored trials tried it and none made the top.
MIN_TRIES = 3


def _narrow_choice(name: str, param: Choice, values: pd.Series, k: int,
                   tried: pd.Series | None = None) -> tuple[Any, dict[str, Any]]:
    tried = values if tried is None else tried
    untested = [c for c in param.choices if sum(_same(c, v) for v in tried) < MIN_TRIES]
    kept = [c for c in param.choices if any(_same(c, v) for v in values) or c in untested]
    dropped = [c for c in param.choices if c not in kept]
    if not kept:  # the column holds nothing we recognise: leave the entry alone
        return param, {"action": "kept", "why": f"{name}: no top trial value matches a choice; kept as is"}
    new = Choice(choices=kept)
    if dropped:
        why = f"{name}: kept {kept}, the choices among the top {k} trials"
        why += f" or tried by fewer than {MIN_TRIES} trials ({untested})" if untested else ""
        why += f"; dropped {dropped}"
        return new, {"action": "pruned", "dropped": dropped, "why": why}
    return new, {"action": "kept", "why": f"{name}: every choice {kept} appears among the top {k} trials"}


def _narrow_range(
    name: str, param: Range, values: list[float], best: float, stage: StageConfig, edge: str | None, fraction: float
) -> tuple[Any, dict[str, Any]]:
    positions = [position(v, param) for v in values]
    lo, hi = min(positions) - stage.pad, max(positions) + stage.pad
    lo, hi = max(lo, 0.0), min(hi, 1.0)  # narrowing stays inside the old range
    wider = widened(name, param, edge, stage.widen) if edge else None
    low, high = at_position(lo, param), at_position(hi, param)
    if param.scale == "one_minus_log":  # positions run with the value: low stays below high
        low, high = min(low, high), max(low, high)
    if wider is not None:
        low, high = (wider.low, high) if edge == "low" else (low, wider.high)
    low, high = clip_value(name, param, low), clip_value(name, param, high)
    if param.scale in ("int", "log_int"):
        low = wider.low if wider is not None and edge == "low" else round(low)
        high = wider.high if wider is not None and edge == "high" else round(high)
    axis = {"log": "log10", "log_int": "log10", "one_minus_log": "log10(1 - value)"}.get(param.scale, "linear")
    span = f"{fmt(min(values), param.scale)}..{fmt(max(values), param.scale)}"
    why = f"{name}: the top {len(values)} trials span {span}"
    if wider is not None:
        action = f"widened-{edge}"
        why += (f"; the best ({fmt(best, param.scale)}) sits in the outer {fraction:.0%} at the {edge} edge, so "
                f"that side moves past it by {stage.widen:g} x the width ({axis})")
    else:
        action = "narrowed"
        why += f"; padded by {stage.pad:g} x the old width ({axis}) and kept inside {fmt_range(param)}"
    if low >= high:  # every top trial agrees on an integer (or pad is 0 and one trial is on top)
        value = int(low) if param.scale in ("int", "log_int") else float(low)
        return value, {"action": "fixed", "why": f"{why}: fixed at {fmt(value, param.scale)}"}
    new = Range(low=low, high=high, scale=param.scale)
    return new, {"action": action, "why": f"{why} -> {fmt_range(new)}"}


def next_space(
    space: SpaceConfig, table: pd.DataFrame, stage: StageConfig, fraction: float = 0.1
) -> tuple[SpaceConfig, dict[str, Any]]:
    """The space of the stage after `stage`, from its leaderboard, and the rule for every entry.

    Raises CaviarError when no trial of the stage has a score (nothing to narrow around).
    """
    ranked = scored(table)
    if ranked.empty:
        raise CaviarError(f"stage {stage.name!r} has no scored trial (all diverged or failed); fix its space "
                          "and rerun it with --stage")
    k = top_count(len(ranked), stage.top)
    top = ranked.head(k)
    header = {"top_trials": list(top["trial_id"]) if "trial_id" in top else [], "top": k, "scored": len(ranked)}
    if len(ranked) < MIN_SCORED:
        why = f"only {len(ranked)} scored trials (fewer than {MIN_SCORED}): too few to narrow on; kept as is"
        rules = {name: {"action": "kept", "why": f"{name}: {why}"} for name in searched(space)}
        return space, {"header": header, "params": rules}
    entries = space.model_dump()
    rules: dict[str, Any] = {}
    for name, param in searched(space).items():
        if name not in top:
            rules[name] = {"action": "kept", "why": f"{name}: not in the results; kept as is"}
            continue
        column = top[name].dropna()
        if isinstance(param, Choice):
            new, rule = _narrow_choice(name, param, column, k, ranked[name].dropna())
        else:
            edge = edge_with_evidence(ranked, name, param, fraction, k)[0]
            new, rule = _narrow_range(name, param, [float(v) for v in column], float(top[name].iloc[0]), stage,
                                      edge, fraction)
        entries[name] = param_spec(new)
        rules[name] = {"from": param_spec(param), "to": param_spec(new), **rule}
        if isinstance(param, Range):
            rules[name]["top_values"] = [float(v) for v in column]
    return SpaceConfig.model_validate(entries), {"header": header, "params": rules}
