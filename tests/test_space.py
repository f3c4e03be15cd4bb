"""caviar.search.space: every range samples on its stated scale."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from caviar.config.space import Choice, Range, SpaceConfig
from caviar.search.space import from_sampling_scale, sample, searched, to_param_space, to_sampling_scale

N = 4000


def _draws(**entries) -> list[dict]:
    return sample(SpaceConfig(**entries), N, seed=1)


def test_log_range_is_uniform_in_log10():
    """lr = 10 ** uniform(-6, 1): its log10 is uniform on [-6, 1] (KS test), not the value itself."""
    values = np.array([d["lr"] for d in _draws()])
    assert values.min() >= 1e-6 and values.max() <= 10
    logs = np.log10(values)
    assert stats.kstest((logs + 6) / 7, "uniform").pvalue > 0.01
    assert stats.kstest(values / 10, "uniform").pvalue < 1e-6  # linear sampling would pass this
    # about a seventh of the draws in each decade
    per_decade = np.histogram(logs, bins=7, range=(-6, 1))[0] / N
    assert np.all(np.abs(per_decade - 1 / 7) < 0.03)


def test_one_minus_beta_rule():
    """momentum = 1 - 10 ** uniform(-3, -1): within 0.9..0.999 and log10(1 - beta) uniform."""
    values = np.array([d["momentum"] for d in _draws()])
    assert values.min() >= 0.9 and values.max() <= 0.999
    exponents = np.log10(1 - values)
    assert stats.kstest((exponents + 3) / 2, "uniform").pvalue > 0.01
    # half the draws above 0.99: a linear draw would put only ~10% there
    assert 0.45 < np.mean(values > 0.99) < 0.55


def test_linear_and_integer_ranges():
    """dropout is uniform on its linear scale; integer ranges include both ends."""
    draws = _draws()
    dropout = np.array([d["dropout"] for d in draws])
    assert stats.kstest((dropout - 0.1) / 0.6, "uniform").pvalue > 0.01
    layers = [d["conv_layers"] for d in draws]
    assert set(layers) == {1, 2, 3}
    widths = np.array([d["conv_width"] for d in draws])
    assert widths.min() >= 32 and widths.max() <= 256 and widths.dtype.kind == "i"
    # log_int: as many draws in 32..64 as in 128..256
    low, high = np.mean(widths < 64), np.mean(widths >= 128)
    assert abs(low - high) < 0.05


def test_choices_and_fixed_values():
    """A list is a uniform choice; a scalar is fixed in every trial and not 'searched'."""
    draws = _draws(optimizer=["adam", "sgd"], lr=0.01)
    assert {d["optimizer"] for d in draws} == {"adam", "sgd"}
    assert {d["lr"] for d in draws} == {0.01}
    space = SpaceConfig(optimizer=["adam", "sgd"], lr=0.01)
    assert "lr" not in searched(space) and isinstance(searched(space)["optimizer"], Choice)


def test_every_trial_gets_a_seed():
    """Each trial draws its own seed, so a leaderboard row is enough to re-run it."""
    seeds = [d["seed"] for d in sample(SpaceConfig(), 50, seed=0)]
    assert len(set(seeds)) == 50
    assert "seed" in to_param_space(SpaceConfig())


@pytest.mark.parametrize("scale,value", [("log", 3e-4), ("one_minus_log", 0.99), ("linear", 0.3), ("log_int", 64)])
def test_sampling_scale_round_trip(scale, value):
    """to_sampling_scale and from_sampling_scale are inverses (log10 for log scales, 1-beta for momentum)."""
    assert math.isclose(from_sampling_scale(to_sampling_scale(value, scale), scale), value, rel_tol=1e-9)
    if scale == "one_minus_log":
        assert to_sampling_scale(value, scale) == pytest.approx(-2)


def test_sampling_is_repeatable():
    """The same seed draws the same configs."""
    assert sample(SpaceConfig(), 5, seed=3) == sample(SpaceConfig(), 5, seed=3)
    assert sample(SpaceConfig(), 5, seed=3) != sample(SpaceConfig(), 5, seed=4)


def test_range_model_rules():
    """Range validation: low < high, positive log bounds, whole-number integer bounds."""
    with pytest.raises(ValueError, match="must be below high"):
        Range(low=2, high=1)
    with pytest.raises(ValueError, match="needs low > 0"):
        Range(low=0, high=1, scale="log")
    with pytest.raises(ValueError, match="whole-number"):
        Range(low=1.5, high=3, scale="int")


BY_OPTIMIZER = {"adam": {"low": 1e-4, "high": 1e-2, "scale": "log"}, "nesterov": {"low": 1e-2, "high": 1.0,
                                                                                  "scale": "log"}}


def test_lr_per_optimizer_through_rays_generator():
    """Ray's own variant generator (what a sweep uses) draws each trial's lr from its optimizer's
    range, log-uniform there; both optimizers are drawn; the same seed gives the same trials."""
    from ray.tune.search.sample import _BackwardsCompatibleNumpyRng
    from ray.tune.search.variant_generator import generate_variants

    space = SpaceConfig(lr=BY_OPTIMIZER, optimizer=["adam", "nesterov"])

    def draws(seed: int) -> list[tuple[str, float]]:
        rng = _BackwardsCompatibleNumpyRng(np.random.default_rng(seed))
        return [(spec["config"]["optimizer"], spec["config"]["lr"]) for _ in range(400)
                for _, spec in generate_variants({"config": to_param_space(space)}, random_state=rng)]

    drawn = draws(3)
    adam = np.log10([lr for opt, lr in drawn if opt == "adam"])
    nesterov = np.log10([lr for opt, lr in drawn if opt == "nesterov"])
    assert len(adam) > 100 and len(nesterov) > 100
    assert adam.min() >= -4 and adam.max() <= -2 and nesterov.min() >= -2 and nesterov.max() <= 0
    assert stats.kstest((adam + 4) / 2, "uniform").pvalue > 0.01
    assert draws(3) == drawn


def test_lr_per_optimizer_in_tpe():
    """Optuna's define-by-run space suggests lr_<optimizer> within that optimizer's range."""
    optuna = pytest.importorskip("optuna")
    from caviar.search.space import OptunaDefineByRun

    define = OptunaDefineByRun(SpaceConfig(lr=BY_OPTIMIZER, optimizer=["adam", "nesterov"]), seed=0)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(40):
        trial = study.ask()
        extra = define(trial)
        low, high = {"adam": (1e-4, 1e-2), "nesterov": (1e-2, 1.0)}[trial.params["optimizer"]]
        assert low <= extra["lr"] <= high and f"lr_{trial.params['optimizer']}" in trial.params
        study.tell(trial, 0.5)


def test_lr_per_optimizer_needs_every_optimizer():
    from caviar.config.loading import load_config
    from caviar.errors import ConfigError

    with pytest.raises(ConfigError, match="no learning-rate range for optimizer 'sgd'"):
        load_config(space__lr=BY_OPTIMIZER, space__optimizer=["adam", "sgd"])
    with pytest.raises(ConfigError, match="'adma' is neither a range key"):
        load_config(space__lr={"adma": BY_OPTIMIZER["adam"]}, space__optimizer="adam")
    assert load_config(space__lr=BY_OPTIMIZER, space__optimizer="adam").space.lr["adam"].high == 1e-2


def test_a_resnet_space_leaves_the_convnet_shape_out():
    """The ResNet-9 ignores conv_layers/conv_width/fc_layers/fc_width, so a resnet experiment
    neither draws them nor warns about them (drawn, they were noise: "best value on the border:
    conv_layers" fired for a ResNet); a saved experiment that lists them still loads; a convnet
    experiment keeps them."""
    import pandas as pd

    from caviar.config.loading import load_config
    from caviar.config.space import CONVNET_SHAPE
    from caviar.results.border import border_warnings

    resnet = load_config(model__family="resnet", space__conv_width={"low": 32, "high": 256, "scale": "log_int"})
    assert all(getattr(resnet.space, name) is None for name in CONVNET_SHAPE)
    assert not set(CONVNET_SHAPE) & (set(to_param_space(resnet.space)) | set(searched(resnet.space))
                                     | set(sample(resnet.space, 1)[0]))
    assert load_config(resnet.to_dict()).space == resnet.space  # written to caviar.yaml and read back
    # a leaderboard whose best trials sit at conv_layers' top edge: a convnet is warned, a ResNet not
    table = pd.DataFrame({"best_val_acc": np.linspace(0.5, 0.9, 12), "conv_layers": [1] * 6 + [3] * 6,
                          "lr": [0.01] * 12})
    convnet = load_config()
    assert convnet.space.conv_layers == Range(low=1, high=3, scale="int")
    assert [w["param"] for w in border_warnings(table, convnet.space)] == ["conv_layers"]
    assert border_warnings(table, resnet.space) == []
    # a leaderboard saved before the rule (conv_layers drawn) trains its winners again without it
    from caviar.sweeps.stages import top_points

    assert "conv_layers" not in top_points(table.assign(seed=1), resnet.space, 1, 2)[0]
    assert top_points(table.assign(seed=1), convnet.space, 1, 2)[0]["conv_layers"] == 3


def test_a_stage_asking_for_more_members_than_scored_trials_gets_new_seeds_of_the_best():
    """from_top 5 after a stage that scored 2 trials: 5 configs, the best two in turn, every seed new
    and distinct; the first lap's seeds are what a stage with enough trials draws."""
    import pandas as pd

    from caviar.config.loading import load_config
    from caviar.sweeps.stages import top_points

    table = pd.DataFrame({"best_val_acc": [0.7, 0.9, None], "lr": [0.01, 0.1, 0.5], "seed": [3, 4, 5],
                          "status": ["completed", "completed", "errored"]})
    space = load_config().space
    points = top_points(table, space, 5, 2)
    assert [p["lr"] for p in points] == [0.1, 0.01, 0.1, 0.01, 0.1]
    assert len({p["seed"] for p in points}) == 5
    assert [p["seed"] for p in points[:2]] == [p["seed"] for p in top_points(table, space, 2, 2)]
    assert top_points(table.iloc[0:0], space, 3, 2) == []
