"""Stored columns, file by file: every Parquet file stores exactly its table's columns with their
Arrow types (DuckDB reflects float and double alike, so the types are read from the footers)."""
from __future__ import annotations

from typing import Optional, Sequence

import great_expectations.expectations as gxe
import pyarrow as pa
from great_expectations.expectations.row_conditions import Column as Col

from pipelines.validation.rules import VIDEOS, meta
from schemas.columns import PARTITION_COLUMN, file_schema

PARQUET_COLUMNS = "parquet_columns"     # table_name, file, column_name, arrow_type, expected_type: a row per stored column
MISSING = "missing"                     # arrow_type of an expected column a file does not have
NOT_STORED = "(not stored)"             # expected_type of a column no file may store


def type_name(t: pa.DataType) -> str:
    """An Arrow type as text, without list child-field names (Parquet renames ``item`` to ``element``)."""
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        kind = str(t).split("<", 1)[0]
        size = f", {t.list_size}" if pa.types.is_fixed_size_list(t) else ""
        return f"{kind}<{type_name(t.value_type)}{size}>"
    return str(t)


def stored_column_rows(table: str, schema: pa.Schema, file: str, stored: Optional[pa.Schema],
                       error: Optional[str] = None, carried_known: bool = True) -> list[tuple[str, str, str, str, str]]:
    """Rows of PARQUET_COLUMNS for one file: (table_name, file, column_name, arrow_type, expected_type).

    ``stored`` is the file's footer schema (None when unreadable, ``error`` says why). A schema
    column the file lacks has arrow_type 'missing'; a column outside the schema is expected
    '(not stored)'; the partition column is never stored (it lives in the folder name). The
    video table's carried manifest columns are part of ``schema`` (one type in every file);
    for an output that did not record them (``carried_known`` False) extra video columns are
    accepted as they are.
    """
    expected = {f.name: type_name(f.type) for f in file_schema(schema)}
    if stored is None:
        return [(table, file, name, f"unreadable: {error}", t) for name, t in expected.items()]
    rows = []
    for f in stored:
        actual = type_name(f.type)
        if f.name in expected:
            want = expected[f.name]
        elif table == VIDEOS and f.name != PARTITION_COLUMN and not carried_known:
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
