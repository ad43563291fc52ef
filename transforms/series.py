"""Per-video frame columns that need the whole video: smoothing and the neutral baseline.

Both cross chunk and segment boundaries, so they cannot be computed where a chunk is
written. The AddSeriesColumns stage runs per video once every chunk of it is in the run's
staging folder (after CollectVideoResults, before WriteVideoRows): `add_video_series_columns`
reads the columns it needs from the video's frame files, computes the series and rewrites
each file once with the new columns appended (schemas.features groups ``baseline`` then
``smoothing``, after every other group).

The series is the primary face's rows (``face_index == 0``) in frame order. Faceless frames
are skipped, not treated as zeros, and get null; so do further faces (``face_index`` ranks
faces by size in each frame, it does not follow a person, so their series would mix people).

**Smoothing** (``smooth_<label>``, features.smoothing):

* ``window``: centred moving average over ``window`` (odd) consecutive primary-face rows;
  at the ends of the series the window is cut short (mean of the rows it covers);
* ``ema``: s_0 = p_0, s_t = alpha * p_t + (1 - alpha) * s_(t-1).

Both are convex combinations of probability rows, so each smoothed row still sums to 1.

**Neutral baseline** (``<geo measure>_rel``, features.geometry_baseline): each ``geo_*`` measure
minus the video's own neutral level, the median of that measure over the video's primary-face
frames the emotion model labels neutral. The geometric measures differ between faces at rest
(a wide mouth, heavy brows); the difference from the person's own neutral face is what the
action unit moves. With fewer than ``baseline_min_frames`` neutral frames no baseline can be
established and the column is null for the whole video: it is not invented from other frames.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from core.elements import DeadLetter, VideoResults
from core.settings import FeaturesConfig
from models.smoothing import smooth
from schemas.columns import PARTITION_COLUMN, baseline_column, file_schema, prob_column, smooth_column
from schemas.features import GEOMETRY_MEASURES
from schemas.frames import frame_schema
from transforms.parquet import read_parquet, write_parquet


@dataclass(frozen=True)
class SeriesSettings:
    """features.smoothing (method none | window | ema) and features.geometry_baseline of the config."""
    method: str = "none"
    window: int = 5
    alpha: float = 0.3
    baseline: bool = False
    baseline_min_frames: int = 10
    neutral_label: str = "neutral"

    @classmethod
    def from_config(cls, features: FeaturesConfig, neutral_label: str) -> "SeriesSettings":
        """The series settings of the job's ``features`` section (the model's neutral label)."""
        return cls(method=features.smoothing.method, window=features.smoothing.window,
                   alpha=features.smoothing.alpha, baseline=features.geometry_baseline,
                   baseline_min_frames=features.baseline_min_frames, neutral_label=neutral_label)

    @property
    def groups(self) -> tuple[str, ...]:
        """The feature groups this step appends, in schema order."""
        return (("baseline",) if self.baseline else ()) + (("smoothing",) if self.method != "none" else ())


def smooth_series(probs: np.ndarray, settings: SeriesSettings) -> np.ndarray:
    """float[n, k] probabilities in time order -> float32[n, k] smoothed (models.smoothing)."""
    return smooth(probs, settings.method, settings.window, settings.alpha)


def neutral_baseline(values: np.ndarray, is_neutral: np.ndarray, min_frames: int) -> np.ndarray:
    """float[n, d] measures and bool[n] -> float[d]: median over the neutral rows (NaN when too few)."""
    neutral = values[is_neutral]
    neutral = neutral[~np.isnan(neutral).any(axis=1)]
    if len(neutral) < max(min_frames, 1):
        return np.full(values.shape[1], np.nan)
    return np.median(neutral, axis=0)


def _frame_files(root: str, video_id: str) -> list[str]:
    pattern = FileSystems.join(root, "frames", f"{PARTITION_COLUMN}={video_id}", "part-*.parquet")
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def _numpy(table: pa.Table, names: Sequence[str]) -> np.ndarray:
    return np.column_stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in names])


def add_video_series_columns(root: str, video_id: str, labels: Sequence[str], feature_groups: Sequence[str],
                             settings: SeriesSettings, file_metadata: dict | None = None) -> int:
    """Append the series columns to every staged frame file of one video; return the video's rows.

    ``root``: the run's staging root, holding ``frames/video_id=<id>/part-*.parquet`` as
    WriteFrames wrote them with ``feature_groups``; afterwards they hold the schema of
    ``feature_groups + settings.groups``. Memory: one file at a time plus, for the whole video,
    the primary face's probabilities and geometric measures (a few dozen floats a frame).

    The output keeps one frame schema whatever fails (the video then becomes a dead letter of
    stage ``features``, and the error is raised):

    * computing the series fails: the files still get the new columns, all null;
    * writing fails: the video's frame files are removed (files without the run's columns
      must not be committed; the failed video is processed again by the next run).

    Each new file is written beside its original under a name readers skip (``_`` prefix, no
    ``.parquet`` suffix) and replaces it only once every new file is written.
    """
    files = _frame_files(root, video_id)
    if not files or not settings.groups:
        return 0
    target = file_schema(frame_schema(labels, (*feature_groups, *settings.groups)))
    try:
        sizes, new = _series_values(files, labels, settings)
        error = None
    except Exception as exc:  # noqa: BLE001 - re-raised once the files have the run's schema
        sizes, new, error = None, {}, exc
    try:
        rows = _replace_files(files, sizes, new, target, file_metadata or {})
    except Exception:
        remaining = [f for f in files if FileSystems.exists(f)]
        if remaining:
            FileSystems.delete(remaining)
        raise
    if error is not None:
        raise error
    return rows


def has_frame_files(root: str, video_id: str) -> bool:
    """Whether ``root`` holds frame files of the video (a failed series rewrite removes them)."""
    return bool(_frame_files(root, video_id))


def _series_values(files: Sequence[str], labels: Sequence[str],
                   settings: SeriesSettings) -> tuple[list[int], dict[str, np.ndarray]]:
    """The video's files -> (rows per file, {new column: float32[all rows], NaN where null})."""
    probs_cols = [prob_column(l) for l in labels]
    geo_cols = list(GEOMETRY_MEASURES) if settings.baseline else []
    parts = [read_parquet(f, ["frame_index", "face_index", "emotion_label", *probs_cols, *geo_cols]) for f in files]
    sizes = [t.num_rows for t in parts]
    table = pa.concat_tables(parts)
    primary = table.column("face_index").fill_null(-1).to_numpy() == 0
    rows = np.flatnonzero(primary)
    rows = rows[np.argsort(table.column("frame_index").to_numpy()[rows], kind="stable")]

    new: dict[str, np.ndarray] = {}
    if settings.baseline:
        geo = _numpy(table, geo_cols)
        labels_now = np.asarray(table.column("emotion_label").to_pylist(), dtype=object)
        base = neutral_baseline(geo[rows], labels_now[rows] == settings.neutral_label, settings.baseline_min_frames)
        for j, name in enumerate(geo_cols):
            values = np.full(table.num_rows, np.nan, np.float32)
            values[rows] = geo[rows, j] - base[j]
            new[baseline_column(name)] = values
    if settings.method != "none":
        smoothed = smooth_series(_numpy(table, probs_cols)[rows], settings)
        for j, label in enumerate(labels):
            values = np.full(table.num_rows, np.nan, np.float32)
            values[rows] = smoothed[:, j]
            new[smooth_column(label)] = values
    return sizes, new


