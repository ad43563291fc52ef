"""`affectflow ingest {openface,pyfeat} INPUT --output OUT`: other tools' CSVs -> affectflow's tables.

Labs that already ran OpenFace 2.0 (FeatureExtraction / FaceLandmarkVidMulti) or py-feat over
their videos have one CSV per video. This maps each CSV to the frame rows, video row and dead
letters `affectflow run` would have written, in the same layout (``frames/``, ``videos/``,
``dead_letters/``, zstd Parquet, Hive-partitioned by video_id, committed from a staging folder
by `pipelines.outputs.commit_staging`) plus ``run_manifest.json``, so ``affectflow aggregate``,
``validate`` and ``calibrate`` work on the result unchanged.

INPUT: a folder (every ``.csv`` below it), a quoted glob, one tool CSV, or a manifest
(``.csv``/``.parquet`` with a ``path`` column; a ``.csv`` is a manifest when its header has
``path``) with optional ``video_id``, ``label``, ``subject_id`` (as `affectflow run`'s, read by
transforms.discover.read_manifest, any other column carried to the video table) and three
ingest columns that are not carried: ``frame_width``, ``frame_height`` (pixels) and ``fps``.
Video ids follow transforms.discover: the manifest's, else the file stem plus 8 hex digits of
the SHA-1 of the path relative to the glob's fixed prefix (so ``clip.csv`` and ``clip.mp4`` get
different ids: give ``video_id`` in a manifest to line an ingest up with a video run).

Mapping, per CSV row (one row per frame and tracked face):

* OpenFace: header names are stripped of the spaces OpenFace writes after each comma;
  ``frame`` is 1-based, ``frame_index = frame - 1``; ``timestamp`` -> ``timestamp_s``;
  ``face_found`` = ``success == 1``; ``detector_score`` = ``confidence`` (the tracker's, the
  only face score OpenFace writes); box = the bounding box of the 2D landmarks ``x_0..x_67``,
  ``y_0..y_67`` clipped to the frame, null when the CSV has no 2D landmarks (validation then
  does not require a box: schemas.external.face_rule_exemptions); ``face_id`` -> ``of_face_id``.
  OpenFace writes no emotion: ``prob_*`` come from **emfacs_rules**, a rule over the AU
  intensities (`emfacs_probabilities`), not a trained model.
* py-feat (a ``Fex.to_csv`` of ``Detector.detect_video``): ``frame`` is 0-based and is
  ``frame_index``; ``timestamp_s = frame / fps`` (py-feat's ``approx_time`` is MM:SS text, too
  coarse); a face = FaceRectX/Y/Width/Height and FaceScore all present (py-feat writes one
  all-NaN row for a frame without a face); box = FaceRect clipped to the frame,
  ``detector_score`` = FaceScore; ``prob_*`` = its emotion columns renamed to the FER labels
  (anger->angry, happiness->happy, sadness->sad) and renormalised to sum 1.

Several faces in a frame: every tracked face is a row; ``face_index`` ranks them within the
frame -- OpenFace by face_id (face_id 0 is the primary face whenever it is tracked), py-feat
by box area (largest first, as `affectflow run`). A frame where no face was tracked is one row
with face_found false and null face columns. frame_width/frame_height: ``--frame-size WxH``, or
the manifest's columns (which win); neither is known from a CSV, so one of them is required.
fps: ``--fps`` or the manifest's ``fps``; without it the OpenFace timestamps give it (median
frame interval); py-feat requires it.

A CSV that cannot be read or parsed, lacks a required column or has inconsistent rows (repeated
face, timestamps not increasing) gets a dead letter (stage ``ingest``) and a failed video row;
the other files go on. Reruns skip a CSV whose bytes and settings are unchanged (``--force``
ingests everything), as `affectflow run` does.

Plain Python rather than a Beam graph: each CSV is one independent, already-computed table
(no decoding, no model), so the work is parse + write, I/O-bound and small per file; ``--workers``
spreads files over processes for folders of thousands of CSVs.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import hashlib
import io
import json
import os
import re
import time
from dataclasses import dataclass, replace
from typing import Mapping, Optional, Sequence

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.registry import FER2013_LABELS, get_spec, resolve
from pipelines.config import RunConfig, load_config
from schemas.external import (OPENFACE, OPENFACE_INTENSITY_AUS, OPENFACE_PRESENCE_AUS, PYFEAT, PYFEAT_AUS,
                              PYFEAT_EMOTIONS, PYFEAT_POSE, pyfeat_column)
from schemas.tables import PARTITION_COLUMN, dead_letter_schema, frame_schema, prob_column, video_schema
from transforms.aggregate import AggregationSettings
from transforms.elements import ChunkSummary, DeadLetter, VideoInfo, VideoInput

if TYPE_CHECKING:
    import pandas as pd
# pandas and Beam (FileSystems, transforms.discover/videos/write, pipelines.outputs) are imported where
# they are used: `affectflow --help` and every other command import this module for its arguments.

SOURCES = (OPENFACE, PYFEAT)
TABLES = ("frames", "videos", "dead_letters")
STAGE = "ingest"
EMFACS_MODEL = "emfacs_rules"
# Manifest columns that set how a CSV is read; they are not carried to the video table.
INGEST_MANIFEST_COLUMNS = ("frame_width", "frame_height", "fps")

# --- the EMFACS rule --------------------------------------------------------------------------

# EMFACS-7 prototypes (Friesen & Ekman 1983), restricted to the AUs OpenFace 2.0 estimates an
# intensity for (disgust's AU16 is not one of them).
EMFACS_PROTOTYPES: Mapping[str, tuple[str, ...]] = {
    "angry": ("04", "05", "07", "23"),
    "disgust": ("09", "15"),
    "fear": ("01", "02", "04", "05", "07", "20", "26"),
    "happy": ("06", "12"),
    "sad": ("01", "04", "15"),
    "surprise": ("01", "02", "05", "26"),
}
# The AU a prototype cannot do without: AU15 (lip-corner depressor) alone is not disgust, nor is
# AU6 (cheek raiser, also a squint) alone happiness. The score is capped at this AU's intensity.
EMFACS_REQUIRED: Mapping[str, str] = {"disgust": "09", "happy": "12"}
EMFACS_NEUTRAL_GAIN = 2.0       # neutral = max(0, 1 - gain * strongest prototype score)
AU_INTENSITY_MAX = 5.0


def emfacs_probabilities(intensities: np.ndarray, labels: Sequence[str] = FER2013_LABELS) -> np.ndarray:
    """Rule-based (not learned) emotion scores from OpenFace AU intensities; float32[n, labels].

    ``intensities``: float[n, 17], OpenFace's AU01_r..AU45_r (schemas.external.OPENFACE_INTENSITY_AUS
    order), 0-5; values are clipped to [0, 5]. Per emotion: the mean intensity of its EMFACS
    prototype AUs divided by 5, in [0, 1], capped by its required AU's intensity / 5 where it
    has one (EMFACS_REQUIRED: disgust needs AU9, happiness AU12). neutral = max(0, 1 - 2 x the
    strongest emotion score), so an expression beats neutral once its score passes 1/3 (a
    prototype mean intensity above 5/3, between FACS "trace" and "slight"); at exactly 1/3 the
    two tie and the frame's label is neutral (`frame_rows`). With no AU active neutral is 1.
    The row is then divided by its sum (always > 0), so it sums to 1. ``labels`` must be the six
    prototype emotions plus neutral.
    """
    if set(labels) != set(EMFACS_PROTOTYPES) | {"neutral"}:
        raise ValueError(f"the EMFACS rule scores {sorted(EMFACS_PROTOTYPES) + ['neutral']}, not {list(labels)}")
    x = np.clip(np.asarray(intensities, np.float64), 0.0, AU_INTENSITY_MAX).reshape(-1, len(OPENFACE_INTENSITY_AUS))
    position = {au: i for i, au in enumerate(OPENFACE_INTENSITY_AUS)}
    scores = {e: x[:, [position[au] for au in aus]].mean(axis=1) / AU_INTENSITY_MAX
              for e, aus in EMFACS_PROTOTYPES.items()}
    for e, au in EMFACS_REQUIRED.items():
        scores[e] = np.minimum(scores[e], x[:, position[au]] / AU_INTENSITY_MAX)
    strongest = np.max(np.stack(list(scores.values()), axis=1), axis=1)
    scores["neutral"] = np.maximum(0.0, 1.0 - EMFACS_NEUTRAL_GAIN * strongest)
    raw = np.stack([scores[l] for l in labels], axis=1)
    return (raw / raw.sum(axis=1, keepdims=True)).astype(np.float32)


PYFEAT_TO_FER = {"anger": "angry", "disgust": "disgust", "fear": "fear", "happiness": "happy",
                 "sadness": "sad", "surprise": "surprise", "neutral": "neutral"}
PYFEAT_FACE_COLUMNS = ("FaceRectX", "FaceRectY", "FaceRectWidth", "FaceRectHeight", "FaceScore")


# --- inputs ----------------------------------------------------------------------------------

class IngestError(ValueError):
    """One CSV cannot be mapped; it becomes a dead letter (stage ``ingest``)."""


@dataclass(frozen=True)
class IngestTask:
    """One CSV and how to read it."""
    video: VideoInput
    source: str                     # openface | pyfeat
    frame_width: int
    frame_height: int
    fps: Optional[float]            # None: from the OpenFace timestamps
    staging_root: str
    run_id: str
    settings: AggregationSettings
    extra_fields: tuple[pa.Field, ...]
    file_metadata: tuple[tuple[str, str], ...]
    provenance: tuple[tuple[str, str], ...]     # models (JSON), settings_fingerprint (filled per task)
    previous: Optional[tuple[str, str]] = None  # (content_sha256, settings_fingerprint) of its row, if any


def parse_frame_size(text: Optional[str]) -> Optional[tuple[int, int]]:
    """``"1280x720"`` -> (1280, 720); None stays None; anything else is an InputError."""
    from transforms.discover import InputError
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise InputError(f"--frame-size must be WIDTHxHEIGHT in pixels, e.g. 1280x720; got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _is_manifest(path: str) -> bool:
    from apache_beam.io.filesystems import FileSystems
    if path.lower().endswith(".parquet"):
        return True
    with FileSystems.open(path) as fh:
        header = fh.readline().decode("utf-8", "replace")
    return "path" in [c.strip().strip('"') for c in header.split(",")]


def discover_csvs(spec: str) -> tuple[list[VideoInput], list[pa.Field]]:
    """Inputs for a folder, glob, single tool CSV or manifest; plus the manifest's carried columns.

    The manifest's ingest columns (INGEST_MANIFEST_COLUMNS) stay in each VideoInput's ``extra``
    but are not among the returned fields; `split_ingest_columns` takes them out.
    Raises InputError when nothing matches or the manifest is malformed.
    """
    from apache_beam.io.filesystems import FileSystems
    from transforms.discover import InputError, _expand_pattern, _glob_base, make_video_id, read_manifest
    has_glob = any(c in spec for c in "*?[")
    if not has_glob and spec.lower().endswith((".csv", ".parquet")) and FileSystems.exists(spec):
        if _is_manifest(spec):
            inputs, fields = read_manifest(spec)
            return inputs, [f for f in fields if f.name not in INGEST_MANIFEST_COLUMNS]
        base = spec.rsplit("/", 1)[0] + "/" if "/" in spec else ""
        return [VideoInput(make_video_id(spec, base), spec)], []
    pattern = _expand_pattern(spec if "://" in spec else os.path.abspath(spec))
    base = _glob_base(pattern)
    matched = sorted({m.path for r in FileSystems.match([pattern]) for m in r.metadata_list})
    csvs = [p for p in matched if p.lower().endswith(".csv")]
    if not csvs:
        raise InputError(f"no .csv files matched {spec!r}")
    return [VideoInput(make_video_id(p, base), p) for p in csvs], []


def split_ingest_columns(video: VideoInput) -> tuple[VideoInput, dict]:
    """(the input without its ingest manifest columns, {frame_width, frame_height, fps} given)."""
    given = {k: v for k, v in video.extra if k in INGEST_MANIFEST_COLUMNS and v is not None}
    return replace(video, extra=tuple((k, v) for k, v in video.extra if k not in INGEST_MANIFEST_COLUMNS)), given


# --- one CSV -> frame rows --------------------------------------------------------------------

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


def _numeric(df: pd.DataFrame, column: str) -> np.ndarray:
    import pandas as pd
    try:
        return pd.to_numeric(df[column], errors="raise").to_numpy(np.float64)
    except (ValueError, TypeError) as exc:
        raise IngestError(f"column {column!r} is not numeric: {exc}") from exc


def _require(df: pd.DataFrame, columns: Sequence[str], tool: str) -> None:
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


def _clip_boxes(x0, y0, x1, y1, width: int, height: int) -> np.ndarray:
    x0, x1 = np.clip(x0, 0, width), np.clip(x1, 0, width)
    y0, y1 = np.clip(y0, 0, height), np.clip(y1, 0, height)
    return np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)


def openface_rows(df: pd.DataFrame, width: int, height: int, labels: Sequence[str]) -> ToolRows:
    """Map an OpenFace 2.0 CSV (see the module docstring); raises IngestError."""
    intensity = [f"AU{au}_r" for au in OPENFACE_INTENSITY_AUS]
    _require(df, ["frame", "timestamp", "confidence", "success", *intensity], "OpenFace 2.0")
    n = len(df)
    frame = _numeric(df, "frame")
    if np.isnan(frame).any() or (frame < 1).any() or (frame != np.round(frame)).any():
        raise IngestError("OpenFace 'frame' must be whole numbers from 1")
    success = _numeric(df, "success")
    if not np.isin(success, (0, 1)).all():
        raise IngestError("OpenFace 'success' must be 0 or 1")
    tracked = success == 1
    face_id = _numeric(df, "face_id") if "face_id" in df.columns else np.zeros(n)
    aus = np.stack([_numeric(df, c) for c in intensity], axis=1)
    if np.isnan(aus[tracked]).any():
        raise IngestError("AU intensities (AUxx_r) are empty on a frame where tracking succeeded")
    landmarks = [f"{a}_{i}" for a in "xy" for i in range(68)]
    if all(c in df.columns for c in landmarks):
        xs = np.stack([_numeric(df, f"x_{i}") for i in range(68)], axis=1)
        ys = np.stack([_numeric(df, f"y_{i}") for i in range(68)], axis=1)
        with np.errstate(all="ignore"):
            boxes = _clip_boxes(np.nanmin(xs, 1), np.nanmin(ys, 1), np.nanmax(xs, 1), np.nanmax(ys, 1), width, height)
    else:
        boxes = np.full((n, 4), np.nan)
    face_values = {"of_face_id": face_id}
    face_values.update({f"au{au}_r": aus[:, i] for i, au in enumerate(OPENFACE_INTENSITY_AUS)})
    for au in OPENFACE_PRESENCE_AUS:
        name = f"AU{au}_c"
        values = _numeric(df, name) if name in df.columns else np.full(n, np.nan)
        if not np.isin(values[~np.isnan(values)], (0, 1)).all():
            raise IngestError(f"OpenFace '{name}' must be 0 or 1")
        face_values[f"au{au}_c"] = values
    optional = ["pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz",
                *[f"gaze_{e}_{a}" for e in "01" for a in "xyz"], "gaze_angle_x", "gaze_angle_y"]
    face_values.update({c.lower(): (_numeric(df, c) if c in df.columns else np.full(n, np.nan)) for c in optional})
    return ToolRows(frame_index=frame.astype(np.int64) - 1, timestamp_s=_numeric(df, "timestamp"), tracked=tracked,
                    rank_key=face_id, face_id=face_id, boxes=boxes, scores=np.clip(_numeric(df, "confidence"), 0.0, 1.0),
                    probs=emfacs_probabilities(np.nan_to_num(aus), labels), face_values=face_values,
                    frame_values={"of_confidence": _numeric(df, "confidence"), "of_success": tracked.astype(np.float64)})


def pyfeat_rows(df: pd.DataFrame, width: int, height: int, fps: float, labels: Sequence[str]) -> ToolRows:
    """Map a py-feat Fex CSV (see the module docstring); raises IngestError."""
    _require(df, ["frame", *PYFEAT_FACE_COLUMNS, *PYFEAT_EMOTIONS], "py-feat")
    n = len(df)
    frame = _numeric(df, "frame")
    if np.isnan(frame).any() or (frame < 0).any() or (frame != np.round(frame)).any():
        raise IngestError("py-feat 'frame' must be whole numbers from 0")
    x, y, w, h, score = (_numeric(df, c) for c in PYFEAT_FACE_COLUMNS)
    tracked = ~np.isnan(np.stack([x, y, w, h, score], axis=1)).any(axis=1)
    emotions = np.stack([_numeric(df, e) for e in PYFEAT_EMOTIONS], axis=1)
    sums = emotions.sum(axis=1)
    bad = tracked & ~(sums > 0)             # NaN or all zero
    if bad.any():
        raise IngestError(f"emotion scores are missing or all zero on {int(bad.sum())} face row(s)")
    fer = [PYFEAT_TO_FER[e] for e in PYFEAT_EMOTIONS]
    probs = np.zeros((n, len(labels)), np.float32)
    with np.errstate(all="ignore"):
        normalised = emotions / sums[:, None]
    for j, label in enumerate(labels):
        probs[:, j] = np.nan_to_num(normalised[:, fer.index(label)])
    face_values = {pyfeat_column(f"AU{au}"): (_numeric(df, f"AU{au}") if f"AU{au}" in df.columns else np.full(n, np.nan))
                   for au in PYFEAT_AUS}
    face_values.update({pyfeat_column(e): emotions[:, i] for i, e in enumerate(PYFEAT_EMOTIONS)})
    face_values.update({pyfeat_column(p): (_numeric(df, p) if p in df.columns else np.full(n, np.nan))
                        for p in PYFEAT_POSE})
    return ToolRows(frame_index=frame.astype(np.int64), timestamp_s=frame / fps, tracked=tracked,
                    rank_key=-(w * h), boxes=_clip_boxes(x, y, x + w, y + h, width, height),
                    scores=np.clip(score, 0.0, 1.0), probs=probs, face_values=face_values, frame_values={})


def label_index(probs: np.ndarray, labels: Sequence[str], neutral: str = "neutral") -> np.ndarray:
    """int[n]: each row's most probable label, ``neutral`` winning a tie (a tool's score that only
    equals neutral's is no evidence of an expression); other ties go to the earlier label."""
    if neutral not in labels or not len(probs):
        return probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    first = list(labels).index(neutral)
    order = np.array([first] + [j for j in range(len(labels)) if j != first])
    return order[probs[:, order].argmax(axis=1)]


