"""What an output already holds that a rerun may keep, and what it must not mix."""
from __future__ import annotations

import json
from typing import Iterable, Sequence

from apache_beam.io.filesystems import FileSystems

from core.elements import RowFingerprint
from core.errors import ConfigError
from pipelines.output.layout import MANIFEST_FILE, has_table, partition_of, read_table
from pipelines.output.manifest import manifest_feature_groups
from schemas.columns import INPUT_STAGES, PARTITION_COLUMN

TRANSIENT_ERRORS = ("MemoryError", "OSError", "IOError", "BeamIOError", "TimeoutError", "ConnectionError")


def previous_fingerprints(output: str, video_ids: Iterable[str]) -> dict[str, RowFingerprint]:
    """video_id -> RowFingerprint (content_sha256, settings_fingerprint) of the rows already in
    ``output`` that a rerun may skip.

    A video that failed in a stage of ``INPUT_STAGES`` (its bytes could not be probed, decoded
    or parsed) is left as it is: the same bytes fail the same way. A failure in any other stage
    (detection, inference, features, writing), or of a ``TRANSIENT_ERRORS`` type in any stage,
    may be passing (memory, disk, a worker lost), so such a video is not listed and the next
    run processes it again.
    """
    if not has_table(output, "videos"):
        return {}
    video_ids = list(video_ids)
    table = read_table(output, "videos", video_ids)
    if "settings_fingerprint" not in table.column_names:       # written before provenance existed
        return {}
    retry = _retryable_failures(output, video_ids)
    ids, shas, fps = (table.column(c).to_pylist() for c in (PARTITION_COLUMN, "content_sha256", "settings_fingerprint"))
    return {v: RowFingerprint(sha, fp) for v, sha, fp in zip(ids, shas, fps) if sha and fp and v not in retry}


def _retryable_failures(output: str, video_ids: list[str]) -> set[str]:
    """Ids of videos with a dead letter outside ``INPUT_STAGES`` or of a transient error type."""
    if not has_table(output, "dead_letters"):
        return set()
    letters = read_table(output, "dead_letters", video_ids, [PARTITION_COLUMN, "stage", "error_type"])
    ids, stages, errors = (letters.column(c).to_pylist() for c in (PARTITION_COLUMN, "stage", "error_type"))
    return {v for v, stage, error in zip(ids, stages, errors)
            if stage not in INPUT_STAGES or error in TRANSIENT_ERRORS}


def check_same_frame_schema(output: str, video_ids: Iterable[str], feature_groups: Sequence[str],
                            labels: Sequence[str]) -> None:
    """Refuse a run that would leave ``output``'s frame table with two schemas.

    The frame schema follows the feature groups and the emotion labels (schemas.frames); the
    latest ``run_manifest.json`` records those of every frame partition in the folder (this check
    keeps it so). A run with other groups or labels must rewrite every video already there,
    so it may go ahead only when all of them are among its matched inputs (a changed setting
    changes the fingerprint: each is processed again). Raises ConfigError naming the videos.
    """
    latest = FileSystems.join(output, MANIFEST_FILE)
    if not FileSystems.exists(latest):
        return
    with FileSystems.open(latest) as fh:
        before = json.loads(fh.read())
    old_groups, old_labels = manifest_feature_groups(before), before.get("labels", list(labels))
    if list(old_groups) == list(feature_groups) and list(old_labels) == list(labels):
        return
    pattern = FileSystems.join(output, "frames", f"{PARTITION_COLUMN}=*", "part-*.parquet")
    existing = {partition_of(m.path) for m in FileSystems.match([pattern])[0].metadata_list}
    left_out = sorted(existing - set(video_ids))
    if left_out:
        raise ConfigError(
            f"{output} holds frames of {len(existing)} videos written with frame feature groups {list(old_groups)} and labels "
            f"{list(old_labels)}; this run writes {list(feature_groups)} / {list(labels)} but does not match "
            f"{len(left_out)} of them (e.g. {left_out[0]}), so the frame table would mix two schemas. "
            "Write to a new output folder, or include every video already in it.")
