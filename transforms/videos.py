"""AggregateVideos: everything known about each video -> its video row and dead letters, written.

Joins, per video id, the matched input, its probe result, the summaries of every frame
chunk written and every dead letter. Status:

* failed   - any dead letter, a segment whose chunks did not all arrive, or a truncated file;
* no_face  - decoded, but no sampled frame had a face;
* ok       - otherwise.

Every matched input yields exactly one video row, so ok + no_face + failed = matched.
Files: ``videos/video_id=<id>/part-00000.parquet`` and
``dead_letters/video_id=<id>/part-00000.parquet`` (zero rows when nothing failed).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from schemas.tables import dead_letter_schema, video_schema
from transforms.aggregate import LABEL_COLUMNS_NULLED_WHEN_FAILED, AggregationSettings, video_labels
from transforms.elements import ChunkSummary, ContentHash, DeadLetter, Unchanged, VideoInfo, VideoInput
from transforms.series import SeriesSettings, add_video_series_columns, has_frame_files
from transforms.write import partition_dir, records_table, write_parquet

TRUNCATION_RATIO = 0.9


@dataclass(frozen=True)
class VideoOutcome:
    """What the run reports per video (the row itself is on disk)."""
    video_id: str
    status: str
    frames_sampled: int
    frames_with_face: int


def _missing_segments(info: VideoInfo, summaries: Sequence[ChunkSummary]) -> list[int]:
    chunks: dict[int, set[int]] = {}
    last: dict[int, int] = {}
    for s in summaries:
        chunks.setdefault(s.segment_index, set()).add(s.chunk_index)
        if s.last:
            last[s.segment_index] = s.chunk_index
    return [seg for seg in range(info.segments)
            if seg not in last or chunks[seg] != set(range(last[seg] + 1))]


def completeness_failures(video: VideoInput, info: Optional[VideoInfo], summaries: Sequence[ChunkSummary],
                          failures: Sequence[DeadLetter]) -> list[DeadLetter]:
    """Failures only visible once everything about a video is together (``failures``: those known).

    * no probe result and no failure explaining it (MissingProbe);
    * a segment whose chunks did not all arrive (IncompleteOutput);
    * fewer frames decoded than TRUNCATION_RATIO of what the container header announces
      (TruncatedVideo): the frames that did decode are kept in the frame table, the video
      is failed. Headers are often off by a few frames, hence the ratio.

    A segment that already has a dead letter is explained by it: it adds neither of the last
    two (a model failing on a chunk is not a damaged file).
    """
    if info is None:
        return [] if failures else [DeadLetter(video.video_id, video.path, "aggregate", "MissingProbe",
                                               "the video was never probed")]
    explained = {f.segment_index for f in failures if f.segment_index is not None}
    found = []
    missing = [seg for seg in _missing_segments(info, summaries) if seg not in explained]
    if missing:
        found.append(DeadLetter(video.video_id, video.path, "aggregate", "IncompleteOutput",
                                f"segments {missing} produced no complete frame output"))
    decoded = sum(s.frames_decoded for s in summaries)
    if not explained and info.frame_count_header and decoded < TRUNCATION_RATIO * info.frame_count_header:
        found.append(DeadLetter(video.video_id, video.path, "decode", "TruncatedVideo",
                                f"decoded {decoded} of the {info.frame_count_header} frames the container "
                                f"header announces; the file is truncated or damaged"))
    return found


def build_video_row(video: VideoInput, info: Optional[VideoInfo], summaries: Sequence[ChunkSummary],
                    failures: Sequence[DeadLetter], settings: AggregationSettings, run_id: str) -> dict:
    """The video table row for one input (see schemas.video_columns for every column).

    ``failures`` must already include `completeness_failures`.
    """
    counts = np.zeros(len(settings.labels), np.int64)
    for s in summaries:
        counts += np.asarray(s.label_counts, np.int64)
    frames_sampled = sum(s.frames_sampled for s in summaries)
    frames_with_face = sum(s.frames_with_face for s in summaries)
    row = {
        "video_id": video.video_id, "source_path": video.path,
        "true_label": video.true_label, "subject_id": video.subject_id, "run_id": run_id,
        "frames_decoded": sum(s.frames_decoded for s in summaries), "frames_sampled": frames_sampled,
        "frames_with_face": frames_with_face,
        "face_coverage": frames_with_face / frames_sampled if frames_sampled else None,
        **dict(video.extra),
    }
    if info is not None:
        last_ts = max((s.last_timestamp_s for s in summaries if s.last_timestamp_s is not None), default=None)
        row.update({
            "content_sha256": info.content_sha256, "size_bytes": info.size_bytes, "codec": info.codec,
            "width": info.width, "height": info.height, "fps": info.fps,
            "frame_count_header": info.frame_count_header, "segments": info.segments,
            "duration_s": None if last_ts is None else last_ts + 1.0 / info.fps,
        })
    errors = [f"{f.stage}: {f.error_type}: {f.error_message}" for f in failures]
    row.update(video_labels(counts, settings))
    if errors:
        row["status"] = "failed"
        row["error"] = " | ".join(errors)
        row.update({c: None for c in LABEL_COLUMNS_NULLED_WHEN_FAILED})
    else:
        row["status"] = "ok" if frames_with_face else "no_face"
    return row


def dead_letter_rows(failures: Iterable[DeadLetter], run_id: str) -> list[dict]:
    return [{"video_id": f.video_id, "source_path": f.source_path, "stage": f.stage,
             "segment_index": f.segment_index, "error_type": f.error_type,
             "error_message": f.error_message, "run_id": run_id} for f in failures]


class WriteVideoFn(beam.DoFn):
    """(video_id, [its VideoInput and results]) -> VideoOutcome, writing the video's row and dead letters."""

    def __init__(self, root: str, settings: AggregationSettings, run_id: str, extra_fields: Sequence[pa.Field],
                 file_metadata: Mapping[str, str], provenance: Mapping[str, str],
                 series: SeriesSettings = SeriesSettings(), feature_groups: Sequence[str] = ()):
        self._root = root
        self._series = series
        self._feature_groups = tuple(feature_groups)
        self._settings = settings
        self._run_id = run_id
        self._provenance = dict(provenance)     # settings_fingerprint, models
        self._extra = list(extra_fields)
        self._metadata = dict(file_metadata)
        self._schema = None

    def setup(self):
        self._schema = video_schema(self._settings.labels, self._settings.broad_labels, self._extra)

    def process(self, keyed):
        video_id, grouped = keyed
        inputs, results = [], []
        for element in grouped:
            (inputs if isinstance(element, VideoInput) else results).append(element)
        if not inputs:          # a result for an id nobody asked for would be a bug upstream
            raise RuntimeError(f"video {video_id} has results but is not a matched input")
        if any(isinstance(r, Unchanged) for r in results):
            yield VideoOutcome(video_id, "skipped", 0, 0)      # its row and files stay as they are
            return
        infos = [r for r in results if isinstance(r, VideoInfo)]
        hashes = [r for r in results if isinstance(r, ContentHash)]
        summaries = [r for r in results if isinstance(r, ChunkSummary)]
        failures = sorted((dataclasses.replace(r, source_path=r.source_path or inputs[0].path)
                           for r in results if isinstance(r, DeadLetter)),
                          key=lambda f: (-1 if f.segment_index is None else f.segment_index, f.stage))
        info = infos[0] if infos else None
        failures += completeness_failures(inputs[0], info, summaries, failures)
        if self._series.groups and any(s.rows_written for s in summaries):
            series_failures = self._add_series_columns(inputs[0])
            if series_failures and not has_frame_files(self._root, video_id):   # a failed rewrite removed them
                summaries = []
            failures += series_failures
        row = build_video_row(inputs[0], info, summaries, failures, self._settings, self._run_id)
        if hashes and info is None:     # unprobeable, but its bytes are known: a rerun can skip it
            row.update(content_sha256=hashes[0].content_sha256, size_bytes=hashes[0].size_bytes)
        row.update(self._provenance, processed_at=dt.datetime.now(dt.timezone.utc))
        write_parquet(records_table([row], self._schema),
                      FileSystems.join(partition_dir(self._root, "videos", video_id), "part-00000.parquet"),
                      self._metadata)
        # Written for every video, empty when nothing failed, so the table always exists for readers.
        write_parquet(records_table(dead_letter_rows(failures, self._run_id), dead_letter_schema()),
                      FileSystems.join(partition_dir(self._root, "dead_letters", video_id), "part-00000.parquet"),
                      self._metadata)
        yield VideoOutcome(video_id, row["status"], row["frames_sampled"], row["frames_with_face"])

    def _add_series_columns(self, video: VideoInput) -> list[DeadLetter]:
        """Baseline / smoothing columns of the video's frame files (they need the whole video, so here)."""
        try:
            add_video_series_columns(self._root, video.video_id, self._settings.labels, self._feature_groups,
                                     self._series, self._metadata)
            return []
        except Exception as exc:  # noqa: BLE001 - the video fails, the run goes on
            return [DeadLetter.from_exception(video.video_id, video.path, "features", exc)]


