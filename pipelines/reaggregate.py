"""`affectflow aggregate`: recompute the video table's labels from the frame Parquet alone.

No video is decoded. Per-class counts of the primary face's frame label are computed by
pyarrow's group-by over the frame table (column projection keeps memory to a few
columns); the label columns of every video row are then recomputed with the new
settings, everything else (source, checksum, status, manifest columns) is kept.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from apache_beam.io.filesystems import FileSystems

from models.aggregation import LABEL_COLUMNS_NULLED_WHEN_FAILED, AggregationSettings, video_labels
from pipelines.output.layout import dataset
from schemas.columns import PARTITION_COLUMN
from schemas.videos import video_schema
from transforms.parquet import partition_dir, records_table, write_parquet


def label_counts(output: str, labels: tuple[str, ...]) -> dict[str, np.ndarray]:
    """video_id -> int64[labels]: frames whose primary face carries each label."""
    frames = dataset(output, "frames").to_table(
        columns=[PARTITION_COLUMN, "emotion_label"], filter=pc.field("face_index") == 0)
    grouped = frames.group_by([PARTITION_COLUMN, "emotion_label"]).aggregate([([], "count_all")])
    index = {l: i for i, l in enumerate(labels)}
    counts: dict[str, np.ndarray] = {}
    for vid, label, n in zip(*(grouped.column(c).to_pylist() for c in (PARTITION_COLUMN, "emotion_label", "count_all"))):
        if label not in index:
            raise ValueError(f"frame label {label!r} of video {vid} is not in the label set {list(labels)}")
        counts.setdefault(vid, np.zeros(len(labels), np.int64))[index[label]] += n
    return counts


def reaggregate(output: str, settings: AggregationSettings, dest: Optional[str] = None) -> pa.Table:
    """Rewrite every video row's label columns under ``settings``; return the new video table.

    ``dest`` (default: ``output`` itself) is the folder whose ``videos/`` receives the rows.
    """
    dest = (dest or output).rstrip("/")
    videos = dataset(output, "videos").to_table()
    counts = label_counts(output, settings.labels)
    extra = [f for f in videos.schema if f.name not in video_schema(settings.labels, settings.broad_labels).names]
    schema = video_schema(settings.labels, settings.broad_labels, extra)
    rows = []
    for row in videos.to_pylist():
        c = counts.get(row[PARTITION_COLUMN], np.zeros(len(settings.labels), np.int64))
        row.update(video_labels(c, settings))
        if row["status"] == "failed":
            row.update({k: None for k in LABEL_COLUMNS_NULLED_WHEN_FAILED})
        rows.append(row)
        write_parquet(records_table([row], schema),
                      FileSystems.join(partition_dir(dest, "videos", row[PARTITION_COLUMN]), "part-00000.parquet"))
    return records_table(rows, schema)
