"""Reading a tool's CSV: the rows it holds, mapped to frame-table values but not yet arranged."""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
# pandas is imported where it is used: every affectflow command imports the ingest package.


class IngestError(ValueError):
    """One CSV cannot be mapped; it becomes a dead letter (stage ``ingest``)."""


def read_tool_csv(data: bytes) -> pd.DataFrame:
    """A tool CSV as a DataFrame with stripped header names (OpenFace writes ", name")."""
    import pandas as pd
    try:
        df = pd.read_csv(io.BytesIO(data), skipinitialspace=True)
    except Exception as exc:  # noqa: BLE001 - pandas raises several types for a bad file
        raise IngestError(f"not a readable CSV: {type(exc).__name__}: {exc}") from exc
    df.columns = [str(c).strip() for c in df.columns]
    if df.empty:
        raise IngestError("the CSV has a header but no rows")
    return df


def numeric(df: pd.DataFrame, column: str) -> np.ndarray:
    import pandas as pd
    try:
        return pd.to_numeric(df[column], errors="raise").to_numpy(np.float64)
    except (ValueError, TypeError) as exc:
        raise IngestError(f"column {column!r} is not numeric: {exc}") from exc


def require(df: pd.DataFrame, columns: Sequence[str], tool: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise IngestError(f"not a {tool} CSV: missing column(s) {missing}")


@dataclass
class ToolRows:
    """One CSV row per (frame, face attempt), mapped but not yet arranged into frame rows."""
    frame_index: np.ndarray                 # int64[n]
    timestamp_s: np.ndarray                 # float64[n]
    tracked: np.ndarray                     # bool[n]: a face (OpenFace success, py-feat box present)
    rank_key: np.ndarray                    # float64[n]: ascending order of faces within a frame
                                            # (ties broken by the box's x, then y)
    boxes: np.ndarray                       # float64[n, 4] x, y, w, h (NaN = unknown)
    scores: np.ndarray                      # float64[n] detector_score
    probs: np.ndarray                       # float32[n, labels]; rows without a face: anything
    face_values: dict[str, np.ndarray]      # feature column -> values (null where no face)
    frame_values: dict[str, np.ndarray]     # feature column -> values kept on faceless rows too
    face_id: Optional[np.ndarray] = None    # float64[n]: the tool's face identity when it has one
                                            # (OpenFace face_id); unique within a frame


def clip_boxes(x0, y0, x1, y1, width: int, height: int) -> np.ndarray:
    x0, x1 = np.clip(x0, 0, width), np.clip(x1, 0, width)
    y0, y1 = np.clip(y0, 0, height), np.clip(y1, 0, height)
    return np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)
