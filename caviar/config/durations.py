"""Durations as people write and read them: "30m" <-> 1800 s. The one home of duration text."""

from __future__ import annotations

import math
import re
from typing import Any

from caviar.errors import ConfigError

_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(s|min|m|h|d)")


def parse_duration(text: Any) -> float:
    """"30m" -> 1800.0; also "90s", "1h30m", "1.5h", "2d" or a plain number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        raw = str(text).strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", raw):
            seconds = float(raw)
        elif raw and _PART.sub("", raw) == "":
            seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(raw))
        else:
            raise ConfigError(f"budget {text!r}: expected a duration such as 90s, 30m, 1h30m or 2h")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"budget {text!r}: must be a positive duration such as 30m")
    return seconds


def format_duration(seconds: float, exact: bool = False) -> str:
    """A budget or plan: "90s", "12m", "1h05m". `exact` keeps the seconds of a clock that counts
    down (an ETA): "12m05s"."""
    seconds = int(round(seconds)) if not exact else int(seconds)
    if exact:
        if seconds >= 3600:
            return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
    if seconds < 120:
        return f"{seconds}s"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"


def format_hours(hours: float) -> str:
    """A cost estimate in hours, rounded as an estimate deserves: "1 min", "40 min", "3.0 h"."""
    if hours < 1 / 60:
        return "1 min"
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h"