def frame_rows(rows: ToolRows, video_id: str, width: int, height: int, labels: Sequence[str],
               groups: Sequence[str]) -> pa.Table:
    """The frame table of one video (schemas.tables.frame_schema(labels, groups)), ordered by
    frame_index then face_index: every tracked face a row, ranked by ``rank_key`` within its
    frame (ties by box x, then y); one faceless row (the frame's first attempt) for a frame
    without a tracked face. A ``face_id`` repeated within a frame raises IngestError."""
    import pandas as pd
    order = pd.DataFrame({"frame": rows.frame_index, "tracked": rows.tracked, "key": rows.rank_key,
                          "x": rows.boxes[:, 0], "y": rows.boxes[:, 1], "row": np.arange(len(rows.tracked))})
    if rows.face_id is not None:
        ids = pd.DataFrame({"frame": rows.frame_index, "face_id": rows.face_id})[rows.tracked]
        if ids.duplicated().any():
            raise IngestError("a face appears twice in one frame (repeated frame and face_id)")
    order = order.sort_values(["frame", "tracked", "key", "x", "y"], ascending=[True, False, True, True, True],
                              kind="stable")
    order["faces"] = order.groupby("frame")["tracked"].transform("sum")
    order["rank"] = order.groupby("frame").cumcount()
    kept = order[order.tracked | ((order.faces == 0) & (order["rank"] == 0))]
    pick = kept.row.to_numpy()
    has_face = kept.tracked.to_numpy()
    frame_index = rows.frame_index[pick]
    timestamps = rows.timestamp_s[pick]
    first = np.r_[True, frame_index[1:] != frame_index[:-1]]
    per_frame_ts = timestamps[first]
    if np.isnan(per_frame_ts).any() or (np.diff(per_frame_ts) <= 0).any():
        raise IngestError("timestamps must be present and increase with the frame number")
    n = len(pick)

    def face_col(values: np.ndarray, typ: pa.DataType) -> pa.Array:
        v = np.asarray(values, np.float64)[pick]
        return pa.array(np.nan_to_num(v).astype(typ.to_pandas_dtype()), type=typ, mask=~has_face | np.isnan(v))

    probs = rows.probs[pick]
    label_names = np.asarray(labels, dtype=object)
    columns = {
        PARTITION_COLUMN: pa.array([video_id] * n, pa.string()),
        "segment_index": pa.array(np.zeros(n, np.int32)),
        "frame_index": pa.array(frame_index, pa.int64()),
        "timestamp_s": pa.array(timestamps, pa.float64()),
        "frame_width": pa.array(np.full(n, width, np.int32)),
        "frame_height": pa.array(np.full(n, height, np.int32)),
        "faces_in_frame": pa.array(kept.faces.to_numpy().astype(np.int16)),
        "face_found": pa.array(has_face),
        "face_index": pa.array(kept["rank"].to_numpy().astype(np.int16), mask=~has_face),
        "box_x": face_col(rows.boxes[:, 0], pa.float32()), "box_y": face_col(rows.boxes[:, 1], pa.float32()),
        "box_w": face_col(rows.boxes[:, 2], pa.float32()), "box_h": face_col(rows.boxes[:, 3], pa.float32()),
        "detector_score": face_col(rows.scores, pa.float32()),
    }
    for j, label in enumerate(labels):
        columns[prob_column(label)] = pa.array(probs[:, j], pa.float32(), mask=~has_face)
    columns["emotion_label"] = pa.array(np.where(has_face, label_names[label_index(probs, labels)], None), pa.string())
    columns["emotion_confidence"] = pa.array(probs.max(axis=1), pa.float32(), mask=~has_face)
    schema = frame_schema(labels, groups)
    for name, values in rows.face_values.items():
        columns[name] = face_col(values, schema.field(name).type)
    for name, values in rows.frame_values.items():
        v = np.asarray(values, np.float64)[pick]
        typ = schema.field(name).type
        columns[name] = pa.array(v.astype(typ.to_pandas_dtype()), type=typ, mask=np.isnan(v))
    return pa.table([columns[f.name] for f in schema], schema=schema)


