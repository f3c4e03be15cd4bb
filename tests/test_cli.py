"""caviar.cli: arguments reach the API; errors are one message and exit 2; one real smoke run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, ray_env

import caviar.sweeps.sweeper as sweep_module
from caviar import cli
from caviar.config.schema import Config
from caviar.results.leaderboard import summarize


def fake_result(unfinished: int = 0) -> sweep_module.SweepResult:
    table = pd.DataFrame([{"trial_id": "a_00000", "status": "completed", "best_val_acc": 0.61, "epochs": 2,
                           "retries": 0, "lr": 1e-3}])
    return sweep_module.SweepResult(path="/x/exp", trials=table, summary=summarize(table, 1 + unfinished),
                                    config=Config())


@pytest.fixture
def calls(monkeypatch):
    seen: list[dict] = []

    def fake_sweep(config=None, **kwargs):
        seen.append({"config": config, **kwargs})
        return fake_result()

    monkeypatch.setattr(sweep_module, "sweep", fake_sweep)
    return seen


def test_sweep_arguments_reach_the_api(calls, capsys):
    """File, repeated --set, --storage, --name and --address are passed through; the leaderboard is printed."""
    code = cli.main(["sweep", "experiments/asha.yaml", "--set", "search.num_samples=128", "--set",
                     "data.root=/data", "--storage", "s3://b/c", "--name", "n1", "--address", "auto"])
    assert code == 0
    (call,) = calls
    assert call["config"] == "experiments/asha.yaml" and call["address"] == "auto" and call["resume"] is None
    assert call["overrides"] == ["search.num_samples=128", "data.root=/data", "storage=s3://b/c", "name=n1"]
    out = capsys.readouterr().out
    assert "a_00000" in out and "1 completed" in out and "/x/exp" in out


def test_bare_sweep_and_resume(calls):
    """Bare `caviar sweep` uses the defaults; --resume passes the folder."""
    assert cli.main(["sweep"]) == 0
    assert cli.main(["sweep", "--resume", "/r/exp"]) == 0
    assert calls[0]["config"] is None and calls[1]["resume"] == "/r/exp"


def test_interrupted_sweep_exits_130(monkeypatch, capsys):
    """A sweep that stopped with trials left prints the resume command and exits 130."""
    monkeypatch.setattr(sweep_module, "sweep", lambda *a, **k: fake_result(unfinished=2))
    assert cli.main(["sweep"]) == 130
    assert "caviar sweep --resume /x/exp" in capsys.readouterr().out


def test_sweep_without_a_score_exits_1(monkeypatch, capsys):
    """Every trial failed: exit 1 (scripts and CI can tell), the errors' files named."""
    table = pd.DataFrame([{"trial_id": f"a_0000{i}", "status": "error", "best_val_acc": float("nan"), "epochs": 0,
                           "retries": 3, "path": f"/x/exp/trial_a_0000{i}"} for i in range(2)])
    failed = sweep_module.SweepResult(path="/x/exp", trials=table, summary=summarize(table, 2), config=Config())
    monkeypatch.setattr(sweep_module, "sweep", lambda *a, **k: failed)
    assert cli.main(["sweep"]) == 1
    captured = capsys.readouterr()
    assert "2 trials failed; what went wrong: /x/exp/trial_a_00000/error.txt" in captured.out
    assert "no trial produced a score" in captured.err


