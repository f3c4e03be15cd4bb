"""Scale: N tiny trials in one `caviar sweep`, run as a user runs it, and what the sweep costs beyond training.

N trials (1,000 by default, ``--trials 10000`` for the issue's goal) of a tiny model: one epoch on
256 training images of a one- or two-block convnet (8-16 channels, one hidden layer of 32), random
search over lr, weight decay, dropout and the conv shape, ``checkpoint.keep: 1``, no weight
averaging. The sweep is ``python -m caviar sweep <generated yaml>`` in a subprocess with its own
RAY_TMPDIR (Ray on 127.0.0.1 only, auth and usage stats off), its console captured to a log file.
Reported, as JSON and a table:

- wall time of the whole command and of Ray Tune's fit (summary.json's ``wall_time_s``: the Tuner's
  fit plus reading the trials back into the leaderboard) against the ideal, pure training time /
  slots, where pure training time is the sum of every trial's ``time_this_iter_s`` (Ray's time of
  each of the trial's iterations: its setup, training, evaluation and checkpoint, as the trial
  itself sees it; so the overhead below is what happens outside the trials);
- overhead per trial per slot = (wall - ideal) * slots / N;
- bytes written by the whole process tree: ``write_bytes`` (what reached the block layer) and
  ``wchar`` (every write() call) from /proc/<pid>/io of the driver and all its descendants (GCS,
  raylet, workers...), polled every 0.5 s keeping each process's last value, so processes that
  exited are counted; also the kernel's own count for the reaped tree (rusage ``ru_oublock``, what
  ``/usr/bin/time -v`` prints as file system outputs) and user/system CPU time;
- console lines printed (stdout + stderr), the most frequent shapes of line (digits masked);
- disk per trial (du of the experiment folder / N), and of Ray's temp folder;
- the driver's peak memory (VmHWM);
- the time of reading the leaderboard (leaderboard.csv, and rebuilding it from the trial folders as
  the sweep does), of ``caviar report FOLDER`` and ``caviar ensemble FOLDER --top-k 5 --seeds 0``
  (no re-training), each a command of its own.

    python benchmarks/bench_scale.py                    # 1,000 trials, ~5 minutes on 2 cores
    python benchmarks/bench_scale.py --trials 10000     # the issue's goal
    python benchmarks/bench_scale.py --tag before       # -> results/scale-1000-before.json
    python benchmarks/bench_scale.py --dry-run          # the plan: yaml and commands, nothing run
    python benchmarks/bench_scale.py --tiny             # 8 trials (what the tests run)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "scale"
REPO = common.REPO
TINY_TRIALS = 8

# The tiny model and search: random search, one epoch, shapes and rates drawn per trial.
SPACE = {
    "lr": {"low": 1e-3, "high": 1e-2, "scale": "log"},
    "weight_decay": {"low": 1e-5, "high": 1e-3, "scale": "log"},
    "dropout": {"low": 0.1, "high": 0.3, "scale": "linear"},
    "momentum": 0.9,
    "batch_size": 64,
    "conv_layers": {"low": 1, "high": 2, "scale": "int"},
    "conv_width": {"low": 8, "high": 16, "scale": "log_int"},
    "fc_layers": 1,
    "fc_width": 32,
    "optimizer": "adam",
    "lr_schedule": "constant",
    "init": "he",
    "batch_norm": True,
    "activation": "relu",
    "grad_clip": 0,
}

GOALS_TEXT = {  # the goals (14), stated for 10,000 trials on this 2-core machine
    "overhead": "overhead <= 0.1 s per trial per slot (Ray Tune's anchor: ~0.15 s)",
    "bytes": "bytes written <= 2 MB per trial",
    "console": "console <= 1 line per 10 trials",
    "post": "leaderboard + report + top-5 ensemble < 60 s",
}


# ---------------------------------------------------------------- the experiment
def experiment(name: str, storage: Path, root: Path, trials: int, epochs: int, val_size: int,
               cpus_per_trial: float) -> dict[str, Any]:
    return {
        "name": name,
        "storage": str(storage),
        "data": {"root": str(root), "val_size": val_size, "download": False},
        "model": {"family": "convnet"},
        "space": SPACE,
        "search": {"scheduler": "random", "num_samples": trials, "max_epochs": epochs, "seed": 0},
        "resources": {"cpus_per_trial": cpus_per_trial, "gpus_per_trial": 0},
        "checkpoint": {"keep": 1},
        "average": {"method": "none"},
    }


def sweep_has_flag(flag: str, env: dict[str, str], code: Path = REPO) -> bool:
    help_text = subprocess.run([sys.executable, "-m", "caviar", "sweep", "--help"], cwd=code, env=env,
                               capture_output=True, text=True, check=False).stdout
    return flag in help_text


# ---------------------------------------------------------------- the process tree
# Bytes written by a process tree, and why /proc/<pid>/io alone is not enough: a process's io
# figures include those of the children it reaped (the kernel adds a child's counts to its
# parent's when the parent waits for it), so summing every pid's figures counts the GCS and the
# raylet twice (once themselves, once in the driver that reaps them at shutdown); and the raylet
# ignores SIGCHLD, so the workers it starts are reaped automatically and their figures (the
# checkpoints) reach no parent, nor `/usr/bin/time`. So the command runs under a small reaper
# (REAPER, a child subreaper: orphans come to it) that waits for every process that reaches it,
# and the total is the reaper's own io at the end (everything reaped into it) plus, for each
# process whose parent ignores SIGCHLD, its last polled figures (at most one poll interval old).
REAPER = r"""
import ctypes, json, os, signal, subprocess, sys, time, resource
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphaned descendants come here
signal.signal(signal.SIGINT, lambda *a: None)  # the command gets Ctrl-C (the group's), the reaper waits on

