"""The per-video stages: gather each video's results, then write its row and dead letters.

CollectVideoResults joins, per video id, the matched input, its probe result, the summaries
of every frame chunk written and every dead letter into one `VideoResults`. WriteVideoRows
turns each into the video's row. Status:

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
from typing import Iterable, Mapping, Optional, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from core.elements import (ChunkSummary, ContentHash, DeadLetter, Unchanged, VideoInfo, VideoInput, VideoOutcome,
                           VideoResults)
from models.aggregation import LABEL_COLUMNS_NULLED_WHEN_FAILED, AggregationSettings, video_labels
from schemas.videos import dead_letter_schema, video_schema
from transforms.parquet import VIDEO_ROW_FILE, partition_dir, records_table, write_parquet

TRUNCATION_RATIO = 0.9


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
        # Nothing explains it: a worker was lost, or a bug. Retried by the next run.
        return [] if failures else [DeadLetter(video.video_id, video.path, "aggregate", "MissingProbe",
                                               "the video was never probed", retryable=True)]
    explained = {f.segment_index for f in failures if f.segment_index is not None}
    found = []
    missing = [seg for seg in _missing_segments(info, summaries) if seg not in explained]
    if missing:
        found.append(DeadLetter(video.video_id, video.path, "aggregate", "IncompleteOutput",
                                f"segments {missing} produced no complete frame output", retryable=True))
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
             "segment_index": f.segment_index, "error_type": f.error_type, "error_message": f.error_message,
             "retryable": f.retryable, "run_id": run_id} for f in failures]


# The branch each element type of a video's results arrives on (one type per branch).
BRANCHES: dict[type, str] = {VideoInput: "inputs", VideoInfo: "infos", Unchanged: "unchanged",
                             ContentHash: "content_hashes", ChunkSummary: "summaries", DeadLetter: "dead_letters"}


def _keyed(element) -> tuple[str, object]:
    return element.video_id, element


def _failure_order(failure: DeadLetter) -> tuple[int, str]:
    return (-1 if failure.segment_index is None else failure.segment_index, failure.stage)


def gather(grouped: tuple[str, Iterable[object]]) -> VideoResults:
    """(video_id, every element about the video) -> the video's VideoResults (BRANCHES says which
    field each element type fills).

    Failures get the input's path where a stage could not know it and are ordered by segment
    and stage; then `completeness_failures` adds what only shows once everything about the
    video is together (nothing for an unchanged video)."""
    video_id, elements = grouped
    branches: dict[str, list] = {}
    for element in elements:
        branches.setdefault(BRANCHES[type(element)], []).append(element)
    inputs = branches.get("inputs")
    if not inputs:          # a result for an id nobody asked for would be a bug upstream
        raise RuntimeError(f"video {video_id} has results but is not a matched input")
    video = inputs[0]
    failures = sorted((dataclasses.replace(f, source_path=f.source_path or video.path)
                       for f in branches.get("dead_letters", ())), key=_failure_order)
    info = next(iter(branches.get("infos", ())), None)
    summaries = tuple(branches.get("summaries", ()))
    unchanged = bool(branches.get("unchanged"))
    if not unchanged:
        failures += completeness_failures(video, info, summaries, failures)
    return VideoResults(input=video, info=info, content_hash=next(iter(branches.get("content_hashes", ())), None),
                        unchanged=unchanged, summaries=summaries, failures=tuple(failures))


class CollectVideoResults(beam.PTransform):
    """{"inputs": VideoInput, "infos": VideoInfo, "unchanged": Unchanged, "content_hashes": ContentHash,
    "summaries": ChunkSummary, "dead_letters": DeadLetter} (each a PCollection; dead_letters may be
    a tuple of them, one per stage) -> PCollection[VideoResults], one per input.

    A co-group written out: every branch's elements are flattened into one collection, keyed
    by video and grouped once; each branch has its own element type (BRANCHES), which tells
    them apart again. Beam's CoGroupByKey tags each branch with a step of its own: on a short
    run its dozen extra steps cost about 0.1 s of graph building and bundle overhead.

    Example::

        results = {"inputs": inputs, "infos": probed.infos, ..., "dead_letters": (a, b)} | CollectVideoResults()
    """

    def expand(self, branches):
        pcolls = []
        for name, value in branches.items():
            pcolls += list(value) if isinstance(value, (tuple, list)) else [value]
        return (pcolls | "AllOfEveryVideo" >> beam.Flatten() | "KeyByVideo" >> beam.Map(_keyed)
                | "GroupByVideo" >> beam.GroupByKey() | "AsVideoResults" >> beam.Map(gather))


class WriteVideoRowFn(beam.DoFn):
    """VideoResults -> VideoOutcome, writing the video's row and dead letters (nothing for an
    unchanged video: its outcome is "skipped")."""

    def __init__(self, root: str, settings: AggregationSettings, run_id: str, extra_fields: Sequence[pa.Field],
                 file_metadata: Mapping[str, str], provenance: Mapping[str, str]):
        self._root = root
        self._settings = settings
        self._run_id = run_id
        self._provenance = dict(provenance)     # settings_fingerprint, models
        self._extra = list(extra_fields)
        self._metadata = dict(file_metadata)
        self._schema = None

    def setup(self):
        self._schema = video_schema(self._settings.labels, self._settings.broad_labels, self._extra)

    def process(self, results: VideoResults):
        if results.unchanged:
            yield VideoOutcome(results.video_id, "skipped", 0, 0)
            return
        try:
            row, failures = self._row(results, list(results.failures))
            write_video_files(self._root, row, self._schema, dead_letter_rows(failures, self._run_id), self._metadata)
        except Exception as exc:  # noqa: BLE001 - this video fails, the run goes on
            # A failed row instead (retried by the next run); if even that cannot be written, the run's
            # skeleton writes one after the pipeline (pipelines.runs), so every input keeps its row.
            failures = [*results.failures, DeadLetter.from_exception(results.video_id, results.input.path,
                                                                     "write", exc)]
            try:
                row, _ = self._row(results, failures)
            except Exception:  # noqa: BLE001 - the row cannot be built from these results: count no frames
                row, _ = self._row(dataclasses.replace(results, info=None, summaries=()), failures)
                _remove_frames(self._root, results.video_id)
            write_video_files(self._root, row, self._schema, dead_letter_rows(failures, self._run_id), self._metadata)
        yield VideoOutcome(results.video_id, row["status"], row["frames_sampled"], row["frames_with_face"])

    def _row(self, results: VideoResults, failures: list[DeadLetter]) -> tuple[dict, list[DeadLetter]]:
        row = build_video_row(results.input, results.info, results.summaries, failures, self._settings, self._run_id)
        if results.content_hash is not None and results.info is None:   # unprobeable, bytes known: a rerun can skip it
            row.update(content_sha256=results.content_hash.content_sha256, size_bytes=results.content_hash.size_bytes)
        row.update(self._provenance, processed_at=dt.datetime.now(dt.timezone.utc))
        return row, failures


def _remove_frames(root: str, video_id: str) -> None:
    """Delete a video's frame files under ``root`` (its row will count no frames)."""
    folder = partition_dir(root, "frames", video_id)
    if FileSystems.exists(folder):
        FileSystems.delete([folder])


