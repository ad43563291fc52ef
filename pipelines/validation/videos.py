"""The video and dead-letter tables' suites: schema, vocabularies, reconciliation with the frames
and the run manifest, and the configurable limits (face coverage, share of failed videos)."""
from __future__ import annotations

import great_expectations.expectations as gxe
import pyarrow as pa

from core.settings import ValidationConfig
from pipelines.validation.rules import (CRITICAL, DEAD_LETTERS, FRAMES, SCOPE, VIDEO_BROAD_LABEL_COLUMNS,
                                        VIDEO_LABEL_COLUMNS, VIDEOS, WARNING, RunFacts, between, columns_match, ident, in_set, lit,
                                        not_null, rows_rule, meta)
from pipelines.validation.labels import label_expectations
from schemas.columns import DEAD_LETTER_STAGES, FALLBACKS, PARTITION_COLUMN, VIDEO_STATUSES, count_column, frac_column
from schemas.videos import dead_letter_schema, video_columns, video_schema


def _frame_counts(select: str, where: str) -> str:
    return f"""
        SELECT v.video_id, {select} FROM {{batch}} AS v LEFT JOIN (
          SELECT video_id,
                 count(*) FILTER (WHERE coalesce(face_index, 0) = 0) AS frame_rows,
                 count(*) FILTER (WHERE face_found AND face_index = 0) AS face_rows
          FROM {FRAMES} GROUP BY video_id) AS f ON v.video_id = f.video_id
        WHERE ({where}) AND v.video_id IN (SELECT video_id FROM {SCOPE})"""


def _manifest_counts(facts: RunFacts) -> str:
    c = facts.counts
    per_status = ", ".join(f"count(*) FILTER (WHERE status = {lit(s)}) AS {s}" for s in VIDEO_STATUSES)
    manifest = ", ".join(f"{int(c[k])} AS manifest_{k}" for k in ("matched", *VIDEO_STATUSES))
    status_sum = " + ".join(str(int(c[s])) for s in VIDEO_STATUSES)
    exact = " OR ".join(f"{s} <> {int(c[s])}" for s in VIDEO_STATUSES)
    at_least = " OR ".join(f"{s} < {int(c[s])}" for s in VIDEO_STATUSES)
    written = c.get("rows_written", c.get("processed"))          # rows this run wrote, processed or relabelled
    processed = f"OR processed <> {int(written)}" if written is not None else ""
    return f"""
        SELECT *, {manifest} FROM (
          SELECT count(*) AS video_rows, {per_status},
                 count(*) FILTER (WHERE run_id = {lit(facts.run_id)}) AS processed FROM {{batch}}) AS counted
        WHERE {status_sum} <> {int(c['matched'])} OR video_rows < {int(c['matched'])} OR {at_least}
           OR (video_rows = {int(c['matched'])} AND ({exact})) {processed}"""


