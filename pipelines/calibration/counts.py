"""The count table: frames per (video, primary-face label) of a run, grouped without loading frame rows."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.metrics import encode
from pipelines.output.layout import dataset
from schemas.columns import PARTITION_COLUMN, prob_column

from pipelines.calibration.constants import ENGINES


@dataclass(frozen=True)
class CountTable:
    """Per-video frame-label counts of a run's primary faces."""
    video_ids: np.ndarray        # object[videos], sorted
    counts: np.ndarray           # int64[videos, labels]: frames whose primary face has each label
    faceless_frames: np.ndarray  # int64[videos]: frames without a face
    labels: tuple[str, ...]


def frame_labels(output: str) -> tuple[str, ...]:
    """The model labels of a run, in the model's order, from the frame table's ``prob_*`` columns."""
    prefix = prob_column("")
    return tuple(n[len(prefix):] for n in dataset(output, "frames").schema.names if n.startswith(prefix))


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _long_counts_duckdb(output: str) -> pa.Table:
    """[video_id, emotion_label, frames] grouped by DuckDB; emotion_label null = frames without a face."""
    import duckdb
    root = output[len("file://"):] if output.startswith("file://") else output
    pattern = os.path.join(root, "frames", "**", "*.parquet").replace("'", "''")
    sql = (f"select {PARTITION_COLUMN}, emotion_label, count(*) as frames "
           f"from read_parquet('{pattern}', hive_partitioning = true, union_by_name = true, "
           f"hive_types = {{'{PARTITION_COLUMN}': VARCHAR}}) "
           f"where face_index = 0 or face_index is null group by all")
    with duckdb.connect() as con:
        return con.sql(sql).to_arrow_table()


def _long_counts_pyarrow(output: str, batch_rows: int = 1 << 20) -> pa.Table:
    """As _long_counts_duckdb, from a batched pyarrow scan (any Beam filesystem path)."""
    scanner = dataset(output, "frames").scanner(
        columns=[PARTITION_COLUMN, "emotion_label"], batch_size=batch_rows,
        filter=(pc.field("face_index") == 0) | pc.field("face_index").is_null())
    keys = [PARTITION_COLUMN, "emotion_label"]
    partials = [pa.Table.from_batches([b]).group_by(keys).aggregate([([], "count_all")])
                for b in scanner.to_batches() if b.num_rows]
    if not partials:
        return pa.table({PARTITION_COLUMN: pa.array([], pa.string()), "emotion_label": pa.array([], pa.string()),
                         "frames": pa.array([], pa.int64())})
    merged = pa.concat_tables(partials).group_by(keys).aggregate([("count_all", "sum")])
    return merged.select([*keys, "count_all_sum"]).rename_columns([*keys, "frames"])


def pivot_counts(long: pa.Table, labels: Sequence[str]) -> CountTable:
    """Long [video_id, emotion_label, frames] rows (one per pair) -> CountTable over ``labels``."""
    video_ids = np.unique(np.asarray(long.column(PARTITION_COLUMN).to_pylist(), dtype=object)) \
        if long.num_rows else np.zeros(0, object)
    row = encode(long.column(PARTITION_COLUMN), list(video_ids))
    label = long.column("emotion_label")
    col = encode(label, labels)
    unknown = (col < 0) & np.asarray(label.is_valid().to_numpy(zero_copy_only=False), bool)
    if unknown.any():
        bad = sorted({str(x) for x in np.asarray(label.to_pylist(), dtype=object)[unknown]})
        raise ValueError(f"frame labels {bad} are not in the label set {list(labels)}: calibrate with the config "
                         f"of the model that produced the run")
    frames = np.asarray(long.column("frames").to_numpy(zero_copy_only=False), np.int64)
    counts = np.zeros((len(video_ids), len(labels)), np.int64)
    faceless = np.zeros(len(video_ids), np.int64)
    has_label = col >= 0
    np.add.at(counts, (row[has_label], col[has_label]), frames[has_label])
    np.add.at(faceless, row[~has_label], frames[~has_label])
    return CountTable(video_ids, counts, faceless, tuple(labels))


def count_frame_labels(output: str, labels: Sequence[str], engine: str = "auto") -> CountTable:
    """Per-video counts of the primary face's frame label in ``output``/frames.

    engine: ``duckdb`` (local paths), ``pyarrow`` (a batched scan, any Beam filesystem), or
    ``auto`` (DuckDB for local paths, else pyarrow). Memory is bounded by the grouped result
    (videos x labels), never by the frame rows.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    use_duckdb = engine == "duckdb" or (engine == "auto" and _is_local(output))
    long = _long_counts_duckdb(output) if use_duckdb else _long_counts_pyarrow(output)
    return pivot_counts(long, labels)
