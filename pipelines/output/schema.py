"""What an output's tables must keep while runs come and go: one frame schema, one label and broad-label
set, and one type per carried manifest column (columns a later manifest adds are added to every row)."""
from __future__ import annotations

import base64
from typing import Optional, Sequence

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from core.errors import ConfigError, InputError
from models.aggregation import AggregationSettings
from pipelines.output.layout import has_table, partition_of
from pipelines.output.manifest import manifest_feature_groups
from schemas.columns import PARTITION_COLUMN
from schemas.videos import video_columns


def carried_columns(fields: Sequence[pa.Field]) -> dict:
    """The manifest's record of the carried columns, in table order: names and Arrow types to read, and
    the exact schema (Arrow IPC, base64) to rebuild them."""
    schema = pa.schema(list(fields))
    return {"columns": [{"name": f.name, "type": str(f.type)} for f in fields],
            "arrow_schema": base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")}


def _recorded(before: Optional[dict], output: str) -> list[pa.Field]:
    """The carried columns the output's video table has (its latest manifest, or an older output's files)."""
    if before is None:
        return []
    if "carried_columns" in before:
        data = base64.b64decode(before["carried_columns"]["arrow_schema"])
        return list(pa.ipc.read_schema(pa.py_buffer(data)))
    if not has_table(output, "videos"):
        return []
    from pipelines.output.layout import dataset
    known = {c.name for c in video_columns(before.get("labels", ()), before.get("broad_labels", ()))}
    return [f for f in dataset(output, "videos").schema if f.name not in known and f.name != PARTITION_COLUMN]


def union_carried(before: Optional[dict], output: str, fields: Sequence[pa.Field]) -> list[pa.Field]:
    """The carried columns after this run: the output's, then this manifest's new ones. InputError when
    a column this manifest carries has another type in the output (the table would become unreadable)."""
    recorded = _recorded(before, output)
    by_name = {f.name: f for f in recorded}
    for f in fields:
        old = by_name.get(f.name)
        if old is not None and not (old.type == f.type or pa.types.is_null(f.type) or pa.types.is_null(old.type)):
            raise InputError(f"manifest column {f.name!r} is {f.type} in this manifest but {old.type} in {output}'s "
                             "video table; give it the same type (or rename it)")
    return recorded + [f for f in fields if f.name not in by_name]


def added_columns(before: Optional[dict], output: str, carried: Sequence[pa.Field]) -> list[str]:
    """Carried columns this run adds to the output's video table."""
    known = {f.name for f in _recorded(before, output)}
    return [f.name for f in carried if f.name not in known]


def _existing_videos(output: str) -> set[str]:
    pattern = FileSystems.join(output, "frames", f"{PARTITION_COLUMN}=*", "part-*.parquet")
    return {partition_of(m.path) for m in FileSystems.match([pattern])[0].metadata_list}


def check_outputs_schema(output: str, before: Optional[dict], video_ids: Sequence[str], feature_groups: Sequence[str],
                         settings: AggregationSettings) -> None:
    """Refuse a run that would leave the output with two frame schemas or two label sets.

    The frame schema follows the feature groups and the emotion labels, the video table the labels
    and broad labels; the latest run manifest records those of the whole folder. A run with others
    must rewrite every video already there, so it may go ahead only when all of them are among its
    matched inputs (the changed settings change the fingerprint: each is processed again).
    """
    if before is None:
        return
    old = (list(manifest_feature_groups(before)), list(before.get("labels", settings.labels)),
           list(before.get("broad_labels", settings.broad_labels)))
    new = (list(feature_groups), list(settings.labels), list(settings.broad_labels))
    if old == new:
        return
    existing = _existing_videos(output)
    left_out = sorted(existing - set(video_ids))
    if left_out:
        raise ConfigError(
            f"{output} holds frames of {len(existing)} videos written with frame feature groups {old[0]}, labels "
            f"{old[1]} and broad labels {old[2]}; this run writes {new[0]} / {new[1]} / {new[2]} but does not match "
            f"{len(left_out)} of them (e.g. {left_out[0]}), so the tables would mix two schemas. Write to a new "
            "output folder, or include every video already in it.")
