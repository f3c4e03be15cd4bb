"""What `caviar sweep` prints at its end: the leaderboard, counts, where the results and the
failed trials' logs are, and what to do next."""

from __future__ import annotations

from caviar import storage
from caviar.layout import LEADERBOARD_FILE, SUMMARY_FILE
from caviar.results.border import format_warnings
from caviar.results.leaderboard import deadline_reached, format_table, interrupted
from caviar.sweeps.experiment import SweepOutcome
from caviar.sweeps.stages import StagedResult, describe_stages


def describe(result: SweepOutcome) -> str:
    """The short report printed at the end of `caviar sweep` (a SweepResult or a staged one)."""
    counts = ", ".join(f"{n} {status}" for status, n in result.summary["counts"].items() if n)
    lines = [format_table(result.trials), "", f"{result.summary['trials']} trials: {counts}"]
    if deadline_reached(result.summary):
        lines.append(f"Stopped at the budget's deadline ({result.summary['budget'].get('command_wall_time_s')} s); "
                     "every trial's results and checkpoints are kept.")
    elif interrupted(result.summary):
        # a staged sweep resumes from its experiment folder, which holds every stage
        folder = result.root if isinstance(result, StagedResult) else result.path
        lines.append(f"Interrupted. Finish it with: caviar sweep --resume {folder}")
    errored = result.trials[result.trials["status"] == "error"] if "status" in result.trials else result.trials[:0]
    if len(errored):
        shown = ", ".join(storage.join(str(path), "error.txt") for path in errored["path"].head(3))
        more = f" and {len(errored) - 3} more" if len(errored) > 3 else ""
        lines.append(f"{len(errored)} trial{'s' if len(errored) > 1 else ''} failed; what went wrong: {shown}{more}")
    lines.append(f"Results: {result.path} ({LEADERBOARD_FILE}, {SUMMARY_FILE})")
    if isinstance(result, StagedResult):  # each stage printed its own border warnings as it ended
        lines.append(describe_stages(result))
    elif result.summary.get("border_warnings"):
        lines.append(format_warnings(result.summary["border_warnings"]))
    return "\n".join(lines)