def estimate_fps(frame_index: np.ndarray, timestamp_s: np.ndarray) -> Optional[float]:
    """Frames per second from (frame, timestamp) pairs: the median over consecutive distinct frames."""
    frames, first = np.unique(frame_index, return_index=True)
    ts = timestamp_s[first]
    if len(frames) < 2:
        return None
    rates = np.diff(frames) / np.diff(ts)
    rates = rates[np.isfinite(rates) & (rates > 0)]
    return float(np.median(rates)) if len(rates) else None


def map_csv(data: bytes, source: str, video_id: str, width: int, height: int, fps: Optional[float],
            labels: Sequence[str]) -> tuple[pa.Table, Optional[float]]:
    """One tool CSV's bytes -> (its frame table, the video's fps); raises IngestError."""
    df = read_tool_csv(data)
    if source == OPENFACE:
        rows = openface_rows(df, width, height, labels)
        fps = fps or estimate_fps(rows.frame_index, rows.timestamp_s)
    else:
        if not fps:
            raise IngestError("py-feat CSVs need the video's fps (--fps or a manifest fps column)")
        rows = pyfeat_rows(df, width, height, fps, labels)
    return frame_rows(rows, video_id, width, height, labels, (source,)), fps


# --- one CSV -> files ---------------------------------------------------------------------------

