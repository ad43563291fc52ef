"""Parquet writing, one file per unit of work, through Beam's FileSystems.

Beam's WriteToParquet is not used: under the DaskRunner it reports success and leaves
empty files (FACTS.md). Each DoFn here writes its own complete file with pyarrow (zstd),
named deterministically from the unit it holds, so a retried bundle overwrites rather
than duplicates, and every runner produces the same files.

Layout: ``<root>/<table>/video_id=<id>/part-<...>.parquet`` (Hive style; see schemas).
"""
from __future__ import annotations

import json
from typing import Iterator, Mapping, Optional, Sequence, Union

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from models.landmarks import normalise_landmarks
from schemas.tables import (EMBEDDING_COLUMN, PARTITION_COLUMN, RESNET50_COLUMN, frame_schema,
                           prob_column)
from transforms.geometry import geometric_features
from transforms.elements import ChunkSummary, DeadLetter, ScoredChunk

COMPRESSION = "zstd"


def partition_dir(root: str, table: str, video_id: str) -> str:
    return FileSystems.join(root, table, f"{PARTITION_COLUMN}={video_id}")


def _ensure_dir(path: str) -> None:
    """mkdir -p that tolerates another worker creating the folder at the same moment."""
    try:
        FileSystems.mkdirs(path)
    except IOError:
        if not FileSystems.exists(path):
            raise


