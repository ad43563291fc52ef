"""WriteFrames: scored chunks -> frame Parquet files (one per chunk) and their summaries.

A chunk's rows: one per kept face, one with null face columns per faceless frame, ordered by
frame_index then face_index; the optional feature groups' columns follow the core columns.
"""
from __future__ import annotations

from typing import Iterator, Mapping, Sequence, Union

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from core.elements import ChunkSummary, DeadLetter, ScoredChunk
from models.face_landmarker import action_units
from models.geometry import geometric_features
from models.landmarks import normalise_landmarks
from schemas.columns import PARTITION_COLUMN, prob_column
from schemas.features import BLENDSHAPE_NAMES, EMBEDDING_COLUMN, RESNET50_COLUMN, blendshape_column
from schemas.frames import frame_schema
from transforms.dead_letters import DEAD_LETTERS, ParDoWithDeadLetters
from transforms.parquet import frame_file, write_parquet


def frame_table(scored: ScoredChunk, feature_groups: Sequence[str] = ()) -> pa.Table:
    """Frame rows of one chunk: one per kept face, one with null face columns per faceless frame.

    Rows are ordered by frame_index, then face_index. ``feature_groups`` adds the columns of
    schemas.features.feature_columns: landmarks and geometry from the chunk's landmarks, embedding and
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
    if "blendshapes" in groups:
        if c.blendshapes is None:
            raise ValueError("feature group 'blendshapes' is on, but the chunk carries no blendshapes")
        out.update({blendshape_column(name): face_col(c.blendshapes[:, i], pa.float32())
                    for i, name in enumerate(BLENDSHAPE_NAMES)})
        out.update({name: face_col(values, pa.float32()) for name, values in action_units(c.blendshapes).items()})
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
    """ScoredChunk -> ChunkSummary (+ TaggedOutput(DEAD_LETTERS, DeadLetter) when writing fails),
    writing the chunk's frame rows as one file (transforms.parquet.frame_file). Model names,
    versions and checksums go into the file's key-value metadata."""

    def __init__(self, root: str, file_metadata: Mapping[str, str], feature_groups: Sequence[str] = ()):
        self._root = root
        self._metadata = dict(file_metadata)
        self._groups = tuple(feature_groups)
        self.rows = Metrics.counter("affectflow", "frame_rows_written")

    def process(self, scored: ScoredChunk) -> Iterator[Union[ChunkSummary, TaggedOutput]]:
        c = scored.chunk
        try:
            table = frame_table(scored, self._groups)
            if table.num_rows:
                write_parquet(table, frame_file(self._root, c.video_id, c.segment_index, c.chunk_index),
                              self._metadata)
            self.rows.inc(table.num_rows)
            yield chunk_summary(scored)
        except Exception as exc:  # noqa: BLE001 - the video fails, the run goes on
            # The source path is filled in by the video stage, which has the video's input.
            yield TaggedOutput(DEAD_LETTERS, DeadLetter.from_exception(c.video_id, "", "write", exc, c.segment_index))


class WriteFrames(beam.PTransform):
    """PCollection[ScoredChunk] -> Outputs(ChunkSummary, DeadLetter): one frame file per chunk under ``root``.

    ``feature_groups``: the optional column groups the chunks carry (schemas.features); the
    file's schema is ``frame_schema(labels, feature_groups)``.

    Example::

        written = scored.values | WriteFrames("out/_staging/run", {"affectflow.run_id": "run"})
    """

    def __init__(self, root: str, file_metadata: Mapping[str, str], feature_groups: Sequence[str] = ()):
        super().__init__()
        self._fn = WriteFrameChunksFn(root, file_metadata, feature_groups)

    def expand(self, scored):
        return scored | "WriteFrameParquet" >> ParDoWithDeadLetters(self._fn, ChunkSummary)