def io(pid):
    try:
        with open(f"/proc/{pid}/io") as f:
            return {k: int(v) for k, v in (l.split(":") for l in f.read().splitlines() if ":" in l)}
    except OSError:
        return {}

out, cmd = sys.argv[1], sys.argv[2:]
start_io, begin = io("self"), time.perf_counter()
main = subprocess.Popen(cmd)
rc, wall, reaped, done_at = None, None, {}, None
while True:
    flags = os.WEXITED | os.WNOWAIT | (os.WNOHANG if rc is not None else 0)
    try:
        info = os.waitid(os.P_ALL, 0, flags)
    except ChildProcessError:
        break
    if info is None:  # the command is done; orphans (Ray's workers) still exiting
        if time.perf_counter() - done_at > 60:
            break
        time.sleep(0.1)
        continue
    pid = info.si_pid
    reaped[pid] = io(pid)  # a zombie's io still reads: exact final figures
    _, status = os.waitpid(pid, 0)
    if pid == main.pid:
        main.returncode = rc = os.waitstatus_to_exitcode(status)
        wall, done_at = time.perf_counter() - begin, time.perf_counter()
end_io, usage = io("self"), resource.getrusage(resource.RUSAGE_CHILDREN)
with open(out, "w") as f:
    json.dump({"rc": rc, "command_wall_s": wall, "main_pid": main.pid, "start_io": start_io, "end_io": end_io,
               "reaped": reaped, "rusage": {"fs_output_blocks": usage.ru_oublock, "user_s": usage.ru_utime,
                                            "system_s": usage.ru_stime, "maxrss_kb": usage.ru_maxrss}}, f)
