"""ProbeVideos: planned videos -> what their containers hold (or why not), unchanged ones set aside."""
from __future__ import annotations

from typing import Iterator, NamedTuple, Optional, Union

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from core.elements import ContentHash, DeadLetter, PlannedVideo, RowFingerprint, Unchanged, VideoInfo
from transforms.dead_letters import DEAD_LETTERS, MAIN, TypedOutputs
from transforms.decode import frames_on_constant_grid, hash_file, local_file, probe_container, segment_bounds

UNCHANGED = "unchanged"
CONTENT_HASHES = "content_hashes"


class ProbeOutputs(NamedTuple):
    infos: beam.PCollection            # VideoInfo: probed, to be decoded
    unchanged: beam.PCollection        # Unchanged: bytes and settings as in the output's row; not decoded
    content_hashes: beam.PCollection   # ContentHash of a file that could be read but not probed
    dead_letters: beam.PCollection     # DeadLetter (stage probe)


class ProbeVideoFn(beam.DoFn):
    """PlannedVideo -> VideoInfo, or Unchanged, or (ContentHash +) DeadLetter.

    Hashes the file; a video whose bytes hash the same as its row's under the same settings
    ``fingerprint`` is Unchanged and never opened. Otherwise the container is probed and its
    segments planned: equal segments of at most ``segment_seconds``, or one when the frames
    are not on a constant-rate grid (seeking would land on the wrong frame).
    """

    def __init__(self, segment_seconds: Optional[float], fingerprint: str):
        self._segment_seconds = segment_seconds
        self._fingerprint = fingerprint
        self.failed = Metrics.counter("affectflow", "failed_probes")
        self.unchanged = Metrics.counter("affectflow", "unchanged_videos")
        self.variable_rate = Metrics.counter("affectflow", "variable_frame_rate_videos")

    def process(self, planned: PlannedVideo) -> Iterator[Union[VideoInfo, TaggedOutput]]:
        video = planned.input
        try:
            sha, size = hash_file(video.path)
        except Exception as exc:  # noqa: BLE001 - unreadable: a dead letter, retried by every run
            self.failed.inc()
            yield TaggedOutput(DEAD_LETTERS, DeadLetter.from_exception(video.video_id, video.path, "probe", exc))
            return
        if planned.previous == RowFingerprint(sha, self._fingerprint):
            self.unchanged.inc()
            yield TaggedOutput(UNCHANGED, Unchanged(video.video_id, sha))
            return
        try:
            with local_file(video.path) as local:
                c = probe_container(local)
                per_segment, segments = segment_bounds(c.fps, c.frame_count_header, self._segment_seconds)
                if segments > 1 and not frames_on_constant_grid(local, c.fps):
                    self.variable_rate.inc()
                    per_segment, segments = segment_bounds(c.fps, c.frame_count_header, None)
            yield VideoInfo(video, sha, size, c.codec, c.width, c.height, c.fps, c.frame_count_header,
                            per_segment, segments)
        except Exception as exc:  # noqa: BLE001 - a bad input is a dead letter, not a crashed run
            self.failed.inc()
            yield TaggedOutput(CONTENT_HASHES, ContentHash(video.video_id, sha, size))
            yield TaggedOutput(DEAD_LETTERS, DeadLetter.from_exception(video.video_id, video.path, "probe", exc))


class ProbeVideos(beam.PTransform):
    """PCollection[PlannedVideo] -> ProbeOutputs (see ProbeVideoFn).

    Example::

        probed = planned | ProbeVideos(segment_seconds=10, fingerprint=plan.fingerprint)
        units = probed.infos | SplitIntoWorkUnits()
    """

    def __init__(self, segment_seconds: Optional[float], fingerprint: str = ""):
        super().__init__()
        self._fn = ProbeVideoFn(segment_seconds, fingerprint)

    def expand(self, planned):
        outs = planned | "HashAndProbe" >> TypedOutputs(self._fn, VideoInfo, **{
            UNCHANGED: Unchanged, CONTENT_HASHES: ContentHash, DEAD_LETTERS: DeadLetter})
        return ProbeOutputs(outs[MAIN], outs[UNCHANGED], outs[CONTENT_HASHES], outs[DEAD_LETTERS])
