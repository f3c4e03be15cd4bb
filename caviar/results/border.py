"""Best value on the border: after a sweep, flag numeric ranges whose best trial sits at an edge.

The notes' warning: if the best learning rate lies at the edge of the searched range, a better
one may lie beyond it, so the range was too narrow. For each numeric range ({low, high, scale}),
a trial's *position* is where its value sits on the range in the range's sampling scale (0 at
`low`, 1 at `high`; log10 for `log`, log10(1 - beta) for `one_minus_log`). The warning fires when
the best trial's position is within `fraction` (search.border_fraction, default 0.1) of 0 or 1,
unless that edge is already a hard limit (dropout 0, one layer, momentum 0: nothing lies beyond).
It suggests the range widened past that edge by `widen` x its width in sampling scale, and says
how many of the top trials sit in the same outer zone (one lucky trial, or a trend?).

Staged sweeps (caviar.sweeps.stages) use the same rule: the next stage widens past the edge instead of
narrowing around the top trials.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from caviar.config.scales import from_sampling_scale, searched, to_sampling_scale
from caviar.config.space import Range, SpaceConfig

# Statuses whose score says nothing about the hyperparameters' quality.
UNSCORED = ("diverged", "error")
# Bounds beyond which a hyperparameter means nothing or nothing trains (values, inclusive).
# Scales add their own: linear >= 0, integers >= 1, log > 0, one_minus_log in [0, 1). Momentum
# past 0.999 averages over 1000+ steps, more than a sweep's trials take; lr 10 and weight decay
# 0.1 are already where training diverges; dropout 0.9 keeps one unit in ten.
HARD_LIMITS: dict[str, tuple[float, float]] = {
    "dropout": (0.0, 0.9), "conv_layers": (1, 5), "momentum": (0.0, 0.999), "lr": (0.0, 10.0),
    "weight_decay": (0.0, 0.1), "conv_width": (1, 1024), "fc_width": (1, 1024), "fc_layers": (1, 4),
    "crop": (0, 16), "cutout": (0, 32),
}
# Evidence before an edge counts: at least this many scored trials, and at least half the top
# trials (two at least) in the same outer zone. One lucky trial at an edge is noise.
MIN_SCORED = 8


def scored(table: pd.DataFrame) -> pd.DataFrame:
    """Trials with a score, best first (diverged and errored trials left out)."""
    if table.empty or "best_val_acc" not in table:
        return table.iloc[0:0]
    keep = table["best_val_acc"].notna()
    if "status" in table:
        keep &= ~table["status"].isin(UNSCORED)
    return table[keep].sort_values("best_val_acc", ascending=False, kind="stable").reset_index(drop=True)


def top_count(n: int, top: int | float) -> int:
    """How many of `n` scored trials count as "top": a fraction (float <= 1) or a count (int)."""
    if n <= 0:
        return 0
    count = int(top) if isinstance(top, int) or top > 1 else math.ceil(top * n)
    return max(1, min(n, count))


def position(value: float, param: Range) -> float:
    """Where `value` sits on `param` in its sampling scale: 0 at low, 1 at high."""
    lo, hi = (to_sampling_scale(v, param.scale) for v in (param.low, param.high))
    return (to_sampling_scale(float(value), param.scale) - lo) / (hi - lo)


def at_position(p: float, param: Range) -> float:
    """Inverse of :func:`position` (p outside 0..1 lies beyond the range)."""
    lo, hi = (to_sampling_scale(v, param.scale) for v in (param.low, param.high))
    return from_sampling_scale(lo + p * (hi - lo), param.scale)


def limits(name: str, scale: str) -> tuple[float, float]:
    """The values a range of `name` on `scale` may reach (inclusive; log's 0 is never reached)."""
    if name in HARD_LIMITS:
        return HARD_LIMITS[name]
    if scale in ("int", "log_int"):
        return 1, math.inf
    if scale == "one_minus_log":
        return 0.0, 1.0 - 1e-6
    return 0.0, math.inf


def clip_value(name: str, param: Range, value: float) -> float:
    lo, hi = limits(name, param.scale)
    return min(max(value, lo), hi)


def widened(name: str, param: Range, edge: str, amount: float) -> Range | None:
    """`param` with its `edge` ("low" or "high") moved outward by `amount` x its sampling-scale
    width, clipped at the hard limits; None when that edge cannot move (it is at a limit)."""
    p = -amount if edge == "low" else 1.0 + amount
    value = clip_value(name, param, at_position(p, param))
    if param.scale in ("int", "log_int"):  # whole numbers, at least one step further
        value = min(math.floor(value), param.low - 1) if edge == "low" else max(math.ceil(value), param.high + 1)
        value = clip_value(name, param, value)
    old = param.low if edge == "low" else param.high
    if value == old:
        return None
    low, high = (value, param.high) if edge == "low" else (param.low, value)
    return Range(low=low, high=high, scale=param.scale)


def edge_of(p: float, fraction: float) -> str | None:
    if p <= fraction:
        return "low"
    if p >= 1.0 - fraction:
        return "high"
    return None


def edge_with_evidence(ranked: pd.DataFrame, name: str, param: Range, fraction: float,
                       k: int) -> tuple[str | None, int, list[float]]:
    """The edge ("low"/"high") where the best of `ranked` (scored, best first) sits *and* the
    evidence backs it, with how many of the top `k` sit in that zone and their positions.

    None when fewer than MIN_SCORED trials are scored, when fewer than half of the top trials (two
    at least) share the zone, or for a two-value integer range, where every value is an edge.
    """
    positions = [position(float(v), param) for v in ranked[name].head(k) if pd.notna(v)]
    if len(ranked) < MIN_SCORED or not positions:
        return None, 0, positions
    if param.scale in ("int", "log_int") and param.high - param.low < 2:
        return None, 0, positions
    edge = edge_of(position(float(ranked.loc[0, name]), param), fraction)
    near = sum(edge_of(q, fraction) == edge for q in positions) if edge else 0
    if edge is None or near < max(2, math.ceil(len(positions) / 2)):
        return None, near, positions
    return edge, near, positions


def fmt(value: float, scale: str) -> str:
    """A value as a person reads it: 3e-04 for log scales, 0.999 for momentum, 64 for integers."""
    if scale in ("int", "log_int"):
        return str(int(round(value)))
    if scale == "log":
        return f"{value:.2g}"
    if scale == "one_minus_log":
        return f"{value:.6g}"
    return f"{value:.3g}"


def fmt_range(param: Range) -> str:
    return f"{fmt(param.low, param.scale)}..{fmt(param.high, param.scale)} ({param.scale})"


def border_warnings(
    table: pd.DataFrame, space: SpaceConfig, fraction: float = 0.1, top: int | float = 0.25, widen: float = 0.5
) -> list[dict[str, Any]]:
    """One warning per numeric range whose best trial sits in its outer `fraction`, best first.

    `table` is a leaderboard (one row per trial, a column per hyperparameter, `best_val_acc`).
    """
    ranked = scored(table)
    if ranked.empty:
        return []
    k = top_count(len(ranked), top)
    warnings = []
    for name, param in searched(space).items():
        if not isinstance(param, Range) or name not in ranked or pd.isna(ranked.loc[0, name]):
            continue
        best = float(ranked.loc[0, name])
        p = position(best, param)
        edge, near, positions = edge_with_evidence(ranked, name, param, fraction, k)
        suggestion = widened(name, param, edge, widen) if edge else None
        if suggestion is None:
            continue
        warnings.append({
            "param": name,
            "edge": edge,
            "best_value": best,
            "position": round(p, 4),
            "range": [param.low, param.high],
            "scale": param.scale,
            "top_in_zone": near,
            "top": len(positions),
            "suggested": [suggestion.low, suggestion.high],
            "message": (
                f"{name}: the best trial ({fmt(best, param.scale)}) sits in the outer {fraction:.0%} of "
                f"{fmt_range(param)} at its {edge} edge ({near} of the top {len(positions)} trials sit there); "
                f"a better value may lie beyond. Try {name}: {fmt(suggestion.low, param.scale)}.."
                f"{fmt(suggestion.high, param.scale)}"
            ),
        })
    return warnings


def format_warnings(warnings: list[dict[str, Any]]) -> str:
    return "\n".join(f"WARNING best value on the border: {w['message']}" for w in warnings)
