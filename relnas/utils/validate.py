"""Validation of numeric settings before any work starts: each failure is one ``ValueError`` line
naming the key, the value and what is allowed (callers re-raise it as their ConfigError)."""
from __future__ import annotations

import math
from typing import Any, Optional


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def finite_or_none(x: Any) -> Optional[float]:
    """``x`` as a finite float, or None (not a number, NaN, infinite)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def check_int(key: str, value: Any, minimum: int = 1, optional: bool = False) -> Optional[int]:
    """``value`` must be an integer >= ``minimum`` (or None when ``optional``)."""
    if value is None and optional:
        return None
    if not _is_int(value) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{key} must be {what}{' or null' if optional else ''}, got {value!r}")
    return int(value)


def check_float(key: str, value: Any, low: float, high: float = math.inf, low_open: bool = False,
                high_open: bool = True, optional: bool = False, hint: str = "") -> Optional[float]:
    """``value`` must be a finite number in the interval given by ``low``/``high`` (open or closed)."""
    if value is None and optional:
        return None
    ok = _is_number(value)
    if ok:
        v = float(value)
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open or math.isinf(high) else "]"
        interval = f"{lo}{low:g}, {'inf' if math.isinf(high) else format(high, 'g')}{hi}"
        raise ValueError(f"{key} must be a number in {interval}, got {value!r}" + (f"; {hint}" if hint else ""))
    return float(value)
