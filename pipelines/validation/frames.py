"""The frame table's suite: schema, face rules, probabilities, keys, order, boxes, vectors.

What follows from schemas.frames: the column set exactly; non-nullable columns never null;
the nullable core columns are the face columns (null exactly when ``face_found`` is false);
the optional feature groups the run wrote are null without a face; one ``prob_<label>`` per
label of the run, each in [0, 1], a row's sum 1 within ``probability_tolerance``.
"""
from __future__ import annotations

from typing import Sequence

import great_expectations.expectations as gxe
from great_expectations.expectations.row_conditions import Column as Col

from core.settings import ValidationConfig
from pipelines.validation.rules import (FRAMES, VIDEOS, RunFacts, between, columns_match, ident, in_set,
                                        not_null, rows_rule, meta)
from schemas.columns import PARTITION_COLUMN, prob_column, smooth_column
from schemas.external import face_rule_exemptions
from schemas.features import EMBEDDING_COLUMN, RESNET50_COLUMN, RESNET50_VALUES, feature_columns, landmark_values
from schemas.frames import frame_columns


def _vector_rules(table: str, groups: Sequence[str]) -> list:
    """List-valued feature columns: every vector of a column has the column's one length
    (landmarks 468 x 3, ResNet50 2048, the embedding whatever its model gives); ResNet50's
    pooled ReLU features are >= 0."""
    exps = []
    points = landmark_values(groups)
    fixed = {"landmarks": ("landmarks", points), "landmarks_norm": ("landmarks", points),
             RESNET50_COLUMN: ("resnet50", RESNET50_VALUES)}
    for column, (group, length) in fixed.items():
        if group in groups:
            exps.append(rows_rule(table, column, f"every vector has {length} values", f"""
                SELECT video_id, frame_index, face_index, len({ident(column)}) AS vector_length FROM {{batch}}
                WHERE {ident(column)} IS NOT NULL AND len({ident(column)}) <> {length}"""))
    if "embedding" in groups:
        exps.append(rows_rule(table, EMBEDDING_COLUMN, "every vector has the same length", f"""
            SELECT video_id, frame_index, face_index, len({ident(EMBEDDING_COLUMN)}) AS vector_length FROM {{batch}}
            WHERE len({ident(EMBEDDING_COLUMN)}) <> (SELECT min(len({ident(EMBEDDING_COLUMN)})) FROM {{batch}})"""))
    if "resnet50" in groups:
        exps.append(rows_rule(table, RESNET50_COLUMN, "pooled ReLU features are >= 0", f"""
            SELECT video_id, frame_index, face_index, list_min({ident(RESNET50_COLUMN)}) AS smallest FROM {{batch}}
            WHERE list_min({ident(RESNET50_COLUMN)}) < 0"""))
    return exps


