"""`affectflow aggregate`: relabel every video of an output from its frame Parquet alone, consistently.

No video is decoded. Per-class counts of the primary face's frame label come from pyarrow's
group-by over the frame table (a few columns read); each video row's label columns are
recomputed with the new aggregate.* settings, everything else (source, checksum, status,
manifest columns, settings fingerprint) is kept. The rows go through the output's lock and a
staging folder like a run's, and the re-aggregation is a run of its own in the manifests
(``kind: aggregate``): its id on the rewritten rows, its settings in ``run_manifest.json``, so
the next ``affectflow run`` knows which labels the output holds (and relabels, without
decoding, when its own aggregate settings differ).
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems

from core.errors import UsageError
from models.aggregation import AggregationSettings
from pipelines.config import RunConfig
from pipelines.output.commit import commit_staging, recover_commits
from pipelines.output.layout import STAGING, dataset, has_table, output_video_ids
from pipelines.output.lock import OutputLock
from pipelines.output.manifest import new_run_id, summarise_videos, write_manifest
from pipelines.output.rows import relabelled
from pipelines.output.state import output_manifest, read_video_rows
from schemas.columns import PARTITION_COLUMN, count_column
from schemas.videos import video_schema
from transforms.parquet import VIDEO_ROW_FILE, partition_dir, records_table, write_parquet


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


def _relabelled_rows(output: str, settings: AggregationSettings, run_id: str) -> tuple[list[dict], pa.Schema]:
    """Every video row with counts from the frame table and labels under ``settings``."""
    rows, damaged = read_video_rows(output, output_video_ids(output))
    if damaged:
        raise UsageError(f"{len(damaged)} video rows of {output} cannot be read (e.g. {damaged[0]}); run "
                         "`affectflow run` over the output's inputs to repair them first")
    counts = label_counts(output, settings.labels) if has_table(output, "frames") else {}
    base = {c.name for c in video_schema(settings.labels, settings.broad_labels)}
    schema = video_schema(settings.labels, settings.broad_labels,
                          [f for f in rows.schema if f.name not in base])
    out = []
    for row in rows.to_pylist():
        c = counts.get(row[PARTITION_COLUMN], np.zeros(len(settings.labels), np.int64))
        row.update({count_column(l): int(c[i]) for i, l in enumerate(settings.labels)})
        out.append({**relabelled(row, settings), "run_id": run_id})
    return out, schema


def reaggregate(output: str, config: RunConfig, dest: Optional[str] = None, wait_s: float = 0.0,
                command: Optional[list[str]] = None) -> pa.Table:
    """Relabel every video row of ``output`` under ``config``'s aggregate.* settings; return the rows.

    With ``dest`` the rows go to ``dest/videos`` and ``output`` is left as it is; otherwise they
    replace the output's rows through staging, and a run manifest records the re-aggregation.
    Raises UsageError when ``output`` is not an affectflow output.
    """
    output = output.rstrip("/")
    before = output_manifest(output)
    settings = AggregationSettings.from_config(config.job.aggregate, before["labels"])
    run_id = new_run_id()
    if dest is not None:
        rows, schema = _relabelled_rows(output, settings, run_id)
        for row in rows:
            write_parquet(records_table([row], schema),
                          f"{partition_dir(dest.rstrip('/'), 'videos', row[PARTITION_COLUMN])}/{VIDEO_ROW_FILE}")
        return records_table(rows, schema)
    started = time.time()
    with OutputLock(output, run_id, " ".join(command or []), wait_s):
        recovered = recover_commits(output)
        rows, schema = _relabelled_rows(output, settings, run_id)
        staging = FileSystems.join(output, STAGING, run_id)
        metadata = {"affectflow.run_id": run_id}
        for row in rows:
            write_parquet(records_table([row], schema),
                          f"{partition_dir(staging, 'videos', row[PARTITION_COLUMN])}/{VIDEO_ROW_FILE}", metadata)
        commit_staging(staging, output, {row[PARTITION_COLUMN]: ("videos",) for row in rows})
        table = records_table(rows, schema)
        ids = [r[PARTITION_COLUMN] for r in rows]
        counts = summarise_videos(table, len(rows), run_id, rewritten=ids)
        counts.update(rows_written=len(rows))
        previous_config = before.get("config", {})
        manifest = {**before, "run_id": run_id, "kind": "aggregate", "command": command,
                    "config": {**previous_config, "job": {**previous_config.get("job", {}),
                                                          "aggregate": config.as_dict()["job"]["aggregate"]}},
                    "counts": counts, "broad_labels": list(settings.broad_labels), "recovered_commits": recovered,
                    "reaggregated": {"from_run": before.get("run_id"), "videos": len(rows),
                                     "seconds": round(time.time() - started, 3)}}
        manifest.pop("validation", None)
        write_manifest(output, manifest)
        if config.job.validation.enabled:
            from pipelines.runs import validate_after_run
            manifest["validation"] = validate_after_run(output, config, run_id)
    return table
