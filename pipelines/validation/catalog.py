"""The validation catalog: DuckDB views over an output's Parquet files, and every file's stored columns."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Collection, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.output.layout import sql_literal, table_files
from pipelines.validation.rules import FRAMES, SCOPE, VIDEOS
from pipelines.validation.stored import PARQUET_COLUMNS, stored_column_rows
from schemas.columns import PARTITION_COLUMN


def create_empty_table(con, name: str, schema: pa.Schema) -> None:
    """A table ``name`` with ``schema``'s columns and no rows (a table with no files yet)."""
    con.register("empty_table", schema.empty_table())
    con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM empty_table')
    con.unregister("empty_table")


def create_parquet_columns(con, rows: list[tuple[str, str, str, str, str]]) -> None:
    """The ``parquet_columns`` table from `stored_column_rows` rows."""
    names = ("table_name", "file", "column_name", "arrow_type", "expected_type")
    con.register("stored_columns", pa.table({n: pa.array([r[i] for r in rows], pa.string())
                                             for i, n in enumerate(names)}))
    con.execute(f'CREATE TABLE "{PARQUET_COLUMNS}" AS SELECT * FROM stored_columns')


def build_catalog(output: Path, path: Path, schemas: dict[str, pa.Schema], carried_known: bool = True,
                  scope: Optional[Collection[str]] = None) -> None:
    """A DuckDB catalog at ``path``: one view per table over its readable Parquet files (an empty
    table of the schema when it has none), ``parquet_columns``, every file's stored columns, and
    ``validated_videos``, the videos whose frame and dead-letter files are in it.

    ``scope`` (video ids) limits the frame and dead-letter views, and their files' footers, to
    those videos: what an end-of-run validation reads after a run that wrote only them. The
    videos table is always whole (one row per video), so the whole-table rules still hold.

    A file whose footer cannot be read (truncated, not Parquet) is left out of its table's view,
    so every other rule still runs, and shows in ``parquet_columns`` as unreadable: the
    stored-columns rule fails on it (critical), naming the file.
    """
    import duckdb
    rows = []
    con = duckdb.connect(str(path))
    try:
        # One thread: reading a file per video into the tables with two threads cost 0.55 MB of peak
        # memory per file (110 MB for 200 videos) against 0.2 MB with one, and was no faster.
        con.execute("SET threads = 1")
        for table, schema in schemas.items():
            files, readable = table_files(output, table), []
            if scope is not None and table != VIDEOS:
                wanted = {f"{PARTITION_COLUMN}={v}" for v in scope}
                files = [f for f in files if Path(f).parent.name in wanted]
            for file in files:               # footers only: a few KB per file whatever the table size
                relative = os.path.relpath(file, output)
                try:
                    rows += stored_column_rows(table, schema, relative, pq.read_schema(file), None, carried_known)
                    readable.append(file)
                except Exception as exc:  # noqa: BLE001 - reported as a failed expectation, not raised
                    rows += stored_column_rows(table, schema, relative, None, f"{type(exc).__name__}: {exc}")
            if readable:
                glob_chars = set("*?[]{}") & set(str(output))
                partial = len(readable) < len(files) or (scope is not None and table != VIDEOS)
                source = ("[" + ", ".join(map(sql_literal, readable)) + "]" if glob_chars or partial
                          else sql_literal(os.path.join(str(output / table), f"{PARTITION_COLUMN}=*", "*.parquet")))
                # The video and dead-letter tables (a row or so per video, a file per video) are read once
                # into the catalog: the suites query them dozens of times, and reopening a file per video per
                # query was most of the validation time. Frames stay a view DuckDB streams within its memory
                # limit: copying them would make memory grow with the archive.
                kind = "VIEW" if table == FRAMES else "TABLE"
                con.execute(f'CREATE {kind} "{table}" AS SELECT * FROM read_parquet({source}, '
                            f"hive_partitioning = true, hive_types = {{'{PARTITION_COLUMN}': VARCHAR}}, "
                            "union_by_name = true)")
            else:
                create_empty_table(con, table, schema)
        create_parquet_columns(con, rows)
        if scope is None:
            con.execute(f"CREATE VIEW {SCOPE} AS SELECT DISTINCT {PARTITION_COLUMN} FROM {VIDEOS}")
        else:
            con.execute(f"CREATE TABLE {SCOPE} ({PARTITION_COLUMN} VARCHAR)")
            con.executemany(f"INSERT INTO {SCOPE} VALUES (?)", [[v] for v in sorted(scope)])
    finally:
        con.close()
