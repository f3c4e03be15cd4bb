"""benchmarks/: every script runs in its tiny configuration, prints its table and writes its JSON.

Only the shape of the output is checked (so the scripts cannot rot); no test asserts a timing.
Scripts that run sweeps reuse the session's Ray instance instead of starting their own.
"""

from __future__ import annotations

import importlib
import json
import sys
import time

import pytest
from conftest import REPO

BENCHMARKS = REPO / "benchmarks"
TOP_KEYS = {"benchmark", "command", "machine", "settings", "results", "goals"}


def run(name: str, tmp_path, capsys, *extra: str) -> tuple[str, dict]:
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    module = importlib.import_module(f"bench_{name}")
    out = tmp_path / f"{name}.json"
    module.main(["--tiny", "--out", str(out), "--workdir", str(tmp_path / "work"), *extra])
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert TOP_KEYS <= data.keys()
    assert data["benchmark"] == name and f"benchmarks/bench_{name}.py" in data["command"]
    assert {"cpu", "nproc", "date_utc", "torch", "ray"} <= data["machine"].keys()
    return printed, data


def test_throughput(tmp_path, capsys):
    """Both pipelines on each model; a table row and a ratio per model; goals named."""
    printed, data = run("throughput", tmp_path, capsys, "--with-nchw", "--with-fp32")
    assert "Trial throughput" in printed and "tutorial_img_s" in printed
    rows = data["results"]
    assert [r["model"] for r in rows] == ["convnet", "resnet:0.125"]
    for row in rows:
        assert {"caviar_img_s", "tutorial_img_s", "ratio", "caviar_nchw_img_s", "caviar_fp32_img_s"} <= row.keys()
        assert row["caviar_img_s"] > 0 and row["tutorial_img_s"] > 0
    assert any("convnet" in goal for goal in data["goals"])


def test_sweep_wall(ray_session, tmp_path, capsys):
    """A caviar sweep and a tutorial-style sweep of the same configs, both finished."""
    printed, data = run("sweep_wall", tmp_path, capsys)
    assert "Sweep wall time" in printed
    rows = {r["pipeline"]: r for r in data["results"]["rows"]}
    assert set(rows) == {"caviar", "tutorial"}
    assert rows["caviar"]["trial_epochs"] == rows["tutorial"]["trial_epochs"] == 2
    assert data["settings"]["same_configs"] is True
    assert "speedup" in data["results"] and data["goals"]


def test_overhead(ray_session, tmp_path, capsys):
    """Sweeps with and without process reuse against the pure training time."""
    printed, data = run("overhead", tmp_path, capsys)
    assert "Sweep overhead" in printed and "overhead_per_trial_s" in printed
    rows = data["results"]["rows"]
    assert [r["trial_processes"] for r in rows] == ["reused", "new per trial"]
    assert all({"wall_s", "ideal_s", "overhead_per_trial_s", "processes"} <= r.keys() for r in rows)
    assert data["results"]["pure_per_trial_s"] > 0


def test_memory(ray_session, tmp_path, capsys):
    """Peak memory per concurrency level, trial processes seen, MB per extra trial."""
    printed, data = run("memory", tmp_path, capsys)
    assert "Peak memory" in printed
    rows = data["results"]["rows"]
    assert [r["concurrent_trials"] for r in rows] == [1, 2]
    assert all(r["peak_pss_mb"] > 0 and r["trial_processes_at_peak"] >= 1 for r in rows)
    assert {"mb_per_extra_trial", "dataset_mb"} <= data["results"].keys()


def test_search_efficiency(ray_session, tmp_path, capsys):
    """ASHA and random search on the same configs: curves, a table by budget, and a plot."""
    printed, data = run("search_efficiency", tmp_path, capsys)
    assert "Best val_acc vs trial-epochs" in printed and "within a budget" in printed
    results = data["results"]
    (row,) = results["per_seed"]
    assert 3 <= row["random_epochs"] <= 3 * 2 and 3 <= row["asha_epochs"] <= 3 * 2
    assert set(results["curves"]["0"]) == {"random", "asha"}
    assert data["settings"]["same_configs"] is True
    assert (tmp_path / "search_efficiency.png").stat().st_size > 0


