"""The building blocks of the validation suites: what the run manifest says, and one-line rule makers.

Every rule is a Great Expectations (1.x) Expectation whose ``meta`` says which table, column
and rule it checks (the report and the command line quote these) and whose ``severity`` is
``critical`` (the output is invalid) or ``warning`` (reported, the output stays valid). SQL
rules name the tables as the DuckDB views of the validation catalog (``frames``, ``videos``,
``dead_letters``) plus ``parquet_columns``, the columns stored in every Parquet file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import great_expectations.expectations as gxe
import pyarrow as pa

from schemas.frames import frame_schema
from schemas.videos import dead_letter_schema, video_schema

CRITICAL, WARNING = "critical", "warning"
FRAMES, VIDEOS, DEAD_LETTERS = "frames", "videos", "dead_letters"
# The videos whose frame and dead-letter files the catalog holds: all of them, or those a run changed.
SCOPE = "validated_videos"
TABLES = (FRAMES, VIDEOS, DEAD_LETTERS)
# Columns whose values are a label of the run's model (labels) or of the broad map (broad labels).
VIDEO_LABEL_COLUMNS = ("top1_label", "threshold_label", "threshold_candidate")
VIDEO_BROAD_LABEL_COLUMNS = ("broad_top1_label", "broad_threshold_label")


@dataclass(frozen=True)
class RunFacts:
    """What the run manifest says about the output: label sets, feature groups, counts, the
    aggregate settings the labels follow and the manifest columns the video table carries."""
    run_id: str
    labels: tuple[str, ...]
    broad_labels: tuple[str, ...]
    counts: Mapping[str, int]          # matched, processed, ok, no_face, failed (run_manifest.json)
    feature_groups: tuple[str, ...] = ()   # optional frame-table column groups the run wrote
    neutral_label: Optional[str] = None    # aggregate.neutral_label (None: an output older than the rule)
    broad_map: Optional[Mapping[str, str]] = None
    carried: Optional[tuple[pa.Field, ...]] = None   # None: not recorded (older output); types not checked

    def schemas(self) -> dict[str, pa.Schema]:
        """The logical schema of each table (partition column included)."""
        return {FRAMES: frame_schema(self.labels, self.feature_groups),
                VIDEOS: video_schema(self.labels, self.broad_labels, self.carried or ()),
                DEAD_LETTERS: dead_letter_schema()}


@dataclass(frozen=True)
class Suite:
    """One GX suite: the asset (DuckDB view or table) it runs on and the columns that identify a row."""
    name: str
    asset: str
    index_columns: tuple[str, ...]
    expectations: list


def meta(table: str, column: str, rule: str) -> dict:
    return {"table": table, "column": column, "rule": rule}


def ident(name: str) -> str:
    """A quoted SQL identifier, braces doubled for the str.format GX applies to SQL rules."""
    return '"' + name.replace('"', '""').replace("{", "{{").replace("}", "}}") + '"'


def lit(value: str) -> str:
    return "'" + value.replace("'", "''").replace("{", "{{").replace("}", "}}") + "'"


def rows_rule(table: str, column: str, rule: str, query: str, severity: str = CRITICAL):
    """A rule written as SQL returning the offending rows; ``{batch}`` is the table under test."""
    return gxe.UnexpectedRowsExpectation(unexpected_rows_query=" ".join(query.split()),
                                         description=f"{table}.{column}: {rule}",
                                         meta=meta(table, column, rule), severity=severity)


def not_null(table: str, columns, condition=None, when: str = "") -> list:
    return [gxe.ExpectColumnValuesToNotBeNull(column=c.name, row_condition=condition,
                                              meta=meta(table, c.name, "not null" + when)) for c in columns]


def in_set(table: str, column: str, values: Sequence[str], what: str):
    return gxe.ExpectColumnValuesToBeInSet(column=column, value_set=list(values),
                                           meta=meta(table, column, f"in {what} {{{', '.join(values)}}}"))


def between(table: str, column: str, low=None, high=None, severity: str = CRITICAL, rule: Optional[str] = None):
    if rule is None:
        rule = (f"in [{low}, {high}]" if low is not None and high is not None
                else f">= {low}" if low is not None else f"<= {high}")
    return gxe.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high, severity=severity,
                                             meta=meta(table, column, rule))


def columns_match(table: str, schema: pa.Schema, exact: bool):
    rule = "columns are exactly the schema's" if exact else "has every schema column (manifest columns may follow)"
    return gxe.ExpectTableColumnsToMatchSet(column_set=list(schema.names), exact_match=exact,
                                            meta=meta(table, "*", rule))