def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def task_fingerprint(common: str, task: IngestTask) -> str:
    """SHA-256 of the run's row-shaping settings and this file's frame size and fps."""
    payload = [common, task.frame_width, task.frame_height, task.fps]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def ingest_one(task: IngestTask) -> str:
    """Map one CSV and write its partitions under ``task.staging_root``; return the video status
    (ok | no_face | failed | skipped). Never raises for a bad file: that is a dead letter."""
    from apache_beam.io.filesystems import FileSystems
    from transforms.videos import build_video_row, completeness_failures, dead_letter_rows
    from transforms.write import partition_dir, records_table, write_parquet
    video, settings = task.video, task.settings
    provenance = dict(task.provenance)
    metadata = dict(task.file_metadata)
    failures: list[DeadLetter] = []
    summaries: list[ChunkSummary] = []
    info = None
    sha = size = None
    try:
        with FileSystems.open(video.path) as fh:
            data = fh.read()
        sha, size = _sha256(data), len(data)
        if task.previous == (sha, provenance["settings_fingerprint"]):
            return "skipped"
        table, fps = map_csv(data, task.source, video.video_id, task.frame_width, task.frame_height, task.fps,
                             settings.labels)
        frames = table.column("frame_index").to_numpy()
        primary = table.filter(pc.equal(table.column("face_index"), 0))
        primary_labels = primary.column("emotion_label").to_pylist()
        n_frames = int(len(np.unique(frames)))
        info = VideoInfo(video, sha, size, None, task.frame_width, task.frame_height, fps, None, n_frames, 1)
        summaries.append(ChunkSummary(
            video_id=video.video_id, segment_index=0, chunk_index=0, last=True, frames_decoded=n_frames,
            frames_sampled=n_frames, frames_with_face=primary.num_rows,
            label_counts=tuple(primary_labels.count(l) for l in settings.labels),
            last_timestamp_s=float(table.column("timestamp_s").to_numpy().max()) if fps else None,
            rows_written=table.num_rows))
        write_parquet(table, FileSystems.join(partition_dir(task.staging_root, "frames", video.video_id),
                                              "part-00000-00000.parquet"), metadata)
    except Exception as exc:  # noqa: BLE001 - one bad file is a dead letter, not a failed run
        failures.append(DeadLetter.from_exception(video.video_id, video.path, STAGE, exc))
    failures += completeness_failures(video, info, summaries, failures)
    row = build_video_row(video, info, summaries, failures, settings, task.run_id)
    if info is None and sha is not None:
        row.update(content_sha256=sha, size_bytes=size)
    row.update(provenance, processed_at=dt.datetime.now(dt.timezone.utc))
    schema = video_schema(settings.labels, settings.broad_labels, task.extra_fields)
    write_parquet(records_table([row], schema),
                  FileSystems.join(partition_dir(task.staging_root, "videos", video.video_id), "part-00000.parquet"),
                  metadata)
    write_parquet(records_table(dead_letter_rows(failures, task.run_id), dead_letter_schema()),
                  FileSystems.join(partition_dir(task.staging_root, "dead_letters", video.video_id),
                                   "part-00000.parquet"), metadata)
    return row["status"]


