"""Running the suites in Great Expectations' SQL engine against DuckDB, and GX Data Docs offline.

Two adaptations make GX 1.24 work with duckdb-engine 0.17, both local to this module:

* duckdb-engine runs a cursor's statements on the DuckDB connection itself, so the ROLLBACK
  SQLAlchemy issues when GX closes a connection after a query discards the result GX then
  fetches (every metric came back empty). `_DuckDBExecutionEngine` keeps one connection
  open for the whole validation, as GX already does for SQLite, SQL Server and BigQuery.
* duckdb-engine reflects FLOAT and DOUBLE alike as SQLAlchemy FLOAT, so GX's type
  expectations could not tell float32 from float64; pipelines.validation.stored checks the
  Arrow types read from the files' footers instead.

Two passes keep it fast: every suite first runs with result_format BOOLEAN_ONLY (GX bundles
a table's column metrics into one aggregate query per row condition); only the expectations
that failed run again, with SUMMARY plus the row identifiers (map expectations) or COMPLETE
(SQL rules, at most 200 offending rows), and their results replace the first ones.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import warnings
from pathlib import Path
from typing import Sequence

from core.settings import ValidationConfig

SITE_NAME = "affectflow"
# Inlined into every Data Docs page by GX (plugins/custom_data_docs/styles): the status icons come
# from a CDN icon font, so offline (the usual case here) they would be blank.
OFFLINE_STYLES = """
.fas.fa-check-circle::before { content: "\\2714"; font-style: normal; }
.fas.fa-times::before, .fas.fa-times-circle::before { content: "\\2718"; font-style: normal; }
.text-success { color: #1e7e34; } .text-danger { color: #c82333; }
"""


def _duckdb_datasource(catalog: Path, scratch: Path, memory_limit: str):
    """A GX SQL datasource over the DuckDB catalog whose execution engine keeps its connection."""
    from great_expectations.datasource.fluent import SQLDatasource
    from great_expectations.execution_engine import SqlAlchemyExecutionEngine

    class _DuckDBExecutionEngine(SqlAlchemyExecutionEngine):
        """One persisted connection: duckdb-engine loses a query's result when SQLAlchemy rolls back
        the connection GX just closed, before GX fetches it (see the module docstring)."""

        @contextlib.contextmanager
        def get_connection(self):
            if self._connection is None:
                self._connection = self.engine.connect()
                self._connection.exec_driver_sql("SET parquet_metadata_cache = true")
            yield self._connection

        def execute_query(self, query):
            try:
                return super().execute_query(query)
            except Exception:
                # DuckDB keeps a failed statement's transaction aborted: roll it back, or every
                # later expectation on this connection fails with "Current transaction is aborted".
                if self._connection is not None:
                    self._connection.rollback()
                raise

        def close(self) -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
            self.engine.dispose()

    class _DuckDBDatasource(SQLDatasource):
        """The leading underscore keeps GX from registering it as a new datasource type."""

        @property
        def execution_engine_type(self):
            return _DuckDBExecutionEngine

    config = {"memory_limit": memory_limit, "temp_directory": str(scratch / "spill")}
    return _DuckDBDatasource(name="affectflow_output", connection_string=f"duckdb:///{catalog}",
                             kwargs={"connect_args": {"config": config}})


def _detail_format(expectation_type: str, index_columns: Sequence[str]):
    if expectation_type == "unexpected_rows_expectation":
        return "COMPLETE"               # the offending rows, at most GX's MAX_RESULT_RECORDS
    return {"result_format": "SUMMARY", "unexpected_index_column_names": list(index_columns)}


def run_suites(catalog: Path, scratch: Path, planned, settings: ValidationConfig, docs_dir: Path, run_name: str) -> dict:
    """Run every suite (two passes), store the results in an in-memory GX context, build Data Docs."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import (DataContextConfig, InMemoryStoreBackendDefaults,
                                                            ProgressBarsConfig)
    plugins = scratch / "plugins"
    (plugins / "custom_data_docs" / "styles").mkdir(parents=True)
    (plugins / "custom_data_docs" / "styles" / "data_docs_custom_styles.css").write_text(OFFLINE_STYLES)
    site = {"class_name": "SiteBuilder", "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}}
    context = gx.get_context(mode="ephemeral", project_config=DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(), analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False), data_docs_sites={SITE_NAME: site},
        plugins_directory=str(plugins)))
    datasource = context.data_sources.add_sql(_duckdb_datasource(catalog, scratch, settings.memory_limit))
    run_id = RunIdentifier(run_name=f"run-{run_name}", run_time=dt.datetime.now(dt.timezone.utc))
    with warnings.catch_warnings():
        # SQLAlchemy cannot name DuckDB's LIST type when GX reflects a table; no rule reads those columns
        # through SQLAlchemy's types (pipelines.validation.stored checks them from the footers).
        warnings.filterwarnings("ignore", message="Did not recognize type")
        return _validate_all(context, datasource, planned, run_id, docs_dir)


def _validate_all(context, datasource, planned, run_id, docs_dir: Path) -> dict:
    """Every suite, both passes; results stored in ``context``; Data Docs built."""
    import great_expectations as gx
    from great_expectations.data_context.types.resource_identifiers import (ExpectationSuiteIdentifier,
                                                                            ValidationResultIdentifier)
    results = {}
    try:
        for planned_suite in planned:
            suite = context.suites.add(gx.ExpectationSuite(name=planned_suite.name,
                                                           expectations=planned_suite.expectations))
            asset = datasource.add_table_asset(name=planned_suite.asset, table_name=planned_suite.asset)
            batch = asset.add_batch_definition_whole_table("whole table").get_batch()
            result = batch.validate(suite, result_format="BOOLEAN_ONLY")
            for i, first in enumerate(result.results):
                if not first.success:
                    config = first.expectation_config
                    result.results[i] = batch.validate(config.to_domain_obj(), result_format=_detail_format(
                        config.type, planned_suite.index_columns))
            result.meta.update(run_id=run_id, validation_time=run_id.run_time)     # shown by Data Docs
            key = ValidationResultIdentifier(ExpectationSuiteIdentifier(name=suite.name), run_id, batch.id)
            context.validation_results_store.set(key, result)
            results[planned_suite.name] = result
        context.build_data_docs(site_names=[SITE_NAME])
        _add_static_links(docs_dir, {name: r.success for name, r in results.items()})
    finally:
        datasource.get_execution_engine().close()
        datasource.get_engine().dispose()
    return results


def _add_static_links(docs_dir: Path, success: dict[str, bool]) -> None:
    """Plain links at the top of the Data Docs index: GX lists the pages with a table that needs
    JavaScript from a CDN, so offline the index would show none of them."""
    import html
    items = []
    for page in sorted((docs_dir / "validations").rglob("*.html")):
        suite = page.relative_to(docs_dir).parts[1]
        verdict = "passed" if success.get(suite) else "failed"
        items.append(f'<li><a href="{html.escape(page.relative_to(docs_dir).as_posix())}">{html.escape(suite)}</a>'
                     f" validation: {verdict}</li>")
    for page in sorted((docs_dir / "expectations").glob("*.html")):
        items.append(f'<li><a href="{html.escape(page.relative_to(docs_dir).as_posix())}">'
                     f"{html.escape(page.stem)}</a> expectation suite</li>")
    index = docs_dir / "index.html"
    text = index.read_text()
    block = '<div class="container-fluid"><p>affectflow validation pages:</p><ul>' + "".join(items) + "</ul></div>"
    index.write_text(text.replace("<body>", "<body>\n" + block, 1))