def _replace_files(files: Sequence[str], sizes: Sequence[int] | None, new: dict[str, np.ndarray],
                   target: pa.Schema, file_metadata: dict) -> int:
    """Rewrite ``files`` with ``target``'s columns: the originals' plus ``new`` (a target column
    in neither is all null). Every file is written to a temporary name first; the originals are
    replaced only when all are written. Returns the rows written."""
    temporary = [_temporary_name(path) for path in files]
    start = 0
    try:
        for i, (path, tmp) in enumerate(zip(files, temporary)):
            original = read_parquet(path)
            size = original.num_rows if sizes is None else sizes[i]
            columns = {name: original.column(name) for name in original.column_names}
            for name, values in new.items():
                chunk = values[start:start + size]
                columns[name] = pa.array(chunk, pa.float32(), mask=np.isnan(chunk))
            for f in target:
                if f.name not in columns:
                    columns[f.name] = pa.nulls(size, f.type)
            metadata = {k.decode(): v.decode() for k, v in (original.schema.metadata or {}).items()
                        if k.startswith(b"affectflow.")}
            metadata.update(file_metadata)
            write_parquet(pa.table([columns[f.name] for f in target], schema=target), tmp, metadata)
            start += size
    except BaseException:
        written = [t for t in temporary if FileSystems.exists(t)]
        if written:
            FileSystems.delete(written)
        raise
    for tmp, path in zip(temporary, files):
        _replace(tmp, path)
    return start