def video_expectations(facts: RunFacts, settings: ValidationConfig) -> list:
    columns = video_columns(facts.labels, facts.broad_labels)
    names = {c.name for c in columns}
    missing = set(VIDEO_LABEL_COLUMNS + VIDEO_BROAD_LABEL_COLUMNS + ("status", "fallback")) - names
    if missing:                         # the rules below name these; fail loudly if the schema drops one
        raise ValueError(f"video schema lost the columns {sorted(missing)} that validation checks")
    t = VIDEOS
    exps = [columns_match(t, video_schema(facts.labels, facts.broad_labels), exact=False)]
    exps += not_null(t, [c for c in columns if not c.nullable])
    exps.append(gxe.ExpectColumnValuesToBeUnique(column=PARTITION_COLUMN, meta=meta(t, PARTITION_COLUMN, "unique")))
    exps.append(in_set(t, "status", VIDEO_STATUSES, "VIDEO_STATUSES"))
    exps.append(in_set(t, "fallback", FALLBACKS, "FALLBACKS"))
    exps += [in_set(t, c, facts.labels, "the run's labels") for c in VIDEO_LABEL_COLUMNS]
    exps += [in_set(t, c, facts.broad_labels, "the run's broad labels") for c in VIDEO_BROAD_LABEL_COLUMNS]
    exps += [between(t, c, 0, 1) for c in ("face_coverage", "threshold", *(frac_column(l) for l in facts.labels))]
    exps += [between(t, c.name, 0) for c in columns      # counts (frame_count_header is the container's claim)
             if pa.types.is_integer(c.type) and c.name.startswith(("frames_", "count_", "threshold_"))]
    exps.append(rows_rule(t, "frames_decoded, frames_sampled, frames_with_face",
                      "frames_with_face <= frames_sampled <= frames_decoded", """
        SELECT video_id, frames_decoded, frames_sampled, frames_with_face FROM {batch}
        WHERE frames_with_face > frames_sampled OR frames_sampled > frames_decoded"""))
    exps.append(rows_rule(t, "face_coverage", "equals frames_with_face / frames_sampled (null without sampled frames)", """
        SELECT video_id, face_coverage, frames_with_face, frames_sampled FROM {batch}
        WHERE (frames_sampled > 0 AND (face_coverage IS NULL
                                       OR abs(face_coverage - frames_with_face / frames_sampled) > 1e-9))
           OR (frames_sampled = 0 AND face_coverage IS NOT NULL)"""))
    exps.append(rows_rule(t, "frames_sampled", "equals the video's frame rows with face_index null or 0",
                      _frame_counts("v.frames_sampled, coalesce(f.frame_rows, 0) AS frame_rows",
                                    "v.frames_sampled IS DISTINCT FROM coalesce(f.frame_rows, 0)")))
    exps.append(rows_rule(t, "frames_with_face", "equals the video's frame rows with face_found and face_index 0",
                      _frame_counts("v.frames_with_face, coalesce(f.face_rows, 0) AS face_rows",
                                    "v.frames_with_face IS DISTINCT FROM coalesce(f.face_rows, 0)")))
    counts = ", ".join(f"count(*) FILTER (WHERE emotion_label = {lit(l)}) AS n{i}" for i, l in enumerate(facts.labels))
    differs = " OR ".join(f"v.{ident(count_column(l))} IS DISTINCT FROM coalesce(f.n{i}, 0)"
                          for i, l in enumerate(facts.labels))
    pairs = ", ".join(f"v.{ident(count_column(l))}, coalesce(f.n{i}, 0) AS {ident('frame_rows_' + l)}"
                      for i, l in enumerate(facts.labels))
    exps.append(rows_rule(t, "count_*", "each count_<label> equals the video's face-0 frame rows with that emotion_label", f"""
        SELECT v.video_id, {pairs} FROM {{batch}} AS v LEFT JOIN (
          SELECT video_id, {counts} FROM {FRAMES} WHERE face_index = 0 GROUP BY video_id) AS f
        ON v.video_id = f.video_id WHERE ({differs}) AND v.video_id IN (SELECT video_id FROM {SCOPE})"""))
    exps.append(rows_rule(t, "status", "failed exactly when error is set; ok has faces, no_face has none", """
        SELECT video_id, status, frames_with_face, error FROM {batch}
        WHERE (status = 'failed') <> (error IS NOT NULL)
           OR (status = 'ok' AND frames_with_face = 0) OR (status = 'no_face' AND frames_with_face > 0)"""))
    exps.append(rows_rule(t, "status", "failed exactly when the video has dead letters", f"""
        SELECT v.video_id, v.status, coalesce(d.dead_letters, 0) AS dead_letters FROM {{batch}} AS v LEFT JOIN (
          SELECT video_id, count(*) AS dead_letters FROM {DEAD_LETTERS} GROUP BY video_id) AS d
        ON v.video_id = d.video_id
        WHERE (v.status = 'failed') <> (coalesce(d.dead_letters, 0) > 0) AND v.video_id IN (SELECT video_id FROM {SCOPE})"""))
    exps.append(rows_rule(t, "status", "run_manifest.json counts reconcile: matched = ok + no_face + failed = the table's",
                      _manifest_counts(facts)))
    exps += label_expectations(facts)
    exps += _limits(settings)
    return exps


def _limits(settings: ValidationConfig) -> list:
    exps = []
    for value, severity, key in ((settings.min_face_coverage_warn, WARNING, "min_face_coverage_warn"),
                                 (settings.min_face_coverage_fail, CRITICAL, "min_face_coverage_fail")):
        if value is not None:
            exps.append(between(VIDEOS, "face_coverage", value, severity=severity,
                                 rule=f"per-video face coverage >= {value:g} (validation.{key})"))
    for value, severity, key in ((settings.max_failed_share_warn, WARNING, "max_failed_share_warn"),
                                 (settings.max_failed_share_fail, CRITICAL, "max_failed_share_fail")):
        if value is not None:
            exps.append(gxe.ExpectColumnValuesToNotBeInSet(
                column="status", value_set=["failed"], mostly=round(1.0 - value, 12), severity=severity,
                meta=meta(VIDEOS, "status", f"share of failed videos <= {value:g} (validation.{key})")))
    return exps


def dead_letter_expectations() -> list:
    schema = dead_letter_schema()
    t = DEAD_LETTERS
    exps = [columns_match(t, schema, exact=True)]
    exps += [gxe.ExpectColumnValuesToNotBeNull(column=f.name, meta=meta(t, f.name, "not null"))
             for f in schema if not f.nullable]
    exps.append(rows_rule(t, PARTITION_COLUMN, "belongs to a video whose status is failed", f"""
        SELECT video_id, stage, error_type FROM {{batch}}
        WHERE video_id NOT IN (SELECT video_id FROM {VIDEOS} WHERE status = 'failed' AND video_id IS NOT NULL)"""))
    exps.append(in_set(t, "stage", DEAD_LETTER_STAGES, "the pipeline's stages"))
    return exps
