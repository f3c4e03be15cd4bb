"""caviar.results.border: the best value on the border of a range is flagged, with a wider range; otherwise silence."""

from __future__ import annotations

import pandas as pd
import pytest

from caviar.config.space import Range, SpaceConfig
from caviar.results.border import border_warnings, position, top_count, widened


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


def with_fillers(values: dict[str, list], accs: list[float], filler: dict[str, float], n: int = 8) -> pd.DataFrame:
    """`values` as the best trials, then worse trials at `filler` values up to `n` scored trials."""
    extra = n - len(accs)
    values = {k: v + [filler[k]] * extra for k, v in values.items()}
    return table(values, accs + [0.3 - 0.01 * i for i in range(extra)])


def test_position_is_in_sampling_scale():
    """1e-3 is the middle of 1e-5..1e-1 on a log scale; 1 - beta decides momentum's position."""
    assert position(1e-3, Range(**LR)) == pytest.approx(0.5)
    momentum = Range(low=0.9, high=0.999, scale="one_minus_log")
    assert position(0.99, momentum) == pytest.approx(0.5)
    assert position(0.999, momentum) == pytest.approx(1.0)


def test_best_at_high_edge_warns_with_wider_range():
    """Best two lrs at 8e-2, 6e-2 (outer 10% in log10 at the top) of 8: warning names lr, the high
    edge, and 1e-5..10."""
    t = with_fillers({"lr": [8e-2, 6e-2]}, [0.9, 0.85], {"lr": 1e-3})
    (w,) = border_warnings(t, space(lr=LR))
    assert w["param"] == "lr" and w["edge"] == "high"
    assert w["suggested"][0] == pytest.approx(1e-5) and w["suggested"][1] == pytest.approx(10.0)
    assert w["top_in_zone"] == 2 and w["top"] == 2  # top 25% of 8 trials = 2
    assert "lr" in w["message"] and "high edge" in w["message"] and "try lr: 1e-05..10" in w["message"].lower()


def test_best_at_low_edge_of_one_minus_log_widens_toward_zero():
    """momentum 0.9..0.99, best 0.901 (the low edge): suggest a lower bound further from 1."""
    t = with_fillers({"momentum": [0.901, 0.902]}, [0.9, 0.89], {"momentum": 0.95})
    (w,) = border_warnings(t, space(momentum={"low": 0.9, "high": 0.99, "scale": "one_minus_log"}))
    assert w["edge"] == "low" and w["suggested"][1] == pytest.approx(0.99)
    assert w["suggested"][0] == pytest.approx(1 - 10 ** -0.5)  # 1 - beta widened by half a decade


def test_silent_when_best_is_inside():
    """Best lr at 1e-3 (the middle): no warning, even if worse trials sit at the edges."""
    t = with_fillers({"lr": [1e-3, 2e-3, 9e-2, 1.1e-5]}, [0.9, 0.88, 0.5, 0.4], {"lr": 9e-2})
    assert border_warnings(t, space(lr=LR)) == []


def test_diverged_trials_do_not_count():
    """A diverged trial at the edge with a (bogus) high score is ignored; the best scored one is inside."""
    t = table({"lr": [9e-2, 1e-3]}, [0.95, 0.9], ["diverged", "completed"])
    assert border_warnings(t, space(lr=LR)) == []


def test_silent_at_a_hard_limit():
    """Dropout best at 0 (its range's low edge) cannot widen below 0: no warning; int layers stop at 1."""
    t = with_fillers({"dropout": [0.0, 0.01], "conv_layers": [1, 1]}, [0.9, 0.89], {"dropout": 0.3, "conv_layers": 2})
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
    t = with_fillers({"lr": [best, best]}, [0.9, 0.89], {"lr": 1e-4})
    assert border_warnings(t, space(lr=LR), fraction=0.1) == []
    assert [w["edge"] for w in border_warnings(t, space(lr=LR), fraction=0.2)] == ["high"]


def test_top_count():
    """top is a fraction of the scored trials (at least one) or a count."""
    assert top_count(10, 0.25) == 3 and top_count(3, 0.1) == 1 and top_count(10, 4) == 4 and top_count(2, 5) == 2
    assert top_count(0, 0.25) == 0


def test_one_lucky_trial_at_the_edge_is_not_evidence():
    """Best lr at the edge but the runner-up in the middle (1 of the top 2): silent."""
    t = with_fillers({"lr": [8e-2, 1e-3]}, [0.9, 0.89], {"lr": 1e-3})
    assert border_warnings(t, space(lr=LR)) == []
    assert len(border_warnings(with_fillers({"lr": [8e-2, 7e-2]}, [0.9, 0.89], {"lr": 1e-3}), space(lr=LR))) == 1


def test_too_few_scored_trials_say_nothing():
    """After an interrupted sweep with one or a few scored trials, however edgy: silent (MIN_SCORED = 8)."""
    t = table({"lr": [8e-2, 7e-2, 9e-2]}, [0.9, 0.85, 0.8])
    assert border_warnings(t, space(lr=LR)) == []
    unscored = with_fillers({"lr": [8e-2, 7e-2]}, [0.9, 0.85], {"lr": 1e-3})
    unscored.loc[4:, "status"] = "diverged"  # 4 scored left
    assert border_warnings(unscored, space(lr=LR)) == []


def test_two_value_integer_range_never_warns():
    """fc_layers 1..2: both values are edges, so an edge says nothing; 1..3 at its high edge does warn."""
    two = with_fillers({"fc_layers": [2, 2]}, [0.9, 0.89], {"fc_layers": 1})
    assert border_warnings(two, space(fc_layers={"low": 1, "high": 2, "scale": "int"})) == []
    three = with_fillers({"fc_layers": [3, 3]}, [0.9, 0.89], {"fc_layers": 2})
    assert [w["param"] for w in border_warnings(three, space(fc_layers={"low": 1, "high": 3, "scale": "int"}))] == [
        "fc_layers"]


def test_widening_stays_within_meaning():
    """Momentum stops at 0.999 (a range already there cannot widen); lr at 10; dropout at 0.9."""
    assert widened("momentum", Range(low=0.9, high=0.999, scale="one_minus_log"), "high", 0.5) is None
    assert widened("momentum", Range(low=0.9, high=0.99, scale="one_minus_log"), "high", 2.0).high == 0.999
    assert widened("lr", Range(low=1e-3, high=5.0, scale="log"), "high", 0.5).high == 10.0
    assert widened("dropout", Range(low=0.1, high=0.8, scale="linear"), "high", 0.5).high == 0.9
