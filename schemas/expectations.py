"""Validation suites for the output tables, derived from `schemas.tables`.

Every rule is a Great Expectations (1.x) Expectation. Its ``meta`` says which table, column
and rule it checks (the report and the command line quote these), its ``severity`` is
``critical`` (the output is invalid) or ``warning`` (reported, the output stays valid).
`pipelines.validate` runs the suites as SQL over the Parquet files; the SQL rules name the
tables as the DuckDB views it creates (``frames``, ``videos``, ``dead_letters``) plus a
small table of the columns stored in every Parquet file (``parquet_columns``).

Nothing here lists columns a second time; what follows from the schema:

* column sets: frames and dead letters exactly, videos at least (manifest columns may follow);
* every file stores exactly the schema's columns with their Arrow types (``parquet_columns``);
* non-nullable columns are never null;
* in the frame table the nullable columns are the face columns (the schema says so: "False:
  no face in this frame; every face column is then null"): null exactly when ``face_found`` is
  false; the optional feature groups the run wrote (its config's ``features``) are null without
  a face;
* probabilities: one ``prob_<label>`` column per label of the run (its manifest's ``labels``),
  each in [0, 1], the row's sum 1 within ``probability_tolerance``;
* label vocabularies: the run's labels, broad labels, VIDEO_STATUSES and FALLBACKS.

Critical: schema, ranges, vocabularies, keys, frame-table/video-table/dead-letter and
manifest reconciliation. Configurable (warning or critical): per-video face coverage and the
share of failed videos (``ValidationConfig`` in pipelines.config).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

import great_expectations.expectations as gxe
import pyarrow as pa
from great_expectations.expectations.row_conditions import Column as Col

from schemas.external import face_rule_exemptions
from schemas.tables import (DEAD_LETTER_STAGES, EMBEDDING_COLUMN, FALLBACKS, N_LANDMARK_VALUES, PARTITION_COLUMN,
                            RESNET50_COLUMN, RESNET50_VALUES, VIDEO_STATUSES, count_column, dead_letter_schema,
                            feature_columns, file_schema, frac_column, frame_columns, frame_schema, prob_column, smooth_column,
                            video_columns, video_schema)

if TYPE_CHECKING:
    from pipelines.config import ValidationConfig

CRITICAL, WARNING = "critical", "warning"
FRAMES, VIDEOS, DEAD_LETTERS = "frames", "videos", "dead_letters"
TABLES = (FRAMES, VIDEOS, DEAD_LETTERS)
PARQUET_COLUMNS = "parquet_columns"     # table_name, file, column_name, arrow_type, expected_type: a row per stored column
MISSING = "missing"                     # arrow_type of an expected column a file does not have
# Columns whose values are a label of the run's model (labels) or of the broad map (broad labels).
VIDEO_LABEL_COLUMNS = ("top1_label", "threshold_label", "threshold_candidate")
VIDEO_BROAD_LABEL_COLUMNS = ("broad_top1_label", "broad_threshold_label")


@dataclass(frozen=True)
class RunFacts:
    """What the run manifest says about the output: label sets, feature groups, counts."""
    run_id: str
    labels: tuple[str, ...]
    broad_labels: tuple[str, ...]
    counts: Mapping[str, int]          # matched, processed, ok, no_face, failed (run_manifest.json)
    feature_groups: tuple[str, ...] = ()   # optional frame-table column groups the run wrote

    def schemas(self) -> dict[str, pa.Schema]:
        """The logical schema of each table (partition column included)."""
        return {FRAMES: frame_schema(self.labels, self.feature_groups),
                VIDEOS: video_schema(self.labels, self.broad_labels), DEAD_LETTERS: dead_letter_schema()}


@dataclass(frozen=True)
class Suite:
    """One GX suite: the asset (DuckDB view or table) it runs on and the columns that identify a row."""
    name: str
    asset: str
    index_columns: tuple[str, ...]
    expectations: list


def meta(table: str, column: str, rule: str) -> dict:
    return {"table": table, "column": column, "rule": rule}


def _ident(name: str) -> str:
    """A quoted SQL identifier, braces doubled for the str.format GX applies to SQL rules."""
    return '"' + name.replace('"', '""').replace("{", "{{").replace("}", "}}") + '"'


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''").replace("{", "{{").replace("}", "}}") + "'"


def _rows(table: str, column: str, rule: str, query: str, severity: str = CRITICAL):
    """A rule written as SQL returning the offending rows; ``{batch}`` is the table under test."""
    return gxe.UnexpectedRowsExpectation(unexpected_rows_query=" ".join(query.split()),
                                         description=f"{table}.{column}: {rule}",
                                         meta=meta(table, column, rule), severity=severity)


def _not_null(table: str, columns, condition=None, when: str = "") -> list:
    return [gxe.ExpectColumnValuesToNotBeNull(column=c.name, row_condition=condition,
                                              meta=meta(table, c.name, "not null" + when)) for c in columns]


def _in_set(table: str, column: str, values: Sequence[str], what: str):
    return gxe.ExpectColumnValuesToBeInSet(column=column, value_set=list(values),
                                           meta=meta(table, column, f"in {what} {{{', '.join(values)}}}"))


def _between(table: str, column: str, low=None, high=None, severity: str = CRITICAL, rule: Optional[str] = None):
    if rule is None:
        rule = (f"in [{low}, {high}]" if low is not None and high is not None
                else f">= {low}" if low is not None else f"<= {high}")
    return gxe.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high, severity=severity,
                                             meta=meta(table, column, rule))


def _columns_match(table: str, schema: pa.Schema, exact: bool):
    rule = "columns are exactly the schema's" if exact else "has every schema column (manifest columns may follow)"
    return gxe.ExpectTableColumnsToMatchSet(column_set=list(schema.names), exact_match=exact,
                                            meta=meta(table, "*", rule))


def _vector_rules(table: str, groups: Sequence[str]) -> list:
    """List-valued feature columns: every vector of a column has the column's one length
    (landmarks 468 x 3, ResNet50 2048, the embedding whatever its model gives); ResNet50's
    pooled ReLU features are >= 0."""
    exps = []
    fixed = {"landmarks": ("landmarks", N_LANDMARK_VALUES), "landmarks_norm": ("landmarks", N_LANDMARK_VALUES),
             RESNET50_COLUMN: ("resnet50", RESNET50_VALUES)}
    for column, (group, length) in fixed.items():
        if group in groups:
            exps.append(_rows(table, column, f"every vector has {length} values", f"""
                SELECT video_id, frame_index, face_index, len({_ident(column)}) AS vector_length FROM {{batch}}
                WHERE {_ident(column)} IS NOT NULL AND len({_ident(column)}) <> {length}"""))
    if "embedding" in groups:
        exps.append(_rows(table, EMBEDDING_COLUMN, "every vector has the same length", f"""
            SELECT video_id, frame_index, face_index, len({_ident(EMBEDDING_COLUMN)}) AS vector_length FROM {{batch}}
            WHERE len({_ident(EMBEDDING_COLUMN)}) <> (SELECT min(len({_ident(EMBEDDING_COLUMN)})) FROM {{batch}})"""))
    if "resnet50" in groups:
        exps.append(_rows(table, RESNET50_COLUMN, "pooled ReLU features are >= 0", f"""
            SELECT video_id, frame_index, face_index, list_min({_ident(RESNET50_COLUMN)}) AS smallest FROM {{batch}}
            WHERE list_min({_ident(RESNET50_COLUMN)}) < 0"""))
    return exps


# --- frames --------------------------------------------------------------------------------

def frame_expectations(facts: RunFacts, settings: "ValidationConfig") -> list:
    columns = frame_columns(facts.labels)
    face_columns = [c for c in columns if c.nullable]
    features = feature_columns(facts.feature_groups, facts.labels)   # null without a face; present with one is not promised
    per_frame, unpromised = face_rule_exemptions(facts.feature_groups)  # ingested tools' exceptions (schemas.external)
    probs = [prob_column(l) for l in facts.labels]
    prob_sum = " + ".join(_ident(p) for p in probs)
    eps = settings.box_tolerance_px
    tol = settings.probability_tolerance
    t = FRAMES
    exps = [_columns_match(t, facts.schemas()[FRAMES], exact=True)]
    exps += _not_null(t, [c for c in columns if not c.nullable])
    exps += [gxe.ExpectColumnValuesToBeNull(column=c.name, row_condition=Col("face_found") == False,  # noqa: E712
                                            meta=meta(t, c.name, "null when face_found is false"))
             for c in face_columns + features if c.name not in per_frame]
    exps += _not_null(t, [c for c in face_columns if c.name not in unpromised], Col("face_found") == True,  # noqa: E712
                      " when face_found is true")
    exps += [_between(t, c, 0, 1) for c in (*probs, "emotion_confidence", "detector_score")]
    exps += [_between(t, "frame_index", 0), _between(t, "face_index", 0), _between(t, "faces_in_frame", 0),
             _between(t, "frame_width", 1), _between(t, "frame_height", 1)]
    exps.append(_in_set(t, "emotion_label", facts.labels, "the run's labels"))
    exps.append(_rows(t, "prob_*", f"probabilities of a row with a face sum to 1 (within {tol:g})", f"""
        SELECT video_id, frame_index, face_index, {prob_sum} AS probability_sum FROM {{batch}}
        WHERE face_found AND abs({prob_sum} - 1) > {tol!r}"""))
    if "smoothing" in facts.feature_groups:     # convex combinations of probability rows: still sum to 1
        smooth_sum = " + ".join(_ident(smooth_column(l)) for l in facts.labels)
        exps.append(_rows(t, "smooth_*", f"smoothed probabilities of a primary face sum to 1 (within {tol:g})", f"""
            SELECT video_id, frame_index, {smooth_sum} AS smoothed_sum FROM {{batch}}
            WHERE face_found AND face_index = 0 AND (abs({smooth_sum} - 1) > {tol!r} OR {smooth_sum} IS NULL)
              AND video_id NOT IN (SELECT video_id FROM {VIDEOS} WHERE status = 'failed')"""))
    series = feature_columns([g for g in ("baseline", "smoothing") if g in facts.feature_groups], facts.labels)
    exps += [gxe.ExpectColumnValuesToBeNull(column=c.name, row_condition=Col("face_index") > 0,
                                            meta=meta(t, c.name, "null for further faces (face_index > 0): "
                                                      "a series follows the primary face"))
             for c in series]
    exps += _vector_rules(t, facts.feature_groups)
    exps.append(_rows(t, "(video_id, frame_index, face_index)",
                      "unique key; a faceless frame (face_index null) counts as face 0", """
        SELECT video_id, frame_index, coalesce(face_index, 0) AS face_key, count(*) AS row_count FROM {batch}
        GROUP BY video_id, frame_index, coalesce(face_index, 0) HAVING count(*) > 1"""))
    # One global ORDER BY rather than PARTITION BY video_id: DuckDB sorts out of core, while a
    # window partitioned by each of thousands of videos ran out of a 256 MB memory_limit.
    exps.append(_rows(t, "timestamp_s", "increases with frame_index within a video", """
        SELECT video_id, frame_index, timestamp_s, previous_frame_index, previous_timestamp_s FROM (
          SELECT video_id, frame_index, timestamp_s, lag(video_id) OVER w AS previous_video_id,
                 lag(frame_index) OVER w AS previous_frame_index, lag(timestamp_s) OVER w AS previous_timestamp_s
          FROM {batch} WHERE coalesce(face_index, 0) = 0
          WINDOW w AS (ORDER BY video_id, frame_index)) AS ordered
        WHERE video_id = previous_video_id AND timestamp_s <= previous_timestamp_s"""))
    for pos, size, extent in (("box_x", "box_w", "frame_width"), ("box_y", "box_h", "frame_height")):
        exps.append(_rows(t, f"{pos}, {size}", f"box inside the frame: {pos} >= 0 and {pos} + {size} <= {extent} + {eps:g}", f"""
            SELECT video_id, frame_index, face_index, {pos}, {size}, {extent} FROM {{batch}}
            WHERE {pos} < 0 OR {size} < 0 OR {pos} + {size} > {extent} + {eps!r}"""))
    exps.append(_rows(t, PARTITION_COLUMN, "every video with frame rows has a video row", f"""
        SELECT DISTINCT video_id FROM {{batch}}
        WHERE video_id NOT IN (SELECT video_id FROM {VIDEOS} WHERE video_id IS NOT NULL)"""))
    return exps


# --- videos --------------------------------------------------------------------------------

def _frame_counts(select: str, where: str) -> str:
    return f"""
        SELECT v.video_id, {select} FROM {{batch}} AS v LEFT JOIN (
          SELECT video_id,
                 count(*) FILTER (WHERE coalesce(face_index, 0) = 0) AS frame_rows,
                 count(*) FILTER (WHERE face_found AND face_index = 0) AS face_rows
          FROM {FRAMES} GROUP BY video_id) AS f ON v.video_id = f.video_id
        WHERE {where}"""


def _manifest_counts(facts: RunFacts) -> str:
    c = facts.counts
    per_status = ", ".join(f"count(*) FILTER (WHERE status = {_lit(s)}) AS {s}" for s in VIDEO_STATUSES)
    manifest = ", ".join(f"{int(c[k])} AS manifest_{k}" for k in ("matched", *VIDEO_STATUSES))
    status_sum = " + ".join(str(int(c[s])) for s in VIDEO_STATUSES)
    exact = " OR ".join(f"{s} <> {int(c[s])}" for s in VIDEO_STATUSES)
    at_least = " OR ".join(f"{s} < {int(c[s])}" for s in VIDEO_STATUSES)
    processed = (f"OR processed <> {int(c['processed'])}" if "processed" in c else "")
    return f"""
        SELECT *, {manifest} FROM (
          SELECT count(*) AS video_rows, {per_status},
                 count(*) FILTER (WHERE run_id = {_lit(facts.run_id)}) AS processed FROM {{batch}}) AS counted
        WHERE {status_sum} <> {int(c['matched'])} OR video_rows < {int(c['matched'])} OR {at_least}
           OR (video_rows = {int(c['matched'])} AND ({exact})) {processed}"""


def video_expectations(facts: RunFacts, settings: "ValidationConfig") -> list:
    columns = video_columns(facts.labels, facts.broad_labels)
    names = {c.name for c in columns}
    missing = set(VIDEO_LABEL_COLUMNS + VIDEO_BROAD_LABEL_COLUMNS + ("status", "fallback")) - names
    if missing:                         # the rules below name these; fail loudly if the schema drops one
        raise ValueError(f"video schema lost the columns {sorted(missing)} that validation checks")
    t = VIDEOS
    exps = [_columns_match(t, video_schema(facts.labels, facts.broad_labels), exact=False)]
    exps += _not_null(t, [c for c in columns if not c.nullable])
    exps.append(gxe.ExpectColumnValuesToBeUnique(column=PARTITION_COLUMN, meta=meta(t, PARTITION_COLUMN, "unique")))
    exps.append(_in_set(t, "status", VIDEO_STATUSES, "VIDEO_STATUSES"))
    exps.append(_in_set(t, "fallback", FALLBACKS, "FALLBACKS"))
    exps += [_in_set(t, c, facts.labels, "the run's labels") for c in VIDEO_LABEL_COLUMNS]
    exps += [_in_set(t, c, facts.broad_labels, "the run's broad labels") for c in VIDEO_BROAD_LABEL_COLUMNS]
    exps += [_between(t, c, 0, 1) for c in ("face_coverage", "threshold", *(frac_column(l) for l in facts.labels))]
    exps += [_between(t, c.name, 0) for c in columns      # counts (frame_count_header is the container's claim)
             if pa.types.is_integer(c.type) and c.name.startswith(("frames_", "count_", "threshold_"))]
    exps.append(_rows(t, "frames_decoded, frames_sampled, frames_with_face",
                      "frames_with_face <= frames_sampled <= frames_decoded", """
        SELECT video_id, frames_decoded, frames_sampled, frames_with_face FROM {batch}
        WHERE frames_with_face > frames_sampled OR frames_sampled > frames_decoded"""))
    exps.append(_rows(t, "face_coverage", "equals frames_with_face / frames_sampled (null without sampled frames)", """
        SELECT video_id, face_coverage, frames_with_face, frames_sampled FROM {batch}
        WHERE (frames_sampled > 0 AND (face_coverage IS NULL
                                       OR abs(face_coverage - frames_with_face / frames_sampled) > 1e-9))
           OR (frames_sampled = 0 AND face_coverage IS NOT NULL)"""))
    exps.append(_rows(t, "frames_sampled", "equals the video's frame rows with face_index null or 0",
                      _frame_counts("v.frames_sampled, coalesce(f.frame_rows, 0) AS frame_rows",
                                    "v.frames_sampled IS DISTINCT FROM coalesce(f.frame_rows, 0)")))
    exps.append(_rows(t, "frames_with_face", "equals the video's frame rows with face_found and face_index 0",
                      _frame_counts("v.frames_with_face, coalesce(f.face_rows, 0) AS face_rows",
                                    "v.frames_with_face IS DISTINCT FROM coalesce(f.face_rows, 0)")))
    counts = ", ".join(f"count(*) FILTER (WHERE emotion_label = {_lit(l)}) AS n{i}" for i, l in enumerate(facts.labels))
    differs = " OR ".join(f"v.{_ident(count_column(l))} IS DISTINCT FROM coalesce(f.n{i}, 0)"
                          for i, l in enumerate(facts.labels))
    pairs = ", ".join(f"v.{_ident(count_column(l))}, coalesce(f.n{i}, 0) AS {_ident('frame_rows_' + l)}"
                      for i, l in enumerate(facts.labels))
    exps.append(_rows(t, "count_*", "each count_<label> equals the video's face-0 frame rows with that emotion_label", f"""
        SELECT v.video_id, {pairs} FROM {{batch}} AS v LEFT JOIN (
          SELECT video_id, {counts} FROM {FRAMES} WHERE face_index = 0 GROUP BY video_id) AS f
        ON v.video_id = f.video_id WHERE {differs}"""))
    exps.append(_rows(t, "status", "failed exactly when error is set; ok has faces, no_face has none", """
        SELECT video_id, status, frames_with_face, error FROM {batch}
        WHERE (status = 'failed') <> (error IS NOT NULL)
           OR (status = 'ok' AND frames_with_face = 0) OR (status = 'no_face' AND frames_with_face > 0)"""))
    exps.append(_rows(t, "status", "failed exactly when the video has dead letters", f"""
        SELECT v.video_id, v.status, coalesce(d.dead_letters, 0) AS dead_letters FROM {{batch}} AS v LEFT JOIN (
          SELECT video_id, count(*) AS dead_letters FROM {DEAD_LETTERS} GROUP BY video_id) AS d
        ON v.video_id = d.video_id
        WHERE (v.status = 'failed') <> (coalesce(d.dead_letters, 0) > 0)"""))
    exps.append(_rows(t, "status", "run_manifest.json counts reconcile: matched = ok + no_face + failed = the table's",
                      _manifest_counts(facts)))
    exps += _limits(settings)
    return exps


def _limits(settings: "ValidationConfig") -> list:
    exps = []
    for value, severity, key in ((settings.min_face_coverage_warn, WARNING, "min_face_coverage_warn"),
                                 (settings.min_face_coverage_fail, CRITICAL, "min_face_coverage_fail")):
        if value is not None:
            exps.append(_between(VIDEOS, "face_coverage", value, severity=severity,
                                 rule=f"per-video face coverage >= {value:g} (validation.{key})"))
    for value, severity, key in ((settings.max_failed_share_warn, WARNING, "max_failed_share_warn"),
                                 (settings.max_failed_share_fail, CRITICAL, "max_failed_share_fail")):
        if value is not None:
            exps.append(gxe.ExpectColumnValuesToNotBeInSet(
                column="status", value_set=["failed"], mostly=round(1.0 - value, 12), severity=severity,
                meta=meta(VIDEOS, "status", f"share of failed videos <= {value:g} (validation.{key})")))
    return exps


# --- dead letters --------------------------------------------------------------------------

def dead_letter_expectations() -> list:
    schema = dead_letter_schema()
    t = DEAD_LETTERS
    exps = [_columns_match(t, schema, exact=True)]
    exps += [gxe.ExpectColumnValuesToNotBeNull(column=f.name, meta=meta(t, f.name, "not null"))
             for f in schema if not f.nullable]
    exps.append(_rows(t, PARTITION_COLUMN, "belongs to a video whose status is failed", f"""
        SELECT video_id, stage, error_type FROM {{batch}}
        WHERE video_id NOT IN (SELECT video_id FROM {VIDEOS} WHERE status = 'failed' AND video_id IS NOT NULL)"""))
    exps.append(_in_set(t, "stage", DEAD_LETTER_STAGES, "the pipeline's stages"))
    return exps


# --- stored columns, file by file ---------------------------------------------------------

NOT_STORED = "(not stored)"             # expected_type of a column no file may store


def type_name(t: pa.DataType) -> str:
    """An Arrow type as text, without list child-field names (Parquet renames ``item`` to ``element``)."""
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        kind = str(t).split("<", 1)[0]
        size = f", {t.list_size}" if pa.types.is_fixed_size_list(t) else ""
        return f"{kind}<{type_name(t.value_type)}{size}>"
    return str(t)


def stored_column_rows(table: str, schema: pa.Schema, file: str, stored: Optional[pa.Schema],
                       error: Optional[str] = None) -> list[tuple[str, str, str, str, str]]:
    """Rows of PARQUET_COLUMNS for one file: (table_name, file, column_name, arrow_type, expected_type).

    ``stored`` is the file's footer schema (None when unreadable, ``error`` says why). A schema
    column the file lacks has arrow_type 'missing'; a column outside the schema is expected
    '(not stored)', except the manifest columns the video table carries through (accepted as
    they are); the partition column is never stored (it lives in the folder name).
    """
    expected = {f.name: type_name(f.type) for f in file_schema(schema)}
    if stored is None:
        return [(table, file, name, f"unreadable: {error}", t) for name, t in expected.items()]
    rows = []
    for f in stored:
        actual = type_name(f.type)
        if f.name in expected:
            want = expected[f.name]
        elif table == VIDEOS and f.name != PARTITION_COLUMN:
            want = actual
        else:
            want = NOT_STORED
        rows.append((table, file, f.name, actual, want))
    rows += [(table, file, name, MISSING, t) for name, t in expected.items() if name not in stored.names]
    return rows


def parquet_column_expectations(tables: Sequence[str]) -> list:
    """Per table: every file stores each schema column with the schema's Arrow type, and
    nothing else (see `stored_column_rows`); the offending rows name file and column."""
    return [gxe.ExpectColumnPairValuesToBeEqual(
        column_A="arrow_type", column_B="expected_type", row_condition=Col("table_name") == table,
        meta=meta(table, "(stored columns)", "files store exactly the schema's columns and Arrow types "
                                             "(video_id only in the folder name)"))
        for table in tables]


def suites(facts: RunFacts, settings: "ValidationConfig") -> list[Suite]:
    """The four suites pipelines.validate runs, in reporting order."""
    return [
        Suite(PARQUET_COLUMNS, PARQUET_COLUMNS, ("file", "column_name"), parquet_column_expectations(TABLES)),
        Suite(FRAMES, FRAMES, (PARTITION_COLUMN, "frame_index", "face_index"), frame_expectations(facts, settings)),
        Suite(VIDEOS, VIDEOS, (PARTITION_COLUMN,), video_expectations(facts, settings)),
        Suite(DEAD_LETTERS, DEAD_LETTERS, (PARTITION_COLUMN, "stage"), dead_letter_expectations()),
    ]