def test_gpu_dry_run(ray_session, tmp_path, capsys):
    """--dry-run exercises all three parts on CPU."""
    printed, data = run("gpu", tmp_path, capsys, "--dry-run")
    assert "Epoch time" in printed and "Trials sharing one GPU" in printed and "Default experiment" in printed
    results = data["results"]
    assert results["dry_run"] is True and results["device"] == "cpu"
    assert len(results["epoch"]) == 2 * 2 * 2  # families x amp x channels_last
    assert results["share"][0]["trials_sharing"] == 2
    assert results["per_hour"]["finished"] >= 1


def test_gpu_without_gpu_or_dry_run_says_so(tmp_path):
    """On a machine without a GPU the script refuses to pretend and names --dry-run."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    module = importlib.import_module("bench_gpu")
    with pytest.raises(SystemExit, match="--dry-run"):
        module.main(["--out", str(tmp_path / "gpu.json"), "--parts", "epoch"])


def test_search_quality_tiny(ray_session, tmp_path, capsys):
    """The --tiny flow (cpu-budget: a staged CLI sweep + ensemble under --budget; staged.yaml needs
    more than a tiny budget) and the baseline report test accuracies in [0, 1]; the baseline learns
    the learnable fixture (above chance). The CLI calls join the session's Ray (--address), so the
    budget trains instead of starting Ray. 60 s: at 35 s, trial processes starting on a slow 2-core
    machine used all of the search stage's few seconds (no trial scored). About 75 s."""
    address = ray_session.get_runtime_context().gcs_address
    printed, data = run("search_quality", tmp_path, capsys, "--address", address, "--budget", "60s")
    assert "Search quality" in printed and "| flow |" in printed
    results = data["results"]
    assert set(results["flows"]) == {"budget"}  # the default flow's sweep is what test_cli's smoke run runs
    # a staged folder, in the shape its budget bought (caviar.sweeps.shapes), told in runs of the recipe
    stages = results["flows"]["budget"]["stages"]
    shape = stages[0]["budget"]["shape"]
    assert [s["folder"] for s in stages][:1] == ["stage1-recipe" if shape["name"] == "recipe" else "stage1-search"]
    assert shape["runs"] == pytest.approx(shape["budget_s"] * shape["slots"] / shape["recipe_s"], abs=1e-3)
    for name, flow in results["flows"].items():
        assert "error" not in flow, (name, flow.get("error"), flow.get("sweep_log_tail"), flow.get("ensemble_log_tail"))
        assert 0 <= flow["best_single_acc"] <= 1 and 0 <= flow["ensemble_acc"] <= 1, name
        assert flow["trials"] >= 1 and flow["trial_epochs"] >= 1
        chosen = [m for m in flow["candidates"] if m["weight"] > 0]
        assert len(chosen) == flow["members"] >= 1 and all(0 <= m["test_acc"] <= 1 for m in flow["candidates"])
        assert flow["error_every_member_makes"] <= flow["member_error_mean"] <= 1 - min(m["test_acc"] for m in chosen)
        assert flow["member_error_mean"] == pytest.approx(1 - sum(m["test_acc"] for m in chosen) / len(chosen), abs=1e-3)
    # airbench needs minutes per epoch: its own test; the convnet floor is the same code with another recipe
    assert set(results["baselines"]) == {"textbook"}
    for name, base in results["baselines"].items():
        assert "error" not in base, (name, base["error"])
        assert 0 <= base["best_single_acc"] <= 1 and 0 <= base["ensemble_acc"] <= 1
        assert [s["seed"] for s in base["seeds"]] == [0, 1] and all(s["epochs"] >= 1 for s in base["seeds"])
        assert base["ensemble_acc"] > 0.2, name  # chance is 0.1
    # the textbook baseline is the experiment's own first search point, with its averaging
    textbook = results["baselines"]["textbook"]
    assert textbook["hparams"]["optimizer"] == "nesterov" and textbook["hparams"]["lr"] == 0.1
    assert all(s["kept"] in ("trained", "averaged") for s in textbook["seeds"])
    assert data["settings"]["budget_s"] == 60 and data["settings"]["baseline_budget_s"] == 22
    assert any("best single recipe (textbook)" in goal for goal in data["goals"])
    assert "--address" in results["flows"]["budget"]["sweep_command"]