def test_unreachable_address_is_a_clear_error_not_a_hang(capsys, tmp_path, learnable_root):
    """--address at a port where nothing listens (loopback): exit 2 at once, naming the address."""
    import socket

    with socket.socket() as probe:  # a free port, closed again: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = cli.main(["sweep", "experiments/smoke.yaml", "--address", f"127.0.0.1:{port}", "--storage", str(tmp_path),
                     "--set", f"data.root={learnable_root}", "--set", "data.val_size=500"])
    err = capsys.readouterr().err
    assert code == 2 and f"--address 127.0.0.1:{port}: nothing answers there" in err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["sweep", "--set", "search.num_samples=lots"], "search.num_samples"),
        (["sweep", "--set", "search.bogus=1"], "search.bogus: unknown key"),
        (["sweep", "--set", "space.lr.low=100"], "space.lr: low (100) must be below high"),
        (["sweep", "--set", "space.lr.low=-1"], "space.lr: a log-scale range needs low > 0"),
        (["sweep", "no/such/experiment.yaml"], "experiment file no/such/experiment.yaml does not exist"),
        (["sweep", "--set", "data.root=/no/such/folder", "--set", "data.download=false"], "data.root"),
        (["config", "--set", "resources.gpus_per_trial=-0.5"], "resources.gpus_per_trial"),
        (["check", "smoke", "--images", "0"], "--images 0: the overfitting check needs 2 or more images"),
        (["check", "smoke", "--tolerance", "-1"], "--tolerance -1.0: the allowed gap from ln(classes)"),
        (["report", "/no/such/folder", "--top", "0"], "--top 0: the trials whose curves are drawn, 1 or more"),
        (["predict", "/no/such/folder", "x.png", "--top", "-2"], "--top must be at least 1, got -2"),
    ],
)
def test_errors_are_one_message_and_exit_2(argv, needle, capsys, tmp_path):
    """Bad config or a missing data folder: exit code 2 and a message naming the key, no traceback."""
    code = cli.main(argv + ["--set", f"storage={tmp_path}"] if argv[0] == "sweep" else argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("caviar: error:") and needle in err and "Traceback" not in err


def test_config_command_prints_resolved_yaml(capsys):
    """`caviar config FILE --set ...` prints the merged config."""
    assert cli.main(["config", "experiments/smoke.yaml", "--set", "search.num_samples=9"]) == 0
    out = capsys.readouterr().out
    assert "num_samples: 9" in out and "name: cifar10-smoke" in out


def test_python_dash_m_and_console_script():
    """`python -m caviar` and the installed `caviar` script both run, and errors exit 2 without a traceback."""
    ran = subprocess.run([sys.executable, "-m", "caviar", "config", "--set", "x=1"], cwd=REPO,
                         capture_output=True, text=True)
    assert ran.returncode == 2 and "x: unknown key" in ran.stderr and "Traceback" not in ran.stderr
    script = Path(sys.executable).parent / "caviar"
    if script.exists():
        ran = subprocess.run([str(script), "--help"], capture_output=True, text=True)
        assert ran.returncode == 0 and "sweep" in ran.stdout


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory):
    """Enough images for smoke.yaml as written: 5000 validation + a 2000-image training subset."""
    from caviar.training.fixture import write_cifar_fixture

    return write_cifar_fixture(tmp_path_factory.mktemp("smoke"), train_size=7500, test_size=100)


def test_real_smoke_sweep(smoke_root, tmp_path, ray_temp_dir):
    """`caviar sweep experiments/smoke.yaml` for real (own Ray instance): 4 trials, it learns."""
    ran = subprocess.run(
        [sys.executable, "-m", "caviar", "sweep", "experiments/smoke.yaml", "--set", f"data.root={smoke_root}",
         "--storage", str(tmp_path)],
        cwd=REPO, env=ray_env(ray_temp_dir), capture_output=True, text=True, timeout=400,
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    board = pd.read_csv(tmp_path / "cifar10-smoke" / "leaderboard.csv")
    assert len(board) == 4 and set(board["status"]) <= {"completed", "early-stopped"}
    assert board["best_val_acc"].max() > 0.4  # chance is 0.1
    assert "4 trials" in ran.stdout and "leaderboard.csv" in ran.stdout


def test_warnings_print_as_one_plain_line(monkeypatch, capsys):
    """A warning during a command reads `caviar: warning: ...`, with no source file or code line."""
    import warnings

    def warn(args):
        warnings.warn("no averaged weights in the top trials", UserWarning)
        return 0

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after the test
    monkeypatch.setitem(cli.COMMANDS, "config", warn)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        # what Python's default showwarning does (pytest records warnings in its place)
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(message, category, filename, lineno, line))
        assert cli.main(["config", "experiments/smoke.yaml"]) == 0
    err = capsys.readouterr().err
    assert err == "caviar: warning: no averaged weights in the top trials\n"


def test_a_path_the_file_system_cannot_hold_is_a_clear_error(tmp_path, capsys):
    """A name over the file system's 255 bytes, in a folder to read or a place to write, gets one
    line naming it and the fix (exit 2), not a traceback; nothing is written."""
    long = tmp_path / ("a" * 300)
    assert cli.main(["report", str(long)]) == 2
    assert "longer than the file system allows" in capsys.readouterr().err
    assert cli.main(["sweep", "smoke", "--storage", str(long / "x"), "--set", "data.download=false"]) == 2
    assert "longer than the file system allows" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
