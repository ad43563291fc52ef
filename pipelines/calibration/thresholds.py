"""The thresholds a calibration sweeps."""
from __future__ import annotations

import numpy as np


def parse_thresholds(text: str) -> np.ndarray:
    """``start:stop:step`` (inclusive of stop) or ``t1,t2,...`` -> sorted float[thresholds] in (0, 1].

    Values are rounded to 10 decimals so 3 * 0.05 is written as 0.15.
    """
    text = text.strip()
    if ":" in text:
        parts = [float(p) for p in text.split(":")]
        if len(parts) != 3 or parts[2] <= 0 or parts[1] < parts[0]:
            raise ValueError(f"--thresholds takes start:stop:step with step > 0 and stop >= start, got {text!r}")
        start, stop, step = parts
        values = start + step * np.arange(int(np.floor((stop - start) / step + 1e-9)) + 1)
    else:
        values = np.asarray([float(p) for p in text.split(",") if p.strip()])
    values = np.unique(np.round(values, 10))
    if not len(values) or values.min() <= 0 or values.max() > 1:
        raise ValueError(f"thresholds must be in (0, 1], got {text!r}")
    return values
