"""Column declarations shared by every table: the Column type, column-name rules and vocabularies.

This package is the single source of truth for the Parquet tables (writers, validation, docs
and tests derive from it) and imports nothing else of the project.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import pyarrow as pa

PARTITION_COLUMN = "video_id"
VIDEO_STATUSES = ("ok", "no_face", "failed")
FALLBACKS = ("neutral", "top1")
# Where a failure can happen (dead_letters.stage).
DEAD_LETTER_STAGES = ("probe", "decode", "detect", "landmarks", "emotion", "features", "write", "aggregate", "ingest")


@dataclass(frozen=True)
class Column:
    """One column: name, Arrow type, nullability and the description shown in the docs."""
    name: str
    type: pa.DataType
    nullable: bool
    description: str

    def field(self) -> pa.Field:
        return pa.field(self.name, self.type, nullable=self.nullable,
                        metadata={"description": self.description})


def schema_of(columns: Iterable[Column], table: str) -> pa.Schema:
    """The Arrow schema of ``columns``, tagged with the table's name."""
    return pa.schema([c.field() for c in columns], metadata={"affectflow.table": table})


def file_schema(schema: pa.Schema) -> pa.Schema:
    """The schema stored inside each Parquet file: the logical schema minus the partition column
    (Hive style: readers rebuild it from the folder name; storing it twice makes pyarrow refuse
    the dataset)."""
    return schema.remove(schema.get_field_index(PARTITION_COLUMN))


def prob_column(label: str) -> str:
    return f"prob_{label}"


def count_column(label: str) -> str:
    return f"count_{label}"


def frac_column(label: str) -> str:
    return f"frac_{label}"


def broad_count_column(label: str) -> str:
    return f"count_broad_{label}"


def smooth_column(label: str) -> str:
    return f"smooth_{label}"


def baseline_column(measure: str) -> str:
    return f"{measure}_rel"
