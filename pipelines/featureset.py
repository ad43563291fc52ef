"""Training vectors from the frame table: the feature sets of the paper, concatenated in order.

    from pipelines.featureset import feature_matrix
    keys, x, names = feature_matrix("out/run")             # the run's configured set
    keys, x, names = feature_matrix("out/run", "appearance")

Feature sets (schemas.features.feature_set_columns gives the columns, in this order):

* ``appearance``: the blendshapes' FACS AU view ``au_*`` and the geometric measures ``geo_*``
  (schema order; whichever the run wrote), or for a table ingested from OpenFace / py-feat that
  tool's AU intensities;
* ``deep``: the emotion network's embedding ``emb_mini_xception``, then ``resnet50``
  (whichever the run wrote; each list column expanded in place);
* ``both``: appearance, then deep.

Rows: frames whose face was found and whose every feature of the set is present, in
(video_id, frame_index, face_index) order. `iter_feature_batches` yields one frame file at a
time, so a table larger than memory can feed an incremental learner. (`affectflow train` reads the
same columns per video as time-ordered sequences: transforms.sequences.)
"""
from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.columns import PARTITION_COLUMN
from schemas.features import feature_set_columns

KEY_COLUMNS = ("frame_index", "face_index", "timestamp_s")


def _manifest(output: str | os.PathLike) -> dict:
    path = Path(output) / "run_manifest.json"
    if not path.is_file():
        raise ValueError(f"{output} is not an affectflow output: {path} does not exist")
    return json.loads(path.read_text())


def resolve_feature_set(output: str | os.PathLike, feature_set: Optional[str] = None) -> tuple[str, list[str]]:
    """(name, columns) of ``feature_set`` (default: the one the run's manifest records) for this output."""
    manifest = _manifest(output)
    groups = manifest.get("frame_feature_groups") or []
    if feature_set is None:
        entry = manifest.get("feature_set")
        if not entry:
            raise ValueError(f"{output}: the run was configured with features.feature_set: none; name a set "
                             "(appearance, deep, both)")
        feature_set = entry["name"]
    return feature_set, feature_set_columns(feature_set, groups)


def _matrix(table: pa.Table, columns: list[str]) -> tuple[np.ndarray, list[str]]:
    blocks, names = [], []
    for name in columns:
        col = table.column(name)
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            values = np.stack(col.to_numpy(zero_copy_only=False)).astype(np.float32) if len(col) else \
                np.zeros((0, 0), np.float32)
            blocks.append(values)
            names += [f"{name}[{i}]" for i in range(values.shape[1])]
        else:
            blocks.append(col.to_numpy(zero_copy_only=False).astype(np.float32)[:, None])
            names.append(name)
    return (np.hstack(blocks) if blocks else np.zeros((table.num_rows, 0), np.float32)), names


def iter_feature_batches(output: str | os.PathLike, feature_set: Optional[str] = None
                         ) -> Iterator[tuple[pd.DataFrame, np.ndarray, list[str]]]:
    """Per frame file: (keys: video_id + KEY_COLUMNS, float32[rows, d], the d column names)."""
    _, columns = resolve_feature_set(output, feature_set)
    pattern = os.path.join(glob.escape(str(Path(output) / "frames")), f"{PARTITION_COLUMN}=*", "*.parquet")
    for path in sorted(glob.glob(pattern)):
        video_id = Path(path).parent.name.split("=", 1)[1]
        table = pq.read_table(path, columns=[*KEY_COLUMNS, "face_found", *columns])
        complete = pc.and_(table.column("face_found"), _all_valid(table, columns))
        table = table.filter(complete).sort_by([("frame_index", "ascending"), ("face_index", "ascending")])
        if not table.num_rows:
            continue
        x, names = _matrix(table, columns)
        keys = table.select(list(KEY_COLUMNS)).to_pandas()
        keys.insert(0, PARTITION_COLUMN, video_id)
        yield keys, x, names


def _all_valid(table: pa.Table, columns: list[str]) -> pa.ChunkedArray:
    valid = pc.is_valid(table.column(columns[0]))
    for c in columns[1:]:
        valid = pc.and_(valid, pc.is_valid(table.column(c)))
    return valid


def feature_matrix(output: str | os.PathLike, feature_set: Optional[str] = None
                   ) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """All rows of the set at once: (keys, float32[rows, d], column names). For tables that fit in memory."""
    _, columns = resolve_feature_set(output, feature_set)
    parts = list(iter_feature_batches(output, feature_set))
    if not parts:
        return pd.DataFrame(columns=[PARTITION_COLUMN, *KEY_COLUMNS]), np.zeros((0, 0), np.float32), []
    keys = pd.concat([p[0] for p in parts], ignore_index=True)
    return keys, np.vstack([p[1] for p in parts]), parts[0][2]
