"""Values as the study keeps and words them: a finite float or ``None``, and short text."""

from __future__ import annotations

import math
from typing import Any


def num(x: Any) -> float | None:
    """A finite float, or None."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt(x: Any, digits: int = 3) -> str:
    """``x`` to ``digits`` significant digits, ``n/a`` when it is not a finite number."""
    v = num(x)
    return "n/a" if v is None else f"{v:.{digits}g}"
