"""caviar.border: the best value on the border of a range is flagged, with a wider range; otherwise silence."""

from __future__ import annotations

import pandas as pd
import pytest

from caviar.border import border_warnings, position, top_count, widened
from caviar.config import Range, SpaceConfig


def space(**entries) -> SpaceConfig:
    fixed = dict(lr=1e-3, weight_decay=1e-4, dropout=0.2, momentum=0.9, batch_size=64, conv_layers=2, conv_width=32,
                 fc_layers=1, fc_width=64, optimizer="adam", lr_schedule="constant", init="he", batch_norm=True,
                 activation="relu", grad_clip=0)
    return SpaceConfig(**(fixed | entries))


def table(values: dict[str, list], accs: list[float], statuses: list[str] | None = None) -> pd.DataFrame:
    rows = pd.DataFrame(values)
    rows["best_val_acc"] = accs
    rows["status"] = statuses or ["completed"] * len(accs)
    rows["trial_id"] = [f"t{i}" for i in range(len(accs))]
    return rows


LR = {"low": 1e-5, "high": 1e-1, "scale": "log"}  # 4 decades; the outer 10% is 0.4 decades


def test_position_is_in_sampling_scale():
    """1e-3 is the middle of 1e-5..1e-1 on a log scale; 1 - beta decides momentum's position."""
    assert position(1e-3, Range(**LR)) == pytest.approx(0.5)
    momentum = Range(low=0.9, high=0.999, scale="one_minus_log")
    assert position(0.99, momentum) == pytest.approx(0.5)
    assert position(0.999, momentum) == pytest.approx(1.0)


def test_best_at_high_edge_warns_with_wider_range():
    """Best lr at 8e-2 (outer 10% in log10 at the top): warning names lr, the high edge, and 1e-5..10."""
    t = table({"lr": [8e-2, 1e-3, 1e-4, 3e-2]}, [0.9, 0.5, 0.4, 0.8])
    (w,) = border_warnings(t, space(lr=LR))
    assert w["param"] == "lr" and w["edge"] == "high"
    assert w["suggested"][0] == pytest.approx(1e-5) and w["suggested"][1] == pytest.approx(10.0)
    assert w["top_in_zone"] == 1 and w["top"] == 1  # top 25% of 4 trials = 1
    assert "lr" in w["message"] and "high edge" in w["message"] and "try lr: 1e-05..10" in w["message"].lower()


def test_best_at_low_edge_of_one_minus_log_widens_toward_zero():
    """momentum 0.9..0.99, best 0.901 (the low edge): suggest a lower bound further from 1."""
    t = table({"momentum": [0.901, 0.95, 0.97]}, [0.9, 0.5, 0.4])
    (w,) = border_warnings(t, space(momentum={"low": 0.9, "high": 0.99, "scale": "one_minus_log"}))
    assert w["edge"] == "low" and w["suggested"][1] == pytest.approx(0.99)
    assert w["suggested"][0] == pytest.approx(1 - 10 ** -0.5)  # 1 - beta widened by half a decade


def test_silent_when_best_is_inside():
    """Best lr at 1e-3 (the middle): no warning, even if worse trials sit at the edges."""
    t = table({"lr": [1e-3, 9e-2, 1.1e-5]}, [0.9, 0.5, 0.4])
    assert border_warnings(t, space(lr=LR)) == []


def test_diverged_trials_do_not_count():
    """A diverged trial at the edge with a (bogus) high score is ignored; the best scored one is inside."""
    t = table({"lr": [9e-2, 1e-3]}, [0.95, 0.9], ["diverged", "completed"])
    assert border_warnings(t, space(lr=LR)) == []


def test_silent_at_a_hard_limit():
    """Dropout best at 0 (its range's low edge) cannot widen below 0: no warning; int layers stop at 1."""
    t = table({"dropout": [0.0, 0.3], "conv_layers": [1, 2]}, [0.9, 0.5])
    s = space(dropout={"low": 0.0, "high": 0.5, "scale": "linear"}, conv_layers={"low": 1, "high": 3, "scale": "int"})
    assert border_warnings(t, s) == []


def test_integer_range_widens_by_whole_numbers():
    """conv_layers 1..3 with the best at 3 suggests 1..4; widths widen on a log scale."""
    assert widened("conv_layers", Range(low=1, high=3, scale="int"), "high", 0.5).high == 4
    wider = widened("conv_width", Range(low=32, high=256, scale="log_int"), "high", 0.5)
    assert wider.high == 725 and wider.low == 32  # 10 ** (log10 256 + 0.5 * log10 8) rounded up


def test_fraction_is_configurable():
    """lr at the 85% position: silent at border_fraction 0.1, flagged at 0.2."""
    best = 10 ** (-5 + 0.85 * 4)
    t = table({"lr": [best, 1e-4]}, [0.9, 0.1])
    assert border_warnings(t, space(lr=LR), fraction=0.1) == []
    assert [w["edge"] for w in border_warnings(t, space(lr=LR), fraction=0.2)] == ["high"]


def test_top_count():
    """top is a fraction of the scored trials (at least one) or a count."""
    assert top_count(10, 0.25) == 3 and top_count(3, 0.1) == 1 and top_count(10, 4) == 4 and top_count(2, 5) == 2
    assert top_count(0, 0.25) == 0