sys.exit(rc if rc is not None else 1)
"""
IO_KEYS = ("write_bytes", "wchar", "cancelled_write_bytes", "read_bytes", "rchar", "syscw")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _kind(title: str) -> str:
    if "-m caviar" in title or "caviar sweep" in title:
        return "driver"
    if "gcs_server" in title:
        return "gcs"
    if "raylet" in title.split(" ")[0]:
        return "raylet"
    if "ImplicitFunc" in title or "train_trial" in title:
        return "trial_worker"
    if title.startswith("ray::") or "default_worker.py" in title:
        return "other_worker"  # idle workers, Tune's internal tasks
    return "ray_other"  # log monitor, dashboard and runtime-env agents...


class TreeMeter:
    """Polls the processes under `root` (the reaper): io figures, parent, SIGCHLD disposition, VmHWM.

    A process belongs to the tree if it descends from `root` or shares its session (the reaper
    is started in a session of its own). Each is keyed by (pid, start time) and keeps its last
    reading, so processes that exited are counted up to their last poll.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.procs: dict[tuple[int, str], dict[str, Any]] = {}
        self.polls = 0

    def _members(self) -> set[int]:
        members: set[int] = set()
        try:
            import psutil

            members |= {c.pid for c in psutil.Process(self.root).children(recursive=True)}
        except Exception:
            pass
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != self.root:
                try:
                    if os.getsid(int(entry)) == self.root:
                        members.add(int(entry))
                except OSError:
                    pass
        return members

    def poll(self) -> None:
        self.polls += 1
        for pid in self._members():
            stat, io, status = _read(f"/proc/{pid}/stat"), _read(f"/proc/{pid}/io"), _read(f"/proc/{pid}/status")
            if not stat or not io or not status:
                continue
            fields = stat.rsplit(")", 1)[-1].split()
            ppid, start = int(fields[1]), fields[19]  # fields 4 and 22 of /proc/<pid>/stat
            entry = self.procs.setdefault((pid, start), {"pid": pid, "kind": "ray_other", "title": "", "hwm_kb": 0})
            entry["io"] = {k: int(v) for k, v in (line.split(":") for line in io.splitlines() if ":" in line)}
            entry["ppid"] = ppid
            ignored = re.search(r"SigIgn:\s+([0-9a-f]+)", status)
            entry["ignores_sigchld"] = bool(ignored and int(ignored.group(1), 16) & (1 << (signal.SIGCHLD - 1)))
            match = re.search(r"VmHWM:\s+(\d+) kB", status)
            if match:
                entry["hwm_kb"] = max(entry["hwm_kb"], int(match.group(1)))
            cmdline = (_read(f"/proc/{pid}/cmdline") or "").replace("\0", " ").strip()
            if cmdline:
                kind = _kind(cmdline)
                # A Ray worker is ray::IDLE before and after its trials: once a trial worker, kept so.
                if entry["kind"] != "trial_worker":
                    entry["kind"], entry["title"] = kind, cmdline[:80]

    def totals(self, reaper: dict[str, Any]) -> dict[str, Any]:
        """Total io of the tree (see REAPER), by process kind, and the driver's peak memory."""
        reaped = {int(pid): io for pid, io in reaper.get("reaped", {}).items()}
        last_by_pid = {p["pid"]: p for p in self.procs.values()}  # pids are not reused within a run
        if reaper.get("main_pid") in last_by_pid:
            last_by_pid[reaper["main_pid"]]["kind"] = "driver"
        for p in self.procs.values():  # the reaper read reaped processes' final figures
            if p["pid"] in reaped and reaped[p["pid"]]:
                p["io"] = reaped[p["pid"]]

        def lost(p: dict[str, Any]) -> bool:
            """Reaped by a parent that ignores SIGCHLD: its figures reached no one."""
            parent = last_by_pid.get(p.get("ppid"))
            return p["pid"] not in reaped and parent is not None and parent.get("ignores_sigchld", False)

        start, end = reaper.get("start_io", {}), reaper.get("end_io", {})
        accounted = {k: end.get(k, 0) - start.get(k, 0) for k in IO_KEYS}
        lost_procs = [p for p in self.procs.values() if lost(p)]
        total = {k: accounted[k] + sum(p["io"].get(k, 0) for p in lost_procs) for k in IO_KEYS}
        # Each process's own figures: its last ones less those of the children reaped into it.
        own = {key: dict(p["io"]) for key, p in self.procs.items()}
        for key, p in self.procs.items():
            parent = last_by_pid.get(p.get("ppid"))
            if parent is not None and not lost(p) and p["pid"] not in reaped and parent["pid"] != self.root:
                pkey = next(k for k, v in self.procs.items() if v is parent)
                for k in IO_KEYS:
                    own[pkey][k] = own[pkey].get(k, 0) - p["io"].get(k, 0)
        by_kind: dict[str, dict[str, Any]] = {}
        for key, p in self.procs.items():
            row = by_kind.setdefault(p["kind"], {"processes": 0, "write_bytes": 0, "wchar": 0, "peak_rss_mb": 0.0})
            row["processes"] += 1
            row["write_bytes"] += max(0, own[key].get("write_bytes", 0))
            row["wchar"] += max(0, own[key].get("wchar", 0))
            row["peak_rss_mb"] = max(row["peak_rss_mb"], round(p["hwm_kb"] / 1024, 1))
        driver = [p for p in self.procs.values() if p["pid"] == reaper.get("main_pid")]
        return {**total, "kernel_accounted": accounted,
                "lost_to_autoreap": {k: sum(p["io"].get(k, 0) for p in lost_procs) for k in IO_KEYS},
                "lost_processes": len(lost_procs), "processes": len(self.procs), "polls": self.polls,
                "by_kind": by_kind,
                "driver_peak_rss_mb": round(max((p["hwm_kb"] for p in driver), default=0) / 1024, 1)}