def test_scale_dry_run(tmp_path, capsys):
    """--dry-run prints the experiment and the commands (overrides and --verbose passed through), runs nothing."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    module = importlib.import_module("bench_scale")
    out = tmp_path / "scale.json"
    plan = module.main(["--dry-run", "--trials", "10000", "--out", str(out), "--workdir", str(tmp_path / "work"),
                        "--set", "train.amp=false", "--verbose"])
    printed = capsys.readouterr().out
    assert plan["dry_run"] is True and plan["experiment"]["search"]["num_samples"] == 10000
    assert plan["experiment"]["checkpoint"]["keep"] == 1 and plan["experiment"]["average"]["method"] == "none"
    assert "num_samples: 10000" in printed and "caviar sweep" in printed and "caviar ensemble" in printed
    assert plan["sweep_command"][-3:] == ["--set", "train.amp=false", "--verbose"]
    assert not out.exists() and not list((tmp_path / "work").glob("runs-*"))


def test_scale_tiny(tmp_path, capsys):
    """8 tiny trials through the CLI (its own Ray), then report and ensemble: every figure present
    and sane (bytes written, console lines, all trials in the leaderboard). About a minute."""
    printed, data = run("scale", tmp_path, capsys)
    assert "Scale: 8 trials" in printed and "Bytes by process kind" in printed
    r = data["results"]
    assert r["rc"] == 0, r["log_tail"]
    assert r["trials"] == 8 and r["leaderboard_rows"] == 8 and r["result_rows"] == 8
    assert r["leaderboard"]["rebuilt_rows"] == 8, r["leaderboard"]
    assert sum(r["counts"].values()) == 8 and r["counts"]["completed"] >= 1
    assert 0 < r["pure_training_s"] and 0 < r["fit_wall_s"] <= r["command_wall_s"]
    assert r["ideal_s"] == pytest.approx(r["pure_training_s"] / r["slots"], abs=0.1)  # both rounded
    assert r["write_bytes"] > 0 and r["wchar"] > 0 and r["wchar_per_trial"] > 0
    assert r["write_bytes_lost_to_autoreap"] >= 0 and r["processes_seen"] >= 3  # driver, GCS, raylet, workers
    assert {"driver", "raylet", "gcs", "trial_worker"} <= set(r["bytes_by_kind"])
    assert r["console_lines"] > 0 and r["console_top_shapes"]
    assert r["disk_per_trial_bytes"] > 0 and r["experiment_files"] >= 8 and r["experiment_state_bytes"] > 0
    assert r["driver_peak_rss_mb"] > 50  # a Python process with torch and Ray
    assert r["report"]["rc"] == 0 and r["ensemble"]["rc"] == 0, (r["report"], r["ensemble"])
    assert r["post_total_s"] > 0 and len(data["goals"]) == 4
    assert data["settings"]["experiment"]["search"]["num_samples"] == 8
    assert list((tmp_path / "work").glob("runs-*/scale-8/report.html"))


def test_textbook_baseline_is_the_first_search_point_completed_by_the_space():
    """The point's own values, the space's fixed ones for the rest; a searched value it leaves open
    is refused by name (the baseline would not be one recipe)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    baselines = importlib.import_module("baselines")
    from caviar.config.loading import load_config

    config = load_config(str(BENCHMARKS.parent / "experiments" / "cpu-budget.yaml"))
    hparams = baselines.textbook_hparams(config)
    assert hparams | config.search.points[0] == hparams  # the point itself, unchanged
    assert hparams["lr_schedule"] == "cosine" and hparams["init"] == "he" and hparams["batch_norm"] is True
    open_point = load_config(str(BENCHMARKS.parent / "experiments" / "cpu-budget.yaml"),
                             ["search.points=[{optimizer: nesterov, lr: 0.1}]"])
    with pytest.raises(SystemExit, match="weight_decay"):
        baselines.textbook_hparams(open_point)


