"""SplitIntoWorkUnits: probed videos -> time segments, spread over the workers."""
from __future__ import annotations

from typing import Iterator

import apache_beam as beam

from core.elements import VideoInfo, WorkUnit


def work_units(info: VideoInfo) -> Iterator[WorkUnit]:
    """The segments of a probed video: ``info.segments`` ranges of ``info.segment_frames``
    frames, the last one running to the end of the file."""
    for s in range(info.segments):
        start = s * info.segment_frames
        end = None if s == info.segments - 1 else start + info.segment_frames
        yield WorkUnit(info, s, start, end)


class SplitIntoWorkUnits(beam.PTransform):
    """PCollection[VideoInfo] -> PCollection[WorkUnit], redistributed across workers.

    The Reshuffle breaks fusion after the fan-out, so the segments of one long video are
    decoded by different workers instead of all by the one that probed it. Only these small
    descriptors cross it; frames never do.
    """

    def expand(self, infos):
        return (infos
                | "PlanSegments" >> beam.FlatMap(work_units)
                | "SpreadWorkUnits" >> beam.Reshuffle())
