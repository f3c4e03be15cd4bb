"""Shared pieces of the benchmarks: machine facts, fixtures, a private Ray, tables and JSON.

Every benchmark script is run by hand from the repository root (``python benchmarks/bench_x.py``),
prints a table and writes a JSON file (``--out``, default ``benchmarks/results/<name>.json``) that
records the machine, the date, the exact command and every setting next to the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
if str(REPO) not in sys.path:  # `python benchmarks/bench_x.py` puts benchmarks/, not the repo, on the path
    sys.path.insert(0, str(REPO))

# A network of the size the smoke experiment samples: what "the small convnet" means here.
SMALL_CONVNET = dict(conv_layers=2, conv_width=32, fc_layers=1, fc_width=64)
# Hyperparameters that are not under test, shared by both pipelines so only the data path differs.
FIXED_HPARAMS = dict(
    lr=0.01, weight_decay=5e-4, dropout=0.1, momentum=0.9, optimizer="momentum", lr_schedule="constant",
    init="he", batch_norm=True, activation="relu", grad_clip=0, seed=0,
)


def fixed_space(**entries: Any) -> dict[str, Any]:
    """A caviar search space of FIXED_HPARAMS (less the seed, which every trial draws) + entries."""
    space = {k: v for k, v in FIXED_HPARAMS.items() if k != "seed"}
    return space | entries


# ---------------------------------------------------------------- command line
def parser(name: str, description: str) -> argparse.ArgumentParser:
    """The options every benchmark has: --tiny (the test-suite configuration) and --out."""
    p = argparse.ArgumentParser(prog=f"python benchmarks/bench_{name}.py", description=description)
    p.add_argument("--tiny", action="store_true", help="a seconds-long configuration (what the test suite runs)")
    p.add_argument("--out", type=Path, default=RESULTS / f"{name}.json", help="where the JSON goes")
    p.add_argument("--workdir", type=Path, default=None, help="fixtures and sweep folders (default: a temp dir)")
    return p


def tag_out(args: argparse.Namespace, name: str) -> None:
    """--tag TAG: the results go to results/NAME-TAG.json, unless --out names another file."""
    if getattr(args, "tag", None) and args.out == RESULTS / f"{name}.json":
        args.out = RESULTS / f"{name}-{args.tag}.json"


def command_line(argv: Sequence[str] | None, script: str) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", f"benchmarks/{script}", *map(shlex.quote, args)])


@contextlib.contextmanager
def workdir(path: Path | None) -> Iterator[Path]:
    """`path` if given (kept), else a temp dir under /tmp removed afterwards."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix="cvbench-", dir="/tmp"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- the machine