def test_airbench_adapter_trains_to_its_deadline_and_learns(tmp_path, monkeypatch):
    """airbench94's network and recipe from the installed package, on caviar's split of a learnable
    fixture, stops by its deadline and beats chance. Its batch of 1024 is cut to 64 and its widths to
    16-32-32 here only, so a 400-image fixture has whole batches and a CPU takes many steps in
    seconds (the recipe's steps are otherwise what the benchmark runs)."""
    pytest.importorskip("airbench")
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    airbench_cpu = importlib.import_module("airbench_cpu")
    from airbench import lib_airbench94

    from caviar.training.fixture import write_cifar_fixture

    monkeypatch.setitem(lib_airbench94.hyp["opt"], "batch_size", 64)
    monkeypatch.setitem(lib_airbench94.hyp["net"], "widths", {"block1": 16, "block2": 32, "block3": 32})
    root = write_cifar_fixture(tmp_path / "data", train_size=400, test_size=200, seed=0)
    begin = time.time()
    seed = airbench_cpu.train_seed(str(root), 40, 0, begin + 10, 1)
    assert time.time() - begin < 10 + 5
    assert seed["steps"] >= 5 and seed["epochs"] >= 1
    assert seed["test_acc_views"] > 0.2 and seed["test_acc"] > 0.2  # chance is 0.1
    assert seed["view_probs"].shape == (200, 10)


def test_ab_pairs_each_seed_with_and_without_the_options(tmp_path, capsys):
    """bench_ab's rounds: A is the textbook point, B the point plus the options, both with the
    round's seed, in child processes; one failed run is reported and its round left out of the
    verdict; a bad option stops the run before anything trains. The runs are fakes
    (tests/fake_runs.py): the training they stand for is benchmarks/baselines.textbook_seed, which
    test_search_quality_tiny runs."""
    import fake_runs

    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    bench_ab = importlib.import_module("bench_ab")
    out = tmp_path / "ab.json"
    common = ["--tiny", "--out", str(out), "--workdir", str(tmp_path / "work")]
    bench_ab.main([*common, "--rounds", "3", "--option", "label_smoothing=0.1"], seed_fn=fake_runs.textbook_seed)
    data = json.loads(out.read_text())
    rounds, summary = data["results"]["rounds"], data["results"]["summary"]
    assert [(r["A"]["seed"], r["B"]["seed"]) for r in rounds] == [(0, 0), (1, 1), (2, 2)]
    assert all(r["A"]["hparams"] == {} and r["B"]["hparams"] == {"label_smoothing": 0.1} for r in rounds)
    assert all("probs" not in r["A"] for r in rounds)  # the test set's probabilities are not kept
    assert summary["val_diffs"] == pytest.approx([0.02, 0.02, -0.02])
    assert summary["val_diff_mean"] == pytest.approx(0.02 / 3) and summary["b_wins"] == 2
    assert summary["verdict"].startswith("no significant difference: B ahead in 2 of 3")
    assert data["settings"]["hparams_b"] | {"lr": 0.1, "label_smoothing": 0.1} == data["settings"]["hparams_b"]
    assert "no significant difference" in capsys.readouterr().out

    # B fails in every round (the fake fails with whiten): reported, nothing compared
    bench_ab.main([*common, "--rounds", "1", "--option", "whiten=true"], seed_fn=fake_runs.textbook_seed)
    data = json.loads(out.read_text())
    assert "this fake run fails with whiten" in data["results"]["rounds"][0]["B"]["error"]
    assert data["results"]["summary"]["failed_rounds"] == 1
    assert data["results"]["summary"]["verdict"].startswith("no round finished both runs")

    # the verdict: a paired t-test over the rounds, and a difference worth reporting (0.1 point)
    def run(val_a, val_b):
        return {"A": {"seed": 0, "val_acc": val_a, "test_acc_views": val_a, "epochs": 4},
                "B": {"seed": 0, "val_acc": val_b, "test_acc_views": val_b, "epochs": 3}}

    gains = [run(0.90, 0.905), run(0.92, 0.926), run(0.91, 0.914), run(0.93, 0.935), run(0.90, 0.906)]
    assert bench_ab.summarise(gains)["verdict"].startswith("B better on validation: mean +0.0052 over 5")
    losses = [run(b["B"]["val_acc"], b["A"]["val_acc"]) for b in gains]
    assert bench_ab.summarise(losses)["verdict"].startswith("A better on validation")
    # two rounds of one sign, one of them by a single validation image: not a win
    assert bench_ab.summarise([run(0.90, 0.9002), run(0.92, 0.93)])["verdict"].startswith("no significant difference")
    tiny = [run(0.90, 0.9004), run(0.92, 0.9205), run(0.91, 0.9104)]  # significant, but 0.04 point
    assert "below the 0.001 worth reporting" in bench_ab.summarise(tiny)["verdict"]
    assert bench_ab.summarise([run(0.90, 0.90)])["verdict"].startswith("too few paired rounds (1)")
    assert bench_ab.paired_p_value([0.01, 0.02, 0.015]) == pytest.approx(
        __import__("scipy.stats").stats.ttest_rel([0.91, 0.92, 0.915], [0.9, 0.9, 0.9]).pvalue)

    out.unlink()
    for options, message in ((["--option", "lookahed=true"], "lookahed: not a hyperparameter"),
                             (["--option", "lookahead"], "expected NAME=VALUE"),
                             (["--option", "label_smoothing=2"], "label_smoothing"),
                             (["--option", "lookahead=true", "--option", "lookahead=false"], "given twice"),
                             (["--rounds", "0"], "--rounds must be at least 1")):
        with pytest.raises(SystemExit, match=message):
            bench_ab.main([*common, *options], seed_fn=fake_runs.textbook_seed)
        assert not out.exists()  # stopped before any run