def run_measured(cmd: list[str], log: Path, env: dict[str, str], timeout_s: float,
                 interval: float = 0.5, code: Path = REPO) -> dict[str, Any]:
    """Run `cmd` under REAPER (own session, output to `log`) while polling its process tree."""
    begin = time.perf_counter()
    killed = False
    report = log.with_suffix(".reaper.json")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", REAPER, str(report), *cmd], cwd=code, stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        meter = TreeMeter(proc.pid)
        signals = [(signal.SIGINT, 90.0), (signal.SIGTERM, 30.0), (signal.SIGKILL, 30.0)]
        deadline = begin + timeout_s
        try:
            while proc.poll() is None:
                meter.poll()
                if time.perf_counter() > deadline and signals:
                    killed = True
                    sig, wait = signals.pop(0)
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, sig)  # the session of the command we started
                    deadline = time.perf_counter() + wait
                time.sleep(interval)
        except KeyboardInterrupt:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGINT)
            raise
    reaper = json.loads(report.read_text()) if report.exists() else {}
    usage = reaper.get("rusage", {})
    return {"rc": reaper.get("rc", proc.returncode), "wall_s": reaper.get("command_wall_s") or time.perf_counter() - begin,
            "killed_at_timeout": killed, "tree": meter.totals(reaper),
            "rusage": {"fs_output_blocks": usage.get("fs_output_blocks", 0),
                       "fs_output_bytes": usage.get("fs_output_blocks", 0) * 512,
                       "user_s": round(usage.get("user_s", 0.0), 1), "system_s": round(usage.get("system_s", 0.0), 1)}}


def run_timed(cmd: list[str], log: Path, env: dict[str, str], timeout_s: float = 1800,
              code: Path = REPO) -> dict[str, Any]:
    begin = time.perf_counter()
    with open(log, "w") as out:
        rc = subprocess.run(cmd, cwd=code, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout_s,
                        check=False).returncode
    return {"rc": rc, "wall_s": round(time.perf_counter() - begin, 2),
            "log_tail": log.read_text().splitlines()[-8:] if rc else []}


# ---------------------------------------------------------------- reading the results
def console(log: Path, top: int = 12) -> dict[str, Any]:
    """Lines and bytes of the captured output, and its most frequent shapes (digits and hex masked)."""
    text = log.read_text(errors="replace")
    lines = text.splitlines()
    shapes = Counter(re.sub(r"[0-9a-f]{5,}|\d+(\.\d+)?", "#", line.strip())[:70] for line in lines)
    return {"lines": len(lines), "bytes": len(text.encode()),
            "top_shapes": [{"lines": n, "shape": s} for s, n in shapes.most_common(top)]}


def du(folder: Path, group=None, top: int = 8) -> dict[str, Any]:
    """Disk used (allocated blocks) and apparent size of every file under `folder`; with `group`
    (relative path -> a label), the largest groups too."""
    used = size = files = 0
    groups: dict[str, list[int]] = {}
    for base, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(base, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            used += st.st_blocks * 512
            size += st.st_size
            files += 1
            if group is not None:
                g = groups.setdefault(group(os.path.relpath(path, folder)), [0, 0])
                g[0] += st.st_blocks * 512
                g[1] += 1
    out: dict[str, Any] = {"disk_bytes": used, "apparent_bytes": size, "files": files}
    if group is not None:
        out["largest"] = [{"what": k, "disk_bytes": v[0], "files": v[1]}
                          for k, v in sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]]
    return out


def by_file_name(relative: str) -> str:
    """An experiment folder's file, by its name with ids and numbers masked (trial_#/result.json)."""
    return re.sub(r"[0-9a-f]{5}_\d{5}|\d+(\.\d+)?", "#", relative.split(os.sep, 1)[-1] if "trial_" in relative else relative)


def by_ray_folder(relative: str) -> str:
    """Ray's temp folder, by the part of a session it is in (logs, artifacts: Tune's staging)."""
    parts = relative.split(os.sep)
    session = next((i for i, p in enumerate(parts) if p.startswith("session_")), None)
    if session is None or session + 1 >= len(parts):
        return re.sub(r"\d+", "#", relative)
    rest = parts[session + 1:]
    if rest[0] == "logs" and len(rest) > 1:
        return "logs/" + re.sub(r"[0-9a-f]{16,}|\d+", "#", rest[1])
    return rest[0] + ("/" if len(rest) > 1 else "")