def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, memory, GPU, library versions, load, date."""
    cpu, flags = platform.processor() or "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    info: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        # what decides oneDNN's speed (and whether bfloat16 is native) on CPU
        "cpu_features": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"}),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    if hasattr(os, "getloadavg"):
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    for module in ("torch", "torchvision", "ray"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    import torch

    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


# ---------------------------------------------------------------- data
def fixture(folder: Path, train_size: int, test_size: int = 100, noise: float = 0.25, seed: int = 0) -> Path:
    """A learnable dataset in CIFAR-10's file format, written once per folder.

    Five data_batch files like the published set, because torchvision's CIFAR10 class (the
    tutorial's loader) opens data_batch_1..5 by name.
    """
    from caviar.training.fixture import write_cifar_fixture

    root = folder / f"cifar-{train_size}-{test_size}-n{noise:g}-s{seed}"
    if not (root / "cifar-10-batches-py" / "batches.meta").exists():
        write_cifar_fixture(root, train_size=train_size, test_size=test_size, seed=seed, noise=noise,
                            batches=min(5, train_size))
    return root


# ---------------------------------------------------------------- Ray
@contextlib.contextmanager
def ray_cluster(num_cpus: float | None = None, num_gpus: float | None = None) -> Iterator[bool]:
    """A private local Ray (own short temp dir, auth off, loopback) unless one is already running.

    Yields True when it started Ray (and then shuts down only that instance), False when it reuses
    the caller's (the test suite's session Ray).
    """
    import ray

    if ray.is_initialized():
        yield False
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    temp_dir = tempfile.mkdtemp(prefix="cvb-", dir="/tmp")  # short: socket paths must stay < 107 bytes
    try:
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 _temp_dir=temp_dir, _node_ip_address="127.0.0.1", log_to_driver=False)
        yield True
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def classify(proc) -> tuple[str, str]:
    """(kind, process title) of a process in the driver's tree.

    driver; trial (a Tune trainable actor); idle_worker (a Ray worker process waiting for work, or
    starting); ray_task (a worker running another task, such as the benchmarks' own); ray_system
    (GCS, raylet with the object store, log monitor, dashboard and runtime-env agents).
    """
    if proc.pid == os.getpid():
        return "driver", "driver"
    try:
        title = " ".join(proc.cmdline()) or proc.name()
    except Exception:
        return "gone", ""
    if "ImplicitFunc" in title or "train_trial" in title:
        return "trial", title[:40]
    if "ray::IDLE" in title or "default_worker.py" in title:
        return "idle_worker", title[:40]
    if title.startswith("ray::") and "Agent" not in title:
        return "ray_task", title[:40]
    return "ray_system", title.split(" ")[0][-40:]


class CpuMeter:
    """CPU seconds (user + system) used by this process and everything it started, by kind.

    Polls the process tree (processes come and go during a sweep) and keeps each pid's latest
    total and latest kind; `since(start)` gives the CPU used between two readings.
    """

    def __init__(self, interval: float = 0.5) -> None:
        import threading

        self.interval, self.seen, self.stop = interval, {}, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def poll(self) -> dict[int, tuple[str, float]]:
        import psutil

        me = psutil.Process()
        for proc in [me] + me.children(recursive=True):
            try:
                kind, _ = classify(proc)
                times = proc.cpu_times()
            except Exception:
                continue
            old_kind = self.seen.get(proc.pid, (kind, 0.0))[0]
            # A worker is idle before and after its trials: once a trial, counted as a trial.
            if old_kind == "trial" or kind == "idle_worker":
                kind = old_kind
            self.seen[proc.pid] = (kind, times.user + times.system)
        return dict(self.seen)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.poll()
            self.stop.wait(self.interval)

    def __enter__(self) -> "CpuMeter":
        self.start = self.poll()
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()
        end = self.poll()
        self.by_kind: dict[str, float] = {}
        for pid, (kind, seconds) in end.items():
            used = seconds - self.start.get(pid, (kind, 0.0))[1]
            self.by_kind[kind] = self.by_kind.get(kind, 0.0) + used


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1))


# ---------------------------------------------------------------- output
def median(values: Iterable[float]) -> float:
    values = [v for v in values if v == v]  # drop NaN
    return statistics.median(values) if values else float("nan")


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else ("yes" if value else "no")
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"
    return str(value)


def table(rows: list[dict[str, Any]], columns: list[str], title: str = "") -> str:
    """A plain fixed-width text table (what the scripts print and the README quotes)."""
    cells = [[fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = [title] if title else []
    lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def markdown(rows: list[dict[str, Any]], columns: list[str], title: str = "") -> str:
    """The same table as `table`, as a Markdown table (to paste into a README)."""
    lines = [f"**{title}**", ""] if title else []
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, benchmark: str, command: str, settings: dict[str, Any], results: Any,
               goals: dict[str, Any] | None = None, machine_info: dict[str, Any] | None = None) -> dict[str, Any]:
    machine_info = dict(machine_info or machine())
    if hasattr(os, "getloadavg"):  # other work on the machine while this ran shows here
        machine_info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    payload = {
        "benchmark": benchmark,
        "command": command,
        "machine": machine_info,
        "settings": settings,
        "results": results,
        "goals": goals or {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    print(f"\nwrote {path}")
    return payload


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


class Timer:
    """`with Timer() as t: ...; t.seconds` (wall clock, perf_counter)."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = float("nan")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


# ---------------------------------------------------------------- sweeps
def caviar_config(root: Path, storage: Path, name: str, *, space: dict[str, Any], num_samples: int,
                  max_epochs: int, val_size: int, scheduler: str = "random", cpus_per_trial: float = 1,
                  gpus_per_trial: float = 0, seed: int = 0, max_concurrent: int = 0, **sections: Any):
    """A caviar Config for a benchmark sweep (data from `root`, results under `storage`)."""
    from caviar.config.loading import load_config

    tree: dict[str, Any] = {
        "name": name,
        "storage": str(storage),
        "data": {"root": str(root), "val_size": val_size, "download": False},
        "space": dict(space),
        "search": {"scheduler": scheduler, "num_samples": num_samples, "max_epochs": max_epochs,
                   "seed": seed, "max_concurrent": max_concurrent},
        "resources": {"cpus_per_trial": cpus_per_trial, "gpus_per_trial": gpus_per_trial},
    }  # checkpoint policy as shipped: keep the best 3, retry a crashed trial
    for section, values in sections.items():
        tree.setdefault(section, {}).update(values)
    return load_config(tree)


def trial_reports(experiment: Path) -> list[dict[str, Any]]:
    """Every epoch report of every trial under an experiment folder (Ray's result.json lines)."""
    rows = []
    for path in sorted(Path(experiment).glob("*/result.json")):
        for line in path.read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line) | {"trial_dir": path.parent.name})
    return rows


def distinct_pids(experiment: Path) -> int:
    return len({row.get("pid") for row in trial_reports(experiment)})