def write_parquet(table: pa.Table, path: str, metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write ``table`` (its partition column dropped) to any Beam filesystem path."""
    if PARTITION_COLUMN in table.column_names:
        table = table.drop_columns([PARTITION_COLUMN])
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    _ensure_dir(path.rsplit("/", 1)[0])
    with FileSystems.create(path) as fh:
        pq.write_table(table, fh, compression=COMPRESSION)


def frame_table(scored: ScoredChunk, feature_groups: Sequence[str] = ()) -> pa.Table:
    """Frame rows of one chunk: one per kept face, one with null face columns per faceless frame.

    Rows are ordered by frame_index, then face_index. ``feature_groups`` adds the columns of
    schemas.feature_columns: landmarks and geometry from the chunk's landmarks, embedding and
    resnet50 from the ScoredChunk's arrays (list columns, null on faceless rows).
    """
    c = scored.chunk
    n = len(c.frame_index)
    faceless = np.flatnonzero(np.bincount(c.face_frame, minlength=n) == 0) if n else np.zeros(0, np.int64)
    frame_pos = np.concatenate([c.face_frame.astype(np.int64), faceless])
    has_face = np.concatenate([np.ones(len(c.face_frame), bool), np.zeros(len(faceless), bool)])
    order = np.lexsort((np.concatenate([c.face_index, np.zeros(len(faceless), np.int16)]), frame_pos))
    frame_pos, has_face = frame_pos[order], has_face[order]
    face_rows = order[has_face]              # indices into the face arrays, in row order
    rows = len(frame_pos)

    def face_col(values: np.ndarray, typ: pa.DataType) -> pa.Array:
        full = np.zeros(rows, dtype=values.dtype)
        full[has_face] = values[face_rows]
        return pa.array(full, type=typ, mask=~has_face)

    schema = frame_schema(scored.labels, feature_groups)
    labels = np.asarray(scored.labels, dtype=object)
    probs = scored.probs if len(scored.probs) else np.zeros((0, len(scored.labels)), np.float32)
    argmax = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    columns = {
        PARTITION_COLUMN: pa.array([c.video_id] * rows, pa.string()),
        "segment_index": pa.array(np.full(rows, c.segment_index, np.int32)),
        "frame_index": pa.array(c.frame_index[frame_pos]),
        "timestamp_s": pa.array(c.timestamp_s[frame_pos]),
        "frame_width": pa.array(np.full(rows, c.frame_width, np.int32)),
        "frame_height": pa.array(np.full(rows, c.frame_height, np.int32)),
        "faces_in_frame": pa.array(c.faces_in_frame[frame_pos]),
        "face_found": pa.array(has_face),
        "face_index": face_col(c.face_index, pa.int16()),
        "box_x": face_col(c.boxes[:, 0], pa.float32()),
        "box_y": face_col(c.boxes[:, 1], pa.float32()),
        "box_w": face_col(c.boxes[:, 2], pa.float32()),
        "box_h": face_col(c.boxes[:, 3], pa.float32()),
        "detector_score": face_col(c.scores, pa.float32()),
    }
    for j, label in enumerate(scored.labels):
        columns[prob_column(label)] = face_col(probs[:, j], pa.float32())
    label_full = np.full(rows, None, dtype=object)
    label_full[has_face] = labels[argmax[face_rows]] if len(face_rows) else []
    columns["emotion_label"] = pa.array(label_full, pa.string())
    columns["emotion_confidence"] = face_col(probs.max(axis=1) if len(probs) else np.zeros(0, np.float32),
                                             pa.float32())
    if feature_groups:
        columns.update(_feature_columns(scored, feature_groups, has_face, face_rows, face_col))
    return pa.table([columns[f.name] for f in schema], schema=schema)


def _list_col(per_face: np.ndarray, has_face: np.ndarray, face_rows: np.ndarray) -> pa.Array:
    """A list<float32> column: row i holds per_face[face] flattened when it has a face, else null."""
    width = int(np.prod(per_face.shape[1:]))
    values = pa.array(per_face.reshape(len(per_face), width)[face_rows].reshape(-1), pa.float32())
    offsets = pa.array(np.concatenate([[0], np.cumsum(has_face * width)]), pa.int32())
    return pa.ListArray.from_arrays(offsets, values, mask=pa.array(~has_face))


def _feature_columns(scored: ScoredChunk, groups, has_face, face_rows, face_col) -> dict[str, pa.Array]:
    c = scored.chunk
    out = {}
    if "landmarks" in groups or "geometry" in groups:
        if c.landmarks is None:
            raise ValueError(f"feature groups {list(groups)} need landmarks, but the chunk has none")
        normalised = normalise_landmarks(c.landmarks)
        if "landmarks" in groups:
            out["landmarks"] = _list_col(c.landmarks, has_face, face_rows)
            out["landmarks_norm"] = _list_col(normalised, has_face, face_rows)
            out["mesh_presence"] = face_col(c.mesh_presence, pa.float32())
        if "geometry" in groups:
            out.update({name: face_col(values, pa.float32())
                        for name, values in geometric_features(normalised).items()})
    for group, column, values in (("embedding", EMBEDDING_COLUMN, scored.embedding),
                                  ("resnet50", RESNET50_COLUMN, scored.resnet50)):
        if group in groups:
            if values is None:
                raise ValueError(f"feature group {group!r} is on, but the chunk carries no {group} values")
            out[column] = _list_col(values, has_face, face_rows)
    return out


def chunk_summary(scored: ScoredChunk) -> ChunkSummary:
    c = scored.chunk
    primary = c.face_index == 0
    labels_idx = scored.probs[primary].argmax(axis=1) if primary.any() else np.zeros(0, np.int64)
    counts = np.bincount(labels_idx, minlength=len(scored.labels))
    return ChunkSummary(
        video_id=c.video_id, segment_index=c.segment_index, chunk_index=c.chunk_index, last=c.last,
        frames_decoded=c.frames_decoded, frames_sampled=len(c.frame_index),
        frames_with_face=int(np.count_nonzero(c.faces_in_frame)),
        label_counts=tuple(int(v) for v in counts),
        last_timestamp_s=float(c.timestamp_s[-1]) if len(c.timestamp_s) else None,
        rows_written=int(len(c.face_frame) + np.count_nonzero(c.faces_in_frame == 0)))


class WriteFrameChunksFn(beam.DoFn):
    """ScoredChunk -> ChunkSummary | DeadLetter, writing the chunk's frame rows as one file.

    File: ``frames/video_id=<id>/part-<segment:05d>-<chunk:05d>.parquet``. Model names,
    versions and checksums go into the file's key-value metadata.
    """

    def __init__(self, root: str, source_paths: Mapping[str, str], file_metadata: Mapping[str, str],
                 feature_groups: Sequence[str] = ()):
        self._root = root
        self._source_paths = dict(source_paths)
        self._metadata = dict(file_metadata)
        self._groups = tuple(feature_groups)
        self.rows = Metrics.counter("affectflow", "frame_rows_written")

    def process(self, scored: ScoredChunk) -> Iterator[Union[ChunkSummary, DeadLetter]]:
        c = scored.chunk
        path = FileSystems.join(partition_dir(self._root, "frames", c.video_id),
                                f"part-{c.segment_index:05d}-{c.chunk_index:05d}.parquet")
        try:
            table = frame_table(scored, self._groups)
            if table.num_rows:
                write_parquet(table, path, self._metadata)
            self.rows.inc(table.num_rows)
            yield chunk_summary(scored)
        except Exception as exc:  # noqa: BLE001
            yield DeadLetter.from_exception(c.video_id, self._source_paths.get(c.video_id, ""), "write", exc,
                                            c.segment_index)


class WriteFrames(beam.PTransform):
    """PCollection[ScoredChunk] -> PCollection[ChunkSummary | DeadLetter]."""

    def __init__(self, root: str, source_paths: Mapping[str, str], file_metadata: Mapping[str, str],
                 feature_groups: Sequence[str] = ()):
        super().__init__()
        self._fn = WriteFrameChunksFn(root, source_paths, file_metadata, feature_groups)

    def expand(self, scored):
        return scored | "WriteFrameParquet" >> beam.ParDo(self._fn)


def records_table(rows: Sequence[Mapping], schema: pa.Schema) -> pa.Table:
    """A table from row dicts, exactly in ``schema`` (missing keys are null)."""
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)


def json_metadata(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)