def _temporary_name(path: str) -> str:
    """``.../part-x.parquet`` -> ``.../_series-part-x.tmp``: pyarrow datasets skip ``_`` files and
    no ``*.parquet`` glob matches it."""
    folder, name = path.rsplit("/", 1)
    return f"{folder}/_series-{name.removesuffix('.parquet')}.tmp"


def _replace(source: str, destination: str) -> None:
    """Move ``source`` over ``destination``: one atomic os.replace on a local disk; elsewhere
    delete, then rename (object stores have no atomic replace)."""
    if "://" not in destination or destination.startswith("file://"):
        os.replace(source.removeprefix("file://"), destination.removeprefix("file://"))
        return
    FileSystems.delete([destination])
    FileSystems.rename([source], [destination])


class AddSeriesColumnsFn(beam.DoFn):
    """VideoResults -> VideoResults: the video's frame files get the series columns; a failure is
    one more dead letter (stage ``features``) of the video, which then fails."""

    def __init__(self, root: str, labels: Sequence[str], feature_groups: Sequence[str], settings: SeriesSettings,
                 file_metadata: Mapping[str, str]):
        self._root = root
        self._labels = tuple(labels)
        self._groups = tuple(feature_groups)
        self._settings = settings
        self._metadata = dict(file_metadata)

    def process(self, results: VideoResults):
        if results.unchanged or not results.rows_written:
            yield results
            return
        try:
            add_video_series_columns(self._root, results.video_id, self._labels, self._groups, self._settings,
                                     self._metadata)
            yield results
        except Exception as exc:  # noqa: BLE001 - the video fails, the run goes on
            failure = DeadLetter.from_exception(results.video_id, results.input.path, "features", exc)
            # A failed rewrite removed the video's frame files: its row must count no frames.
            summaries = results.summaries if has_frame_files(self._root, results.video_id) else ()
            yield dataclasses.replace(results, summaries=summaries, failures=(*results.failures, failure))


class AddSeriesColumns(beam.PTransform):
    """PCollection[VideoResults] -> PCollection[VideoResults], after appending the per-video series
    columns (neutral baseline, smoothing) to each video's frame files under ``root``.

    The frame files were written with ``feature_groups``; afterwards they hold
    ``frame_schema(labels, feature_groups + settings.groups)``.

    Example::

        results = results | AddSeriesColumns(root, labels, ("geometry",), SeriesSettings(method="window"))
    """

    def __init__(self, root: str, labels: Sequence[str], feature_groups: Sequence[str], settings: SeriesSettings,
                 file_metadata: Mapping[str, str] | None = None):
        super().__init__()
        self._fn = AddSeriesColumnsFn(root, labels, feature_groups, settings, file_metadata or {})

    def expand(self, results):
        return results | "RewriteFrameFiles" >> beam.ParDo(self._fn)