def trial_time(folder: Path) -> dict[str, Any]:
    """Sum of every trial's own iteration times (Ray's time_this_iter_s in result.json)."""
    total, rows, trials = 0.0, 0, 0
    for path in folder.glob("trial_*/result.json"):
        trials += 1
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                total += float(row.get("time_this_iter_s") or 0.0)
                rows += 1
    return {"pure_training_s": total, "result_rows": rows, "trial_folders": trials}


READ_LEADERBOARD = r"""
import json, sys, time
begin = time.perf_counter()
import pandas as pd
from caviar.config import load_config
try:
    from caviar.sweeps.experiment import _collect  # what the sweep calls at its end
except ImportError:
    from caviar.sweeps.sweeper import _collect  # before caviar.sweeps.experiment existed
imports = time.perf_counter() - begin
folder = sys.argv[1]
begin = time.perf_counter()
table = pd.read_csv(folder + "/leaderboard.csv")
csv_s = time.perf_counter() - begin
config = load_config(folder + "/caviar.yaml")
begin = time.perf_counter()
rebuilt = _collect(folder, config)
print(json.dumps({"csv_read_s": round(csv_s, 3), "rows": len(table), "rebuild_s": round(time.perf_counter() - begin, 2),
                  "rebuilt_rows": len(rebuilt), "imports_s": round(imports, 2)}))
"""


def read_leaderboard(folder: Path, env: dict[str, str], code: Path = REPO) -> dict[str, Any]:
    """Time to read leaderboard.csv, and to rebuild the leaderboard from the trial folders (what
    the sweep does at its end, through caviar.search.reader), in a process of the caviar under test."""
    done = subprocess.run([sys.executable, "-c", READ_LEADERBOARD, str(folder)], cwd=code, env=env,
                          capture_output=True, text=True, check=False)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"rows": 0, "error": (done.stderr or done.stdout)[-1500:]}


