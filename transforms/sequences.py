"""ReadVideoSequences: video ids -> each video's primary-face feature sequence from an output's frame table.

A sequence is the rows of ``face_index == 0`` and the faceless rows, in frame order, with the
given columns side by side (a list column such as ``emb_mini_xception`` gives its values in
place). Further faces are left out: ``face_index`` ranks faces by size per frame, it does not
follow a person. A frame is valid when its face was found and every value is present.
Training (pipelines.training) and prediction read sequences with the same function, so a
model sees at prediction exactly what it was trained on.
"""
from __future__ import annotations

from typing import Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from core.elements import DeadLetter, VideoSequence
from schemas.columns import PARTITION_COLUMN
from transforms.dead_letters import DEAD_LETTERS, ParDoWithDeadLetters

_KEYS = ("frame_index", "timestamp_s", "face_index", "face_found")


def frame_files(output: str, video_id: str) -> list[str]:
    """The Parquet files of one video's frame partition (any Beam filesystem), sorted."""
    pattern = FileSystems.join(output, "frames", f"{PARTITION_COLUMN}={video_id}", "*.parquet")
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def _read(path: str, columns: Sequence[str]) -> pa.Table:
    with FileSystems.open(path) as fh:
        return pq.read_table(fh, columns=[*_KEYS, *columns], pre_buffer=False)


def column_values(column: pa.ChunkedArray, size: int) -> np.ndarray:
    """float32[rows, size] of a numeric or list column; NaN where a row is null (a list of another
    length is an error: one column has one width)."""
    column = column.combine_chunks()
    if size == 1 and not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        return np.asarray(pc.fill_null(pc.cast(column, pa.float32()), np.nan).to_numpy(zero_copy_only=False),
                          np.float32)[:, None]
    out = np.full((len(column), size), np.nan, np.float32)
    valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), bool)
    if valid.any():
        lengths = np.asarray(pc.list_value_length(column).to_numpy(zero_copy_only=False))[valid]
        if (lengths != size).any():
            raise ValueError(f"a list column holds {int(lengths[lengths != size][0])} values where {size} are "
                             "expected")
        values = np.asarray(pc.list_flatten(column.filter(column.is_valid())).to_numpy(zero_copy_only=False),
                            np.float32)
        out[valid] = values.reshape(-1, size)
    return out


def read_video_sequence(output: str, video_id: str, columns: Sequence[str], sizes: Sequence[int],
                        source: str = "") -> VideoSequence:
    """One video's sequence (see the module docstring): ``columns`` with ``sizes`` values each.

    A video without frame files (no frame sampled) gives an empty sequence; a file without one of
    the columns raises KeyError naming it.
    """
    tables = [_read(path, columns) for path in frame_files(output, video_id)]
    width = int(sum(sizes))
    if not tables:
        return VideoSequence(video_id, np.zeros((0, width), np.float32), np.zeros(0, bool), source, np.zeros(0),
                             frame_indices=np.zeros(0, np.int64))
    table = pa.concat_tables(tables)
    primary = pc.or_(pc.invert(table.column("face_found")), pc.equal(table.column("face_index"), 0))
    table = table.filter(pc.fill_null(primary, True)).sort_by([("frame_index", "ascending")])
    features = (np.hstack([column_values(table.column(c), n) for c, n in zip(columns, sizes)]) if columns
                else np.zeros((table.num_rows, 0), np.float32))
    found = np.asarray(table.column("face_found").to_numpy(zero_copy_only=False), bool)
    timestamps = np.asarray(table.column("timestamp_s").to_numpy(zero_copy_only=False), np.float64)
    frames = np.asarray(table.column("frame_index").to_numpy(zero_copy_only=False), np.int64)
    return VideoSequence(video_id, features, found & np.isfinite(features).all(axis=1), source, timestamps,
                         frame_indices=frames)


def column_sizes(output: str, video_ids: Sequence[str], columns: Sequence[str]) -> tuple[int, ...]:
    """Values per row of each column: 1 for a number, a list column's length (read from the first
    row that has one). ValueError when no frame of these videos has a value of a list column."""
    sizes: dict[str, int] = {}
    for video_id in video_ids:
        for path in frame_files(output, video_id):
            table = _read(path, columns)
            for c in columns:
                if c in sizes:
                    continue
                kind = table.schema.field(c).type
                if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
                    sizes[c] = 1
                    continue
                lengths = pc.list_value_length(table.column(c)).drop_null()
                if len(lengths):
                    sizes[c] = int(lengths[0].as_py())
            if len(sizes) == len(columns):
                return tuple(sizes[c] for c in columns)
    missing = [c for c in columns if c not in sizes]
    raise ValueError(f"no frame of the {len(video_ids)} videos has a value of {missing}: the run wrote no face "
                     "with these features")


class ReadSequenceFn(beam.DoFn):
    """(video_id, source) -> VideoSequence; a video whose frames cannot be read is a dead letter
    (stage ``features``)."""

    def __init__(self, output: str, columns: Sequence[str], sizes: Sequence[int]):
        self._output, self._columns, self._sizes = output, tuple(columns), tuple(sizes)

    def process(self, video: tuple[str, str]):
        video_id, source = video
        try:
            yield read_video_sequence(self._output, video_id, self._columns, self._sizes, source)
        except Exception as exc:  # noqa: BLE001 - this video fails, the others go on
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, DeadLetter.from_exception(video_id, "", "features", exc))


class ReadVideoSequences(beam.PTransform):
    """PCollection[(video_id, source)] -> Outputs(VideoSequence, DeadLetter) from ``output``'s frame
    table; ``source`` identifies the video's frame rows (it is stored with each prediction).

    Example::

        sequences = videos | ReadVideoSequences("out/run", card.columns, card.column_sizes)
    """

    def __init__(self, output: str, columns: Sequence[str], sizes: Sequence[int]):
        super().__init__()
        self._fn = ReadSequenceFn(output, columns, sizes)

    def expand(self, videos):
        return videos | "Read" >> ParDoWithDeadLetters(self._fn, VideoSequence)