def _bench(name: str):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(f"bench_{name}")


def test_shape_pairs_a_stretched_run_with_a_deep_ensemble_per_multiple():
    """bench_shape's verdict per multiple of R: deep - stretched on validation, a winner only by a
    paired t-test over the rounds and a difference worth reporting; test figures beside it."""
    bench_shape = _bench("shape")

    def round_(multiple, stretched, deep):
        return {"multiple": multiple, "deep_minus_stretched_val": deep - stretched,
                "deep_minus_stretched_test": (deep - stretched) / 2}

    summary = bench_shape.summarise([round_(2, 0.90, 0.89), round_(2, 0.91, 0.899), round_(2, 0.92, 0.911),
                                     round_(4, 0.90, 0.91), round_(4, 0.90, 0.92), round_(8, 0.90, 0.91),
                                     round_(16, 0.894, 0.895), round_(16, 0.890, 0.891)], min_diff=0.002)
    assert summary["2"]["winner_on_validation"] == "stretched" and summary["2"]["val_mean"] == pytest.approx(-0.01)
    assert summary["4"]["winner_on_validation"] == "undecided"  # +1 and +2 points: not significant in 2 rounds
    assert summary["4"]["val_spread"] == pytest.approx(0.01) and summary["4"]["test_mean"] == pytest.approx(0.0075)
    assert summary["8"]["winner_on_validation"] == "undecided"  # one round decides nothing
    assert summary["16"]["winner_on_validation"] == "undecided"  # one validation image each time: not worth it


