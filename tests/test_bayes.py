"""search.algorithm: tpe runs Ray Tune's OptunaSearch over the same space (one_minus_log included)."""

from __future__ import annotations

import sys

import pytest
from test_sweep import small_config

import caviar
from caviar.config.loading import load_config
from caviar.config.space import SpaceConfig
from caviar.errors import ConfigError
from caviar.search.space import OptunaDefineByRun

optuna = pytest.importorskip("optuna", reason="the bayes extra: pip install 'caviar[bayes]'")


def test_define_by_run_follows_the_scales():
    """TPE's first (random) draws stay in range; momentum is drawn as 1 - beta on a log scale; seeds differ."""
    space = SpaceConfig(momentum={"low": 0.9, "high": 0.999, "scale": "one_minus_log"},
                        conv_width={"low": 8, "high": 64, "scale": "log_int"}, optimizer=["adam", "sgd"])
    define = OptunaDefineByRun(space, seed=0)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0), direction="maximize")
    seeds = set()
    for _ in range(20):
        trial = study.ask()
        extra = define(trial)
        beta = extra["momentum"]
        assert 0.9 <= beta <= 0.999 and beta == pytest.approx(1 - trial.params["one_minus_momentum"])
        assert 8 <= trial.params["conv_width"] <= 64 and trial.params["optimizer"] in ("adam", "sgd")
        assert isinstance(trial.distributions["one_minus_momentum"], optuna.distributions.FloatDistribution)
        assert trial.distributions["one_minus_momentum"].log
        seeds.add(extra["seed"])
        study.tell(trial, beta)
    assert len(seeds) == 20


def test_tpe_sweep_runs_with_asha(ray_session, learnable_root, tmp_path):
    """A real TPE sweep with the ASHA scheduler: every trial reports, values inside the ranges."""
    tree = small_config(learnable_root, tmp_path, "tpe", num_samples=4, max_epochs=2, algorithm="tpe",
                        max_concurrent=2)
    tree["space"] |= {"lr": {"low": 1e-3, "high": 1e-2, "scale": "log"},
                      "momentum": {"low": 0.8, "high": 0.99, "scale": "one_minus_log"}, "optimizer": ["adam", "momentum"]}
    result = caviar.sweep(load_config(tree))
    table = result.trials
    assert len(table) == 4 and table["status"].isin(["completed", "early-stopped"]).all()
    assert table["lr"].between(1e-3, 1e-2).all() and table["momentum"].between(0.8, 0.99).all()
    assert (table["momentum"] - (1 - table["one_minus_momentum"])).abs().max() < 1e-12
    assert table["seed"].nunique() == 4 and result.best["best_val_acc"] > 0.3


def test_tpe_without_optuna_says_how_to_install(monkeypatch):
    """Without Optuna, a tpe sweep stops before starting with the pip command."""
    from caviar.search import tuning

    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ConfigError, match=r"caviar\[bayes\]"):
        tuning.search_alg(load_config(None, ["search.algorithm=tpe"]))