# --- the whole run -----------------------------------------------------------------------------

def _aggregation_settings(config: RunConfig, model: str) -> AggregationSettings:
    a = config.job.aggregate
    return AggregationSettings(labels=tuple(get_spec(model).labels), threshold=a.threshold, fallback=a.fallback,
                               neutral_label=a.neutral_label, broad_map=dict(a.broad_map))


def _model_entry(source: str) -> dict:
    """What produced the emotion columns, for the manifest, the models column and file metadata."""
    if source == OPENFACE:
        return {**resolve(EMFACS_MODEL).manifest_entry(), "note": "rule-based EMFACS-7 scores, not a trained model",
                "features_from": "OpenFace 2.0 CSV (not run here)"}
    return {"name": "pyfeat", "kind": "external", "source": "py-feat CSV output (not run here)", "origin": "input",
            "files": {}, "sha256": {}, "labels": list(FER2013_LABELS),
            "note": "py-feat's own emotion scores, renamed to the FER labels and renormalised to sum 1"}


def _new_run_id() -> str:
    from pipelines.extract import new_run_id
    return new_run_id()


def execute_ingest(config: RunConfig, source: str, frame_size: Optional[tuple[int, int]] = None,
                   fps: Optional[float] = None, workers: int = 1, force: bool = False,
                   argv_for_manifest: Optional[list[str]] = None) -> dict:
    """Ingest ``config.job.input`` (tool CSVs) into ``config.job.output``; return the run manifest.

    ``frame_size`` (width, height) and ``fps`` apply to every CSV whose manifest row does not give
    its own. Raises InputError when nothing matches, or when a CSV's frame size (or, for py-feat,
    fps) is known from neither. Bad CSVs do not raise: they are dead letters and failed rows.
    The manifest has `affectflow run`'s keys plus ``source`` and ``ingest``; validation runs at
    the end when ``validation.enabled``.
    """
    from apache_beam.io.filesystems import FileSystems
    from pipelines.outputs import (check_same_frame_schema, clear_stale_staging, commit_staging, previous_fingerprints,
                                   read_table, run_manifest, summarise_videos, write_manifest)
    from transforms.discover import InputError
    from transforms.write import json_metadata
    if source not in SOURCES:
        raise InputError(f"source must be one of {SOURCES}, got {source!r}")
    job = config.job
    if not job.input or not job.output:
        raise ValueError("both input and output are required")
    started = time.time()
    run_id = _new_run_id()
    output = job.output.rstrip("/")
    inputs, extra_fields = discover_csvs(job.input)
    model = _model_entry(source)
    settings = _aggregation_settings(config, EMFACS_MODEL)      # FER2013 labels for both sources
    models_json = json_metadata([{k: model[k] for k in ("name", "source", "sha256")}])
    common = json.dumps({"source": source, "emotion": model["name"],
                         "rule": {k: list(v) for k, v in EMFACS_PROTOTYPES.items()} if source == OPENFACE else None,
                         "required": dict(EMFACS_REQUIRED) if source == OPENFACE else None,
                         "ties": "neutral",
                         "neutral_gain": EMFACS_NEUTRAL_GAIN, "aggregate": config.as_dict()["job"]["aggregate"]},
                        sort_keys=True)
    staging = FileSystems.join(output, "_staging", run_id)
    file_metadata = (("affectflow.run_id", run_id), ("affectflow.models", json_metadata([model])),
                     ("affectflow.source", source))
    check_same_frame_schema(output, [v.video_id for v in inputs], [source], settings.labels)
    previous = {} if force else previous_fingerprints(output, [v.video_id for v in inputs])
    tasks, unknown = [], []
    for video in inputs:
        video, given = split_ingest_columns(video)
        width = int(given["frame_width"]) if "frame_width" in given else (frame_size or (None, None))[0]
        height = int(given["frame_height"]) if "frame_height" in given else (frame_size or (None, None))[1]
        video_fps = float(given["fps"]) if "fps" in given else fps
        if not width or not height or (source == PYFEAT and not video_fps):
            unknown.append(video.path)
            continue
        task = IngestTask(video, source, width, height, video_fps, staging, run_id, settings, tuple(extra_fields),
                          file_metadata, (("models", models_json), ("settings_fingerprint", "")),
                          previous.get(video.video_id))
        tasks.append(replace(task, provenance=(("models", models_json),
                                               ("settings_fingerprint", task_fingerprint(common, task)))))
    if unknown:
        need = "frame size" + (" and fps" if source == PYFEAT else "")
        raise InputError(f"{len(unknown)} CSV(s) have no {need}: give --frame-size WxH"
                         + (" and --fps F" if source == PYFEAT else "")
                         + f" or manifest columns frame_width, frame_height{', fps' if source == PYFEAT else ''} "
                         f"(first: {unknown[0]})")
    clear_stale_staging(output)
    discovered = time.time()
    if workers > 1 and len(tasks) > 1:
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(ingest_one, tasks, chunksize=max(1, len(tasks) // (workers * 8))))
    else:
        for task in tasks:
            ingest_one(task)
    ingested = time.time()
    commit_staging(staging, output, TABLES)
    summary = summarise_videos(read_table(output, "videos", [t.video.video_id for t in tasks]), len(tasks), run_id)
    manifest = run_manifest(
        run_id=run_id, started=started, work_started=discovered, work_done=ingested, config=config,
        output=output, command=argv_for_manifest, forced=force, fingerprint=hashlib.sha256(common.encode()).hexdigest(),
        models=[model], labels=settings.labels, broad_labels=settings.broad_labels, counts=summary, tables=TABLES)
    manifest.update({
        "frame_feature_groups": [source],
        "feature_set": None,            # no training feature set is configured by an ingest
        "source": source,
        "ingest": {"frame_size": list(frame_size) if frame_size else None, "fps": fps, "workers": workers,
                   "emotion": model["name"], "note": "config.job.decode/faces/emotion/features do not apply to an "
                                                     "ingest; the CSVs' tool did that work"},
    })
    write_manifest(output, manifest)
    if job.validation.enabled:
        from pipelines.extract import validate_after_run
        manifest["validation"] = validate_after_run(output, config, run_id)
    return manifest


# --- command line ---------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `affectflow ingest` (the CLI adds --config and --set)."""
    parser.add_argument("source", choices=SOURCES, help="the tool that wrote the CSVs: openface (OpenFace 2.0 "
                                                       "FeatureExtraction) or pyfeat (py-feat Fex.to_csv)")
    parser.add_argument("input", help="a folder (every .csv below it), a quoted glob, one CSV, or a manifest "
                                      ".csv/.parquet with a path column and optional video_id, label, subject_id, "
                                      "frame_width, frame_height, fps")
    parser.add_argument("--output", required=True, help="output folder (local or any Beam filesystem path)")
    parser.add_argument("--frame-size", metavar="WxH",
                        help="frame width x height of the videos, pixels (e.g. 1280x720); required unless the "
                             "manifest has frame_width and frame_height columns (they win)")
    parser.add_argument("--fps", type=float, help="frame rate of the videos; required for pyfeat (timestamps = "
                                                  "frame / fps) unless the manifest has an fps column; openface "
                                                  "derives it from its timestamps when not given")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes that map CSVs in parallel (default 1); each CSV is independent")
    parser.add_argument("--force", action="store_true",
                        help="ingest every CSV again, even those whose bytes and settings are unchanged")


def run(args) -> int:
    """`affectflow ingest`: exit 0, 1 (some CSVs failed: dead letters) or 4 (validation failed)."""
    import sys
    from pipelines.cli import _print_summary, run_exit_code
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.fps is not None and not args.fps > 0:
        raise ValueError(f"--fps must be > 0, got {args.fps}")
    config = load_config(args.config, {"input": args.input, "output": args.output}, args.set)
    manifest = execute_ingest(config, args.source, parse_frame_size(args.frame_size), args.fps, args.workers,
                              args.force, sys.argv)
    _print_summary(manifest, sys.stdout)
    return run_exit_code(manifest)