def _key(element):
    return (element.video_id, element)


class AggregateVideos(beam.PTransform):
    """{"inputs": PCollection[VideoInput], "results": PCollection or tuple of PCollections of
    VideoInfo | Unchanged | ChunkSummary | DeadLetter} -> PCollection[VideoOutcome], one per input,
    after writing its video row and dead letters (nothing is written for an Unchanged video: its
    outcome is "skipped").

    All branches go through one Flatten, are keyed by video id and grouped: the in-process runner
    materialises each Flatten as a stage of its own, so the result branches are passed here rather
    than flattened before.

    Example::

        outcomes = {"inputs": inputs, "results": (probed, failures, written)} | AggregateVideos(root, settings, run_id)
    """

    def __init__(self, root: str, settings: AggregationSettings, run_id: str,
                 extra_fields: Sequence[pa.Field] = (), file_metadata: Mapping[str, str] | None = None,
                 provenance: Mapping[str, str] | None = None, series: SeriesSettings = SeriesSettings(),
                 feature_groups: Sequence[str] = ()):
        """``series``: the per-video columns (neutral baseline, smoothing) appended to the frame files
        WriteFrames wrote with ``feature_groups`` (transforms.series)."""
        super().__init__()
        provenance = provenance or {"settings_fingerprint": "", "models": "[]"}
        self._fn = WriteVideoFn(root, settings, run_id, extra_fields, file_metadata or {}, provenance,
                                series, feature_groups)

    def expand(self, pcolls):
        results = pcolls["results"]
        branches = [pcolls["inputs"], *((results,) if isinstance(results, beam.PCollection) else results)]
        return (branches
                | "AllOfEveryVideo" >> beam.Flatten()
                | "KeyByVideo" >> beam.Map(_key)
                | "GroupByVideo" >> beam.GroupByKey()
                | "BuildAndWriteVideoRows" >> beam.ParDo(self._fn))