# ---------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    p = common.parser(NAME, __doc__.splitlines()[0])
    p.set_defaults(out=None)
    p.add_argument("--trials", type=int, default=1000, help="trials in the sweep (default 1000)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-size", type=int, default=256, help="training images per trial epoch")
    p.add_argument("--val-size", type=int, default=128)
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to caviar sweep after the benchmark's own (repeatable)")
    p.add_argument("--verbose", action="store_true", help="pass --verbose to caviar sweep (only if it has one)")
    p.add_argument("--tag", default="", help="suffix of the default JSON name: results/scale-<N>-<tag>.json")
    p.add_argument("--timeout", type=float, default=4 * 3600, help="seconds before the sweep is interrupted")
    p.add_argument("--code", default=None, metavar="REV",
                   help="run caviar as committed at REV (git archive into the workdir), not the working tree")
    p.add_argument("--no-post", action="store_true", help="skip report and ensemble")
    p.add_argument("--dry-run", action="store_true", help="print the plan (yaml, commands), run nothing")
    args = p.parse_args(argv)
    if args.tiny:
        args.trials = TINY_TRIALS
    if args.out is None:
        args.out = common.RESULTS / f"{NAME}-{args.trials}{'-' + args.tag if args.tag else ''}.json"
    command = common.command_line(argv, "bench_scale.py")
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    slots = max(1, min(args.trials, int(nproc // args.cpus_per_trial)))

    with common.workdir(args.workdir) as work:
        work = work.resolve()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"scale-{args.trials}"
        storage = work / f"runs-{stamp}"
        root = work / "data" / f"cifar-{args.train_size + args.val_size}-100-n0.25-s0"
        spec = experiment(name, storage, root, args.trials, args.epochs, args.val_size, args.cpus_per_trial)
        yaml_path = work / f"{name}-{stamp}.yaml"
        sweep_cmd = [sys.executable, "-m", "caviar", "sweep", str(yaml_path)]
        for override in args.overrides:
            sweep_cmd += ["--set", override]
        if args.verbose:
            sweep_cmd.append("--verbose")
        folder = storage / name
        post_cmds = {"report": [sys.executable, "-m", "caviar", "report", str(folder)],
                     "ensemble": [sys.executable, "-m", "caviar", "ensemble", str(folder), "--top-k", "5",
                                  "--seeds", "0"]}
        import yaml

        if args.dry_run:
            print(f"Scale plan: {args.trials} trials x {args.epochs} epoch(s) on {args.train_size} images, "
                  f"{slots} slots ({nproc} cores / {args.cpus_per_trial:g} CPU per trial)\n")
            print(yaml.safe_dump(spec, sort_keys=False))
            print("$ " + shlex.join(sweep_cmd))
            print("  (env: RAY_TMPDIR=<own temp dir> RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0)")
            if not args.no_post:
                for cmd in post_cmds.values():
                    print("$ " + shlex.join(cmd))
            print(f"\nwould write {args.out}")
            return {"dry_run": True, "experiment": spec, "sweep_command": sweep_cmd, "post_commands": post_cmds}

        info = common.machine()
        root = common.fixture(work / "data", train_size=args.train_size + args.val_size)
        storage.mkdir(parents=True, exist_ok=True)
        yaml_path.write_text(yaml.safe_dump(spec, sort_keys=False))
        ray_tmp = tempfile.mkdtemp(prefix="cvsc-", dir="/tmp")  # short: Ray's socket paths < 107 bytes
        env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
               "PYTHONUNBUFFERED": "1"}
        env.pop("RAY_ADDRESS", None)
        code, code_info = REPO, _code_version()
        if args.code:  # run a commit's caviar (cwd and PYTHONPATH: the driver and Ray's workers import it)
            code, code_info = export_code(args.code, work)
            env["PYTHONPATH"] = os.pathsep.join([str(code), *filter(None, [env.get("PYTHONPATH")])])
        if args.verbose and not sweep_has_flag("--verbose", env, code):
            raise SystemExit("bench_scale: `caviar sweep` has no --verbose yet; run without --verbose")
        log = work / f"{name}-{stamp}.log"
        print(f"Scale: {args.trials} trials on {slots} slots; console in {log}", flush=True)
        print("$ " + shlex.join(sweep_cmd), flush=True)
        try:
            run = run_measured(sweep_cmd, log, env, args.timeout, code=code)
            ray_tmp_du = du(Path(ray_tmp), by_ray_folder)
        finally:
            shutil.rmtree(ray_tmp, ignore_errors=True)
        print(f"  sweep: rc {run['rc']}, {run['wall_s']:.1f} s", flush=True)
        summary_path = folder / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        cons = console(log)
        log_tail = log.read_text(errors="replace").splitlines()[-15:] if run["rc"] else []
        disk = du(folder, by_file_name)
        states = sorted(folder.glob("experiment_state-*.json"))
        times = trial_time(folder)
        board = read_leaderboard(folder, env, code) if (folder / "leaderboard.csv").exists() else {"rows": 0}
        post: dict[str, Any] = {}
        if not args.no_post and run["rc"] == 0:
            for what, cmd in post_cmds.items():
                post[what] = run_timed(cmd, work / f"{name}-{stamp}-{what}.log", env, code=code)
                print(f"  {what}: rc {post[what]['rc']}, {post[what]['wall_s']:.1f} s", flush=True)

    n = args.trials
    tree = run["tree"]
    fit_s = float(summary.get("wall_time_s", float("nan")))
    pure = times["pure_training_s"]
    ideal = pure / slots
    post_s = (board.get("csv_read_s", 0.0) + sum(r["wall_s"] for r in post.values())) if post else float("nan")
    results = {
        "rc": run["rc"],
        "log_tail": log_tail,
        "trials": n, "slots": slots,
        "counts": summary.get("counts", {}),
        "leaderboard_rows": board.get("rows", 0),
        "best_val_acc": (summary.get("best_trial") or {}).get("best_val_acc"),
        "total_trial_epochs": summary.get("total_trial_epochs"), "retries": summary.get("retries"),
        # time
        "command_wall_s": round(run["wall_s"], 1),
        "fit_wall_s": fit_s,
        "startup_s": round(run["wall_s"] - fit_s, 1),  # data load, Ray start, shutdown, imports
        "pure_training_s": round(pure, 1),
        "pure_per_trial_s": round(pure / max(1, times["result_rows"]) * args.epochs, 3),
        "result_rows": times["result_rows"],
        "ideal_s": round(ideal, 1),
        "fit_efficiency": round(ideal / fit_s, 3) if fit_s > 0 else None,
        "overhead_per_trial_slot_s": round((fit_s - ideal) * slots / n, 3),
        "command_overhead_per_trial_slot_s": round((run["wall_s"] - ideal) * slots / n, 3),
        "cpu": {"user_s": run["rusage"]["user_s"], "system_s": run["rusage"]["system_s"]},
        # bytes
        "write_bytes": tree["write_bytes"], "wchar": tree["wchar"],
        "cancelled_write_bytes": tree["cancelled_write_bytes"], "read_bytes": tree["read_bytes"],
        "write_bytes_per_trial": round(tree["write_bytes"] / n), "wchar_per_trial": round(tree["wchar"] / n),
        "write_syscalls": tree["syscw"],
        "rusage_fs_output_bytes": run["rusage"]["fs_output_bytes"],  # what /usr/bin/time counts
        "write_bytes_kernel_accounted": tree["kernel_accounted"]["write_bytes"],
        "write_bytes_lost_to_autoreap": tree["lost_to_autoreap"]["write_bytes"],
        "wchar_lost_to_autoreap": tree["lost_to_autoreap"]["wchar"],
        "processes_autoreaped": tree["lost_processes"],
        "bytes_by_kind": tree["by_kind"],
        "processes_seen": tree["processes"], "tree_polls": tree["polls"],
        # console
        "console_lines": cons["lines"], "console_bytes": cons["bytes"],
        "console_lines_per_trial": round(cons["lines"] / n, 2),
        "console_top_shapes": cons["top_shapes"],
        # disk
        "experiment_disk_bytes": disk["disk_bytes"], "experiment_files": disk["files"],
        "disk_per_trial_bytes": round(disk["disk_bytes"] / n),
        "experiment_state_bytes": sum(s.stat().st_size for s in states),
        "experiment_largest": disk.get("largest", []),
        "ray_tmp_disk_bytes": ray_tmp_du["disk_bytes"],
        "ray_tmp_largest": ray_tmp_du.get("largest", []),
        # memory
        "driver_peak_rss_mb": tree["driver_peak_rss_mb"],
        # after the sweep
        "leaderboard": board,
        "report": post.get("report"), "ensemble": post.get("ensemble"),
        "post_total_s": round(post_s, 2) if post else None,
        "console_log": str(log) if args.workdir else None,
        "experiment": str(folder) if args.workdir else None,
    }
    mb = 1e6
    rows = [
        {"metric": "command wall", "value": f"{run['wall_s']:.1f} s", "per_trial": "", "goal": ""},
        {"metric": "Tune fit wall (summary.json)", "value": f"{fit_s:.1f} s", "per_trial": "", "goal": ""},
        {"metric": "ideal (pure / slots)", "value": f"{ideal:.1f} s",
         "per_trial": f"{results['pure_per_trial_s']:.2f} s pure", "goal": ""},
        {"metric": "overhead per trial per slot (fit)", "value": f"{results['overhead_per_trial_slot_s']:.3f} s",
         "per_trial": "", "goal": "<= 0.1 s"},
        {"metric": "overhead per trial per slot (command)",
         "value": f"{results['command_overhead_per_trial_slot_s']:.3f} s", "per_trial": "", "goal": ""},
        {"metric": "CPU user / system", "value": f"{run['rusage']['user_s']:.0f} / {run['rusage']['system_s']:.0f} s",
         "per_trial": "", "goal": ""},
        {"metric": "write_bytes (tree)", "value": f"{tree['write_bytes'] / mb:.1f} MB",
         "per_trial": f"{tree['write_bytes'] / n / mb:.3f} MB", "goal": "<= 2 MB"},
        {"metric": "wchar (tree)", "value": f"{tree['wchar'] / mb:.1f} MB",
         "per_trial": f"{tree['wchar'] / n / mb:.3f} MB", "goal": ""},
        {"metric": "fs outputs (rusage)", "value": f"{run['rusage']['fs_output_bytes'] / mb:.1f} MB",
         "per_trial": f"{run['rusage']['fs_output_bytes'] / n / mb:.3f} MB", "goal": ""},
        {"metric": "console lines", "value": str(cons["lines"]), "per_trial": f"{cons['lines'] / n:.2f}",
         "goal": "<= 0.1"},
        {"metric": "experiment folder (du)", "value": f"{disk['disk_bytes'] / mb:.1f} MB",
         "per_trial": f"{disk['disk_bytes'] / n / 1e3:.0f} kB", "goal": ""},
        {"metric": "experiment_state-*.json", "value": f"{results['experiment_state_bytes'] / mb:.2f} MB",
         "per_trial": "", "goal": ""},
        {"metric": "Ray temp folder (du)", "value": f"{ray_tmp_du['disk_bytes'] / mb:.1f} MB", "per_trial": "",
         "goal": ""},
        {"metric": "driver peak RSS", "value": f"{tree['driver_peak_rss_mb']:.0f} MB", "per_trial": "", "goal": ""},
        {"metric": "leaderboard.csv read", "value": f"{board.get('csv_read_s', float('nan')):.3f} s",
         "per_trial": "", "goal": ""},
        {"metric": "leaderboard rebuild (reader)", "value": f"{board.get('rebuild_s', float('nan')):.2f} s",
         "per_trial": "", "goal": ""},
    ]
    for what in ("report", "ensemble"):
        if post.get(what):
            rows.append({"metric": f"caviar {what} (command)", "value": f"{post[what]['wall_s']:.1f} s (rc {post[what]['rc']})",
                         "per_trial": "", "goal": ""})
    if post:
        rows.append({"metric": "leaderboard + report + ensemble", "value": f"{post_s:.1f} s", "per_trial": "",
                     "goal": "< 60 s"})
    print()
    print(common.table(rows, ["metric", "value", "per_trial", "goal"],
                       title=f"Scale: {n} trials x {args.epochs} epoch on {args.train_size} images, {slots} slots "
                             f"(rc {run['rc']})"))
    kinds = [{"process": k, **v, "write_mb": round(v["write_bytes"] / mb, 1), "wchar_mb": round(v["wchar"] / mb, 1)}
             for k, v in sorted(tree["by_kind"].items(), key=lambda kv: -kv[1]["write_bytes"])]
    print()
    print(common.table(kinds, ["process", "processes", "write_mb", "wchar_mb", "peak_rss_mb"],
                       title="Bytes by process kind"))
    for title, listing in (("Experiment folder", disk.get("largest", [])), ("Ray temp folder", ray_tmp_du.get("largest", []))):
        print(f"\n{title}, largest parts:")
        for part in listing[:6]:
            print(f"  {part['disk_bytes'] / mb:9.1f} MB  {part['files']:6d} files  {part['what']}")
    print("\nMost frequent console lines (digits masked):")
    for shape in cons["top_shapes"][:8]:
        print(f"  {shape['lines']:7d}  {shape['shape']}")

    goals = {
        GOALS_TEXT["overhead"]: {"trials": n, "value": results["overhead_per_trial_slot_s"],
                                 "met": results["overhead_per_trial_slot_s"] <= 0.1},
        GOALS_TEXT["bytes"]: {"trials": n, "value": results["write_bytes_per_trial"],
                              "met": results["write_bytes_per_trial"] <= 2e6},
        GOALS_TEXT["console"]: {"trials": n, "value": results["console_lines_per_trial"],
                                "met": results["console_lines_per_trial"] <= 0.1},
        GOALS_TEXT["post"]: {"trials": n, "value": results["post_total_s"],
                             "met": bool(post) and post_s < 60},
    }
    settings = {"trials": n, "epochs": args.epochs, "train_size": args.train_size, "val_size": args.val_size,
                "cpus_per_trial": args.cpus_per_trial, "slots": slots, "space": SPACE, "experiment": spec,
                "overrides": args.overrides, "verbose": args.verbose, "sweep_command": shlex.join(sweep_cmd),
                "post_commands": {k: shlex.join(v) for k, v in post_cmds.items()}, "tiny": args.tiny,
                "tag": args.tag, "caviar_code": code_info}
    return common.write_json(args.out, NAME, command, settings, results, goals, info)


def export_code(rev: str, work: Path) -> tuple[Path, dict[str, Any]]:
    """caviar/ as committed at `rev`, extracted under `work` (the working tree is left alone)."""
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.strip()
    target = work / f"code-{commit[:10]}"
    if not (target / "caviar" / "__init__.py").exists():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", "--format=tar", commit, "caviar"], cwd=REPO,
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target, {"commit": commit, "rev": rev, "from": f"git archive into {target}"}


def _code_version() -> dict[str, Any]:
    """The commit the sweep ran, and whether caviar/ had uncommitted changes (others edit the tree)."""
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=30,
                                  check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"), "from": "working tree",
            "caviar_uncommitted_changes": bool(git("status", "--porcelain", "--", "caviar"))}


if __name__ == "__main__":
    main()
