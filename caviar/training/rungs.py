"""Budget-aware successive halving, on the trial's side (search.anneal: rung): a learning rate that
anneals to zero at every ASHA rung a trial reaches, per optimizer step.

ASHA judges trials at rungs (1, 3, 9 ... epochs). With a schedule that spans a trial's whole
max_epochs, a trial judged at rung 1 is at the start of its schedule, at a high LR: the rung then
ranks configs by how fast they learn early (Adam at lr 2e-3 won them in caviar's benchmarks),
not by where they end annealed (the short-horizon bias, Wu et al. 2018). Budgeted training (Li,
Yumer & Ramanan, ICLR 2020) found that a schedule annealed to zero at the end of whatever budget
a run has is the best at every budget, and that such short runs rank configs as full-length runs
do. So here the LR anneals, in the trial's own schedule's shape, over each segment between rungs:
to zero at the first rung; a trial promoted past it goes on from that checkpoint on a new
schedule from its initial LR, annealed to zero at the next rung (a warm restart, Loshchilov &
Hutter 2017), and so on to max_epochs. `benchmarks/bench_rungs.py` measures how well each rung
ranks against full-length annealed runs.
"""

from __future__ import annotations

import bisect
import math
from typing import Callable

# A schedule's LR factor at progress p in [0, 1) of one segment, in the shape caviar.training.train's
# per-epoch schedules have over a whole trial.
SHAPES: dict[str, Callable[[float], float]] = {
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
    "constant": lambda p: 1.0,  # nothing to anneal: the rungs judge it as it is
    "step": lambda p: 1.0 if p < 0.5 else 0.1 if p < 0.75 else 0.01,
    "exponential": lambda p: 0.01 ** p,
    "inverse_time": lambda p: 1.0 / (1.0 + 9.0 * p),
}


def segment(ends: tuple[int, ...], t: float) -> tuple[float, float]:
    """The segment [start, end) of the schedule that epoch position `t` (epochs done, fractional) is
    in, where the LR reaches zero at each of `ends` (the rungs, then max_epochs); past the last end,
    the last segment."""
    i = min(bisect.bisect_right(ends, t), len(ends) - 1)
    return (ends[i - 1] if i > 0 else 0.0), float(ends[i])


def lr_factor(schedule: str, ends: tuple[int, ...], t: float) -> float:
    """What the initial LR is multiplied by at epoch position `t` (for the optimizer step taken
    there): the trial's schedule, run over the segment of `ends` that `t` is in."""
    start, end = segment(ends, t)
    return SHAPES[schedule](min(1.0, max(0.0, (t - start) / max(end - start, 1e-9))))