def frame_expectations(facts: RunFacts, settings: ValidationConfig) -> list:
    columns = frame_columns(facts.labels)
    face_columns = [c for c in columns if c.nullable]
    features = feature_columns(facts.feature_groups, facts.labels)   # null without a face; present with one is not promised
    per_frame, unpromised = face_rule_exemptions(facts.feature_groups)  # ingested tools' exceptions (schemas.external)
    probs = [prob_column(l) for l in facts.labels]
    prob_sum = " + ".join(ident(p) for p in probs)
    eps = settings.box_tolerance_px
    tol = settings.probability_tolerance
    t = FRAMES
    exps = [columns_match(t, facts.schemas()[FRAMES], exact=True)]
    exps += not_null(t, [c for c in columns if not c.nullable])
    exps += [gxe.ExpectColumnValuesToBeNull(column=c.name, row_condition=Col("face_found") == False,  # noqa: E712
                                            meta=meta(t, c.name, "null when face_found is false"))
             for c in face_columns + features if c.name not in per_frame]
    exps += not_null(t, [c for c in face_columns if c.name not in unpromised], Col("face_found") == True,  # noqa: E712
                      " when face_found is true")
    exps += [between(t, c, 0, 1) for c in (*probs, "emotion_confidence", "detector_score")]
    exps += [between(t, "frame_index", 0), between(t, "face_index", 0), between(t, "faces_in_frame", 0),
             between(t, "frame_width", 1), between(t, "frame_height", 1)]
    exps.append(in_set(t, "emotion_label", facts.labels, "the run's labels"))
    exps.append(rows_rule(t, "prob_*", f"probabilities of a row with a face sum to 1 (within {tol:g})", f"""
        SELECT video_id, frame_index, face_index, {prob_sum} AS probability_sum FROM {{batch}}
        WHERE face_found AND abs({prob_sum} - 1) > {tol!r}"""))
    if "smoothing" in facts.feature_groups:     # convex combinations of probability rows: still sum to 1
        smooth_sum = " + ".join(ident(smooth_column(l)) for l in facts.labels)
        exps.append(rows_rule(t, "smooth_*", f"smoothed probabilities of a primary face sum to 1 (within {tol:g})", f"""
            SELECT video_id, frame_index, {smooth_sum} AS smoothed_sum FROM {{batch}}
            WHERE face_found AND face_index = 0 AND (abs({smooth_sum} - 1) > {tol!r} OR {smooth_sum} IS NULL)
              AND video_id NOT IN (SELECT video_id FROM {VIDEOS} WHERE status = 'failed')"""))
    series = feature_columns([g for g in ("baseline", "smoothing") if g in facts.feature_groups], facts.labels)
    exps += [gxe.ExpectColumnValuesToBeNull(column=c.name, row_condition=Col("face_index") > 0,
                                            meta=meta(t, c.name, "null for further faces (face_index > 0): "
                                                      "a series follows the primary face"))
             for c in series]
    exps += _vector_rules(t, facts.feature_groups)
    if "blendshapes" in facts.feature_groups:          # sigmoid scores, and AU means of them
        exps += [between(t, c.name, 0, 1) for c in feature_columns(["blendshapes"])]
    exps.append(rows_rule(t, "(video_id, frame_index, face_index)",
                      "unique key; a faceless frame (face_index null) counts as face 0", """
        SELECT video_id, frame_index, coalesce(face_index, 0) AS face_key, count(*) AS row_count FROM {batch}
        GROUP BY video_id, frame_index, coalesce(face_index, 0) HAVING count(*) > 1"""))
    # One global ORDER BY rather than PARTITION BY video_id: DuckDB sorts out of core, while a
    # window partitioned by each of thousands of videos ran out of a 256 MB memory_limit.
    exps.append(rows_rule(t, "timestamp_s", "increases with frame_index within a video", """
        SELECT video_id, frame_index, timestamp_s, previous_frame_index, previous_timestamp_s FROM (
          SELECT video_id, frame_index, timestamp_s, lag(video_id) OVER w AS previous_video_id,
                 lag(frame_index) OVER w AS previous_frame_index, lag(timestamp_s) OVER w AS previous_timestamp_s
          FROM {batch} WHERE coalesce(face_index, 0) = 0
          WINDOW w AS (ORDER BY video_id, frame_index)) AS ordered
        WHERE video_id = previous_video_id AND timestamp_s <= previous_timestamp_s"""))
    for pos, size, extent in (("box_x", "box_w", "frame_width"), ("box_y", "box_h", "frame_height")):
        exps.append(rows_rule(t, f"{pos}, {size}", f"box inside the frame: {pos} >= 0 and {pos} + {size} <= {extent} + {eps:g}", f"""
            SELECT video_id, frame_index, face_index, {pos}, {size}, {extent} FROM {{batch}}
            WHERE {pos} < 0 OR {size} < 0 OR {pos} + {size} > {extent} + {eps!r}"""))
    exps.append(rows_rule(t, PARTITION_COLUMN, "every video with frame rows has a video row", f"""
        SELECT DISTINCT video_id FROM {{batch}}
        WHERE video_id NOT IN (SELECT video_id FROM {VIDEOS} WHERE video_id IS NOT NULL)"""))
    return exps