def test_rungs_ranks_each_rung_against_the_full_length_results():
    """bench_rungs: the configs include the experiment's textbook points and both optimizers; a rung
    whose scores order the configs as their full-length results do has Spearman 1, one that
    reverses them -1."""
    bench_rungs = _bench("rungs")
    configs = bench_rungs.draw_configs("experiments/cpu-budget.yaml", 8, seed=1)
    assert len(configs) == 8 and len({c["seed"] for c in configs}) == 8
    assert configs[0]["optimizer"] == "nesterov" and configs[0]["lr"] == 0.1 and configs[1]["optimizer"] == "adam"
    finals = [0.80, 0.85, 0.90]
    runs = [{"rungs": [1, 3], "full": [1 - f, 1 - f, f], "continue": [f, f, f - 0.01],
             "restart": {"3": f}} for f in finals]
    summary = bench_rungs.summarise(runs)
    assert summary["by_rung"]["1"] == {"today": pytest.approx(-1.0), "continue": pytest.approx(1.0)}
    assert summary["by_rung"]["3"]["restart"] == pytest.approx(1.0)
    assert summary["continued_to_the_end"]["mean_minus_full"] == pytest.approx(-0.01)


def test_multiples_tiny_trains_each_recipe_contender_for_its_budget(tmp_path, capsys):
    """bench_multiples --tiny (4 R on 2 slots of the fixture, R fixed at 6 s): the stretched recipe is
    one seed per slot, the deep ensemble two 1 R runs per slot; both learn (chance is 0.1) and each
    ends within its budget. The flow is bench_search_quality --tiny's. About 35 s."""
    printed, data = run("multiples", tmp_path, capsys)
    records = {r["contender"]: r for r in data["results"]["records"]}
    assert set(records) == {"stretched", "deep"} and data["settings"]["unit_s"] == 6
    assert [len(records["stretched"]["seeds"]), len(records["deep"]["seeds"])] == [2, 4]
    for name, record in records.items():
        assert record["runs"] == 4 and record["runs_per_slot"] == 2 and record["wall_budget_s"] == 12
        assert record["val_acc"] > 0.2 and record["test_acc"] > 0.2, name
        assert all(seed["wall_s"] <= 12 + 30 for seed in record["seeds"]), name  # its deadline, and the start-up
    assert "| 4.0 | 2.0 | 1 |" in printed
    assert "| 4.0 | 2.0 | 1 |" in _bench("multiples").table([tmp_path / "multiples.json"])  # the README's, from the file


def test_multiples_holds_the_flow_to_the_best_recipe_contender_by_multiple():
    """The goal at each multiple: the flow against the best recipe contender on validation, with the
    issue's margins (-0.1 pt below 1.5 R per slot, +0.3 pt below 6, +0.7 pt from there); the test
    figures are recorded beside it; the deep ensemble needs 2 R per slot."""
    bench = _bench("multiples")
    assert [bench.deep_runs(p) for p in (0.5, 1.9, 2.0, 8.0)] == [0, 0, 2, 8]

    def rec(runs, round_, name, val, test):
        return {"runs": runs, "runs_per_slot": runs / 2, "round": round_, "contender": name,
                "val_acc": val, "test_acc": test}

    summary = bench.summarise([
        rec(1, 0, "flow", 0.899, 0.90), rec(1, 0, "stretched", 0.90, 0.905),
        rec(1, 1, "flow", 0.901, 0.90), rec(1, 1, "stretched", 0.90, 0.895),
        rec(4, 0, "flow", 0.92, 0.91), rec(4, 0, "stretched", 0.91, 0.90), rec(4, 0, "deep", 0.915, 0.92),
        rec(16, 0, "flow", 0.93, 0.93), rec(16, 0, "deep", 0.925, 0.92)])
    one, four, sixteen = summary["1"], summary["4"], summary["16"]
    assert one["rounds"] == 2 and one["flow"]["val"]["spread"] == pytest.approx(0.002)
    assert one["best_recipe"] == "stretched" and one["flow_minus_best_val"] == pytest.approx(0.0)
    assert one["goal_met_on_validation"] and one["goal_margin"] == -0.001
    assert four["best_recipe"] == "deep" and four["flow_minus_best_val"] == pytest.approx(0.005)
    assert four["goal_met_on_validation"] and four["flow_minus_best_test"] == pytest.approx(-0.01)
    assert not sixteen["goal_met_on_validation"] and sixteen["goal_margin"] == 0.007  # +0.5 pt < +0.7
