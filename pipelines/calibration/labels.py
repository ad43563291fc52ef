"""The calibration's count rows for a manifest's labelled videos (pipelines.labels reads them)."""
from __future__ import annotations

import numpy as np

from pipelines.calibration.counts import CountTable
from pipelines.labels import LabelledVideos
from pipelines.metrics import encode


def counts_for(videos: LabelledVideos, table: CountTable) -> tuple[np.ndarray, np.ndarray]:
    """(int64[n, labels] counts of the manifest's videos, bool[n] present in the run's frames)."""
    index = encode(list(videos.video_ids), list(table.video_ids))
    present = index >= 0
    counts = np.zeros((len(index), len(table.labels)), np.int64)
    counts[present] = table.counts[index[present]]
    return counts, present
