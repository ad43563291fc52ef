"""Rewriting video rows a run keeps: new labels after the aggregate settings changed, new carried
columns after a manifest added one. Rows go through the run's staging folder like every write."""
from __future__ import annotations

import datetime as dt
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa

from models.aggregation import LABEL_COLUMNS_NULLED_WHEN_FAILED, AggregationSettings, video_labels
from schemas.columns import PARTITION_COLUMN, count_column
from transforms.parquet import VIDEO_ROW_FILE, partition_dir, records_table, write_parquet

# The columns the aggregate.* settings decide (besides the per-class counts, which they do not).
_AGGREGATE_KEYS = ("top1_label", "threshold", "fallback", "threshold_denominator", "threshold_candidate",
                   "threshold_candidate_count", "threshold_label", "broad_top1_label", "broad_threshold_label")


def relabelled(row: dict, settings: AggregationSettings) -> dict:
    """The row with its label columns recomputed from its own per-class counts under ``settings``."""
    counts = np.asarray([row.get(count_column(l)) or 0 for l in settings.labels], np.int64)
    new = {**row, **video_labels(counts, settings)}
    if row.get("status") == "failed":
        new.update({c: None for c in LABEL_COLUMNS_NULLED_WHEN_FAILED})
    return new


def _differs(old: dict, new: dict, columns: Sequence[str]) -> bool:
    return any(old.get(c) != new.get(c) for c in columns)


def rewrite_kept_rows(rows: pa.Table, staging: str, settings: AggregationSettings, schema: pa.Schema, run_id: str,
                      file_metadata: Mapping[str, str], relabel: bool = True) -> list[str]:
    """Write into ``staging`` the rows of ``rows`` (videos a run did not process) that lack a column
    of ``schema`` or, with ``relabel``, whose labels differ under ``settings``; return their ids.
    A rewritten row carries the run's id and time (the run wrote it) and keeps everything else."""
    changed = []
    missing = [f.name for f in schema if f.name not in rows.column_names]
    broad_columns = [f.name for f in schema if f.name.startswith("count_broad_")]
    for row in rows.to_pylist():
        new = relabelled(row, settings) if relabel else dict(row)
        if not (missing or _differs(row, new, [*_AGGREGATE_KEYS, *broad_columns])):
            continue
        new.update(run_id=run_id, processed_at=dt.datetime.now(dt.timezone.utc))
        video_id = row[PARTITION_COLUMN]
        write_parquet(records_table([new], schema), f"{partition_dir(staging, 'videos', video_id)}/{VIDEO_ROW_FILE}",
                      file_metadata)
        changed.append(video_id)
    return changed