def write_video_files(root: str, row: dict, schema: pa.Schema, dead_letters: list[dict],
                      file_metadata: Mapping[str, str]) -> None:
    """A video's row and its dead letters, each one file of its partition. The dead-letter file is
    written for every video, empty when nothing failed, so the table always exists for readers."""
    video_id = row["video_id"]
    write_parquet(records_table([row], schema),
                  f"{partition_dir(root, 'videos', video_id)}/{VIDEO_ROW_FILE}", file_metadata)
    write_parquet(records_table(dead_letters, dead_letter_schema()),
                  f"{partition_dir(root, 'dead_letters', video_id)}/{VIDEO_ROW_FILE}", file_metadata)


class WriteVideoRows(beam.PTransform):
    """PCollection[VideoResults] -> PCollection[VideoOutcome], one per input, after writing its video
    row (schemas.videos) and dead letters under ``root``.

    ``provenance``: the row's settings_fingerprint and models (JSON); ``extra_fields``: manifest
    columns carried through.

    Example::

        outcomes = results | WriteVideoRows(root, settings, run_id)
    """

    def __init__(self, root: str, settings: AggregationSettings, run_id: str,
                 extra_fields: Sequence[pa.Field] = (), file_metadata: Optional[Mapping[str, str]] = None,
                 provenance: Optional[Mapping[str, str]] = None):
        super().__init__()
        provenance = provenance or {"settings_fingerprint": "", "models": "[]"}
        self._fn = WriteVideoRowFn(root, settings, run_id, extra_fields, file_metadata or {}, provenance)

    def expand(self, results):
        return results | "BuildAndWriteVideoRows" >> beam.ParDo(self._fn)
