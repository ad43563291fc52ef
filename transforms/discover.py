"""Inputs: discovering videos (glob or manifest), probing them, splitting them into work units.

Discovery runs on the launching machine, before the pipeline is built, so the run knows
exactly which inputs it matched (the denominator of ok + no_face + failed = matched) and
can report progress against it. Listing goes through Beam's FileSystems, so ``gs://``,
``s3://`` and local paths work alike.

Video ids are stable across reruns: a manifest's ``video_id``, or else the file's stem
plus 8 hex digits of the SHA-1 of its path relative to the glob's fixed prefix. Moving
the whole archive keeps the ids; renaming a file changes its id.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
from typing import Iterator, Mapping, Optional, Sequence, Union

import apache_beam as beam
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.decode import frames_on_constant_grid, hash_file, local_file, probe_container, segment_bounds
from transforms.elements import ContentHash, DeadLetter, Unchanged, VideoInfo, VideoInput, WorkUnit

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
MANIFEST_EXTENSIONS = (".csv", ".parquet")
RESERVED_MANIFEST_COLUMNS = ("path", "video_id", "label", "subject_id")
_ID_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class InputError(ValueError):
    """The input specification itself is unusable (nothing matched, bad manifest)."""


def _sanitise(stem: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")
    return (cleaned or "video")[:80]


def make_video_id(path: str, base: str) -> str:
    relative = path[len(base):].lstrip("/") if path.startswith(base) else path
    stem = os.path.splitext(os.path.basename(path))[0]
    return f"{_sanitise(stem)}-{hashlib.sha1(relative.encode()).hexdigest()[:8]}"


def _glob_base(pattern: str) -> str:
    """The fixed directory prefix of a glob (everything before the first wildcard)."""
    cut = min([i for i in (pattern.find(c) for c in "*?[") if i >= 0], default=len(pattern))
    prefix = pattern[:cut]
    return prefix if prefix.endswith("/") else prefix.rsplit("/", 1)[0] + "/"


def _expand_pattern(pattern: str) -> str:
    """A directory means every video below it."""
    if any(c in pattern for c in "*?["):
        return pattern
    if "://" not in pattern and os.path.isdir(pattern):
        return os.path.join(os.path.abspath(pattern), "**")
    return pattern


def discover(spec: str) -> tuple[list[VideoInput], list[pa.Field]]:
    """Inputs for a glob, a directory or a manifest; plus the manifest's extra columns.

    Raises InputError when nothing matches or the manifest is malformed.
    """
    if spec.lower().endswith(MANIFEST_EXTENSIONS) and not any(c in spec for c in "*?["):
        return read_manifest(spec)
    pattern = _expand_pattern(spec if "://" in spec else os.path.abspath(spec))
    base = _glob_base(pattern)
    matched = sorted({m.path for r in FileSystems.match([pattern]) for m in r.metadata_list})
    videos = [p for p in matched if p.lower().endswith(VIDEO_EXTENSIONS)]
    if not videos:
        raise InputError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) matched {spec!r}")
    return [VideoInput(make_video_id(p, base), p) for p in videos], []


def _read_table(path: str) -> pa.Table:
    with FileSystems.open(path) as fh:
        data = fh.read()
    if path.lower().endswith(".parquet"):
        return pq.read_table(io.BytesIO(data))
    # Ids and labels stay strings even when they look like numbers.
    # An empty cell is "not given" (null), never an empty-string label.
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in RESERVED_MANIFEST_COLUMNS},
                                   strings_can_be_null=True, null_values=[""])
    return pacsv.read_csv(io.BytesIO(data), convert_options=convert)


def read_manifest(path: str) -> tuple[list[VideoInput], list[pa.Field]]:
    """A manifest: ``path`` (required), ``video_id``, ``label``, ``subject_id`` and any other
    columns, which are carried through to the video table with their types.

    Relative paths are relative to the manifest's folder.
    """
    try:
        table = _read_table(path)
    except Exception as exc:
        raise InputError(f"cannot read manifest {path}: {exc}") from exc
    if "path" not in table.column_names:
        raise InputError(f"manifest {path} has no 'path' column (columns: {table.column_names})")
    base = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
    extra_fields = [f for f in table.schema if f.name not in RESERVED_MANIFEST_COLUMNS]
    inputs, seen = [], set()
    for n, row in enumerate(table.to_pylist(), start=2 if path.lower().endswith(".csv") else 1):
        video_path = row["path"]
        if not video_path:
            raise InputError(f"manifest {path}, row {n}: empty path")
        if "://" not in video_path and not os.path.isabs(video_path):
            video_path = os.path.normpath(os.path.join(base or ".", video_path))
        video_id = row.get("video_id") or make_video_id(video_path, base)
        if not _ID_OK.match(str(video_id)):
            raise InputError(f"manifest {path}, row {n}: video_id {video_id!r} must match {_ID_OK.pattern}")
        if video_id in seen:
            raise InputError(f"manifest {path}, row {n}: duplicate video_id {video_id!r}")
        seen.add(video_id)
        label = row.get("label")
        subject = row.get("subject_id")
        inputs.append(VideoInput(str(video_id), video_path,
                                 None if label is None else str(label),
                                 None if subject is None else str(subject),
                                 tuple((f.name, row[f.name]) for f in extra_fields)))
    if not inputs:
        raise InputError(f"manifest {path} lists no videos")
    return inputs, extra_fields


class ProbeVideoFn(beam.DoFn):
    """VideoInput -> VideoInfo | Unchanged | (ContentHash + DeadLetter): hash, open the container, plan segments.

    ``previous`` maps video ids to the (content_sha256, settings_fingerprint) of their row in
    the output; a video whose bytes hash the same under the same ``fingerprint`` is reported
    ``Unchanged`` and never decoded.
    """

    def __init__(self, segment_seconds: Optional[float], previous: Optional[Mapping[str, tuple[str, str]]] = None,
                 fingerprint: str = ""):
        self._segment_seconds = segment_seconds
        self._previous = dict(previous or {})
        self._fingerprint = fingerprint
        self.failed = Metrics.counter("affectflow", "failed_probes")
        self.unchanged = Metrics.counter("affectflow", "unchanged_videos")
        self.variable_rate = Metrics.counter("affectflow", "variable_frame_rate_videos")

    def process(self, video: VideoInput) -> Iterator[Union[VideoInfo, Unchanged, ContentHash, DeadLetter]]:
        try:
            sha, size = hash_file(video.path)
        except Exception as exc:  # noqa: BLE001 - unreadable: a dead letter, retried by every run
            self.failed.inc()
            yield DeadLetter.from_exception(video.video_id, video.path, "probe", exc)
            return
        if self._previous.get(video.video_id) == (sha, self._fingerprint):
            self.unchanged.inc()
            yield Unchanged(video.video_id, sha)
            return
        try:
            with local_file(video.path) as local:
                c = probe_container(local)
                per_segment, segments = segment_bounds(c.fps, c.frame_count_header, self._segment_seconds)
                if segments > 1 and not frames_on_constant_grid(local, c.fps):
                    # Seeking would land on the wrong frame: one work unit, decoded from the start.
                    self.variable_rate.inc()
                    per_segment, segments = segment_bounds(c.fps, c.frame_count_header, None)
            yield VideoInfo(video, sha, size, c.codec, c.width, c.height, c.fps, c.frame_count_header,
                            per_segment, segments)
        except Exception as exc:  # noqa: BLE001 - a bad input is a dead letter, not a crashed run
            self.failed.inc()
            yield ContentHash(video.video_id, sha, size)
            yield DeadLetter.from_exception(video.video_id, video.path, "probe", exc)


def work_units(info: Union[VideoInfo, Unchanged, ContentHash, DeadLetter]) -> Iterator[WorkUnit]:
    """The segments of a probed video; nothing for anything else (unchanged video, failed probe)."""
    if not isinstance(info, VideoInfo):
        return
    for s in range(info.segments):
        start = s * info.segment_frames
        end = None if s == info.segments - 1 else start + info.segment_frames
        yield WorkUnit(info, s, start, end)


def is_dead_letter(element) -> bool:
    return isinstance(element, DeadLetter)


def is_not_dead_letter(element) -> bool:
    return not isinstance(element, DeadLetter)


class ProbeVideos(beam.PTransform):
    """PCollection[VideoInput] -> PCollection[VideoInfo | Unchanged | DeadLetter] (see ProbeVideoFn)."""

    def __init__(self, segment_seconds: Optional[float], previous: Optional[Mapping[str, tuple[str, str]]] = None,
                 fingerprint: str = ""):
        super().__init__()
        self._fn = ProbeVideoFn(segment_seconds, previous, fingerprint)

    def expand(self, inputs):
        return inputs | "HashAndProbe" >> beam.ParDo(self._fn)


class SplitIntoWorkUnits(beam.PTransform):
    """PCollection[VideoInfo | DeadLetter] -> PCollection[WorkUnit], redistributed across workers.

    The Reshuffle breaks fusion after the fan-out, so the segments of one long video
    are decoded by different workers instead of all by the one that probed it.
    """

    def expand(self, infos):
        return (infos
                | "PlanSegments" >> beam.FlatMap(work_units)
                | "SpreadWorkUnits" >> beam.Reshuffle())


def split_errors(pcoll, label: str):
    """(values, dead letters) of a PCollection[T | DeadLetter], with single-output Filters.

    Filters, not tagged outputs: the DaskRunner merges tagged outputs into the main one.
    """
    return (pcoll | f"{label}Values" >> beam.Filter(is_not_dead_letter),
            pcoll | f"{label}DeadLetters" >> beam.Filter(is_dead_letter))


__all__ = ["discover", "read_manifest", "make_video_id", "ProbeVideos", "SplitIntoWorkUnits", "split_errors",
           "InputError", "work_units"]
