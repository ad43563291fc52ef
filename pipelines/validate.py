"""`affectflow validate`: check an output folder against the schema-derived GX suites.

    affectflow validate OUTPUT [--config YAML] [--set validation.max_failed_share_fail=0.3]

`validate_output(output_dir, settings)` runs the Great Expectations (1.x) suites of
`schemas.expectations` over the frame, video and dead-letter tables, writes the results as
JSON and as GX Data Docs into ``<output>/validation/``, records the verdict in the run
manifest and returns a `ValidationReport`. The CLI prints its one-screen summary and exits
0 (valid; warnings allowed) or 4 (a critical expectation failed).

How tables larger than memory are validated
-------------------------------------------
Every expectation runs in GX's SQL execution engine against DuckDB (SQLAlchemy +
duckdb-engine). A throw-away DuckDB catalog holds one view per table over its Parquet files
(``read_parquet('<output>/frames/video_id=*/*.parquet', hive_partitioning = true,
union_by_name = true)``), so each expectation is a SQL query DuckDB streams over the files:
no table is loaded into Python, DuckDB's memory is capped by ``validation.memory_limit``
and the larger operators (the key GROUP BY, the timestamp window, the reconciliation joins)
spill to a temporary folder beyond it. GX only receives aggregates and at most a few hundred
example rows. This was preferred over handing GX pandas batches file by file because most
rules span files (keys, per-video frame counts, table-to-table and manifest reconciliation)
and would have had to be re-implemented outside GX; here all rules, including the SQL ones
(`UnexpectedRowsExpectation`), are GX expectations, rendered in Data Docs.

Two adaptations make GX 1.24 work with duckdb-engine 0.17, both local to this module:

* duckdb-engine runs a cursor's statements on the DuckDB connection itself, so the ROLLBACK
  SQLAlchemy issues when GX closes a connection after a query discards the result GX then
  fetches (every metric came back empty). `_DuckDBExecutionEngine` keeps one connection
  open for the whole validation, as GX already does for SQLite, SQL Server and BigQuery.
* duckdb-engine reflects FLOAT and DOUBLE alike as SQLAlchemy FLOAT, so GX's type
  expectations could not tell float32 from float64. The stored Arrow types are instead read
  from every file's Parquet footer (pyarrow, footers only) into a small ``parquet_columns``
  table that GX checks exactly, file by file.

Two passes keep it fast: every suite first runs with result_format BOOLEAN_ONLY (GX bundles
a table's column metrics into one aggregate query per row condition); only the expectations
that failed run again, with SUMMARY plus the row identifiers (map expectations) or COMPLETE
(SQL rules, at most 200 offending rows), and their results replace the first ones.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import glob
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import ValidationConfig, check_validation
from pipelines.outputs import manifest_feature_groups
from schemas.tables import PARTITION_COLUMN

EXIT_VALID, EXIT_INVALID = 0, 4
VALIDATION_DIR = "validation"
RESULTS_FILE = "results.json"
DATA_DOCS_DIR = "data_docs"
SITE_NAME = "affectflow"
# Inlined into every Data Docs page by GX (plugins/custom_data_docs/styles): the status icons come
# from a CDN icon font, so offline (the usual case here) they would be blank.
OFFLINE_STYLES = """
.fas.fa-check-circle::before { content: "\\2714"; font-style: normal; }
.fas.fa-times::before, .fas.fa-times-circle::before { content: "\\2718"; font-style: normal; }
.text-success { color: #1e7e34; } .text-danger { color: #c82333; }
"""
MAX_EXAMPLES = 3


@dataclass(frozen=True)
class Finding:
    """One failed expectation, as the summary, results.json and the manifest report it."""
    table: str
    column: str
    rule: str
    severity: str                  # critical | warning
    expectation: str               # GX expectation type
    detail: str                    # what was found: counts and a few offending rows
    unexpected: Optional[int] = None

    @property
    def message(self) -> str:
        return f"{self.table}.{self.column}: {self.rule} -- {self.detail}"

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "message": self.message}


@dataclass(frozen=True)
class ValidationReport:
    """The verdict on one output folder. ``valid``: no critical expectation failed."""
    output: str
    run_id: str
    valid: bool
    failed: tuple[Finding, ...]        # critical
    warnings: tuple[Finding, ...]
    evaluated: int                     # expectations run
    duration_s: float
    results_path: str
    data_docs_path: str
    validated_at: str

    @property
    def exit_code(self) -> int:
        return EXIT_VALID if self.valid else EXIT_INVALID

    def manifest_entry(self) -> dict:
        """The ``validation`` entry written into run_manifest.json."""
        def brief(f: Finding) -> dict:
            return {"table": f.table, "column": f.column, "rule": f.rule, "message": f.message}
        return {"valid": self.valid, "validated_at": self.validated_at,
                "failed": [brief(f) for f in self.failed], "warnings": [brief(f) for f in self.warnings],
                "results": os.path.relpath(self.results_path, self.output),
                "data_docs": os.path.relpath(self.data_docs_path, self.output)}

    def summary(self, max_findings: int = 14, width: int = 200) -> str:
        """One screen: the verdict, then one line per failure and warning (table.column: rule -- detail)."""
        verdict = "VALID" if self.valid else "INVALID"
        lines = [f"validation of {self.output}: {verdict}, {len(self.failed)} critical failure(s), "
                 f"{len(self.warnings)} warning(s) ({self.evaluated} expectations, {self.duration_s:.1f} s)"]
        shown = [("FAILED ", f) for f in self.failed] + [("WARNING", f) for f in self.warnings]
        for label, finding in shown[:max_findings]:
            line = f"  {label} {finding.message}"
            lines.append(line if len(line) <= width else line[:width - 3] + "...")
        if len(shown) > max_findings:
            lines.append(f"  ... and {len(shown) - max_findings} more in {self.results_path}")
        lines.append(f"  results    {self.results_path}")
        lines.append(f"  data docs  {self.data_docs_path}")
        return "\n".join(lines)


def validate_output(output_dir: str | os.PathLike, settings: Optional[ValidationConfig] = None) -> ValidationReport:
    """Validate an affectflow output folder; write its results and Data Docs; mark its run manifest.

    Contract:

    * ``output_dir``: a local folder written by ``affectflow run``: ``frames/``, ``videos/``,
      ``dead_letters/`` (``<table>/video_id=<id>/*.parquet``) and ``run_manifest.json``, whose
      ``labels``, ``broad_labels``, ``run_id``, ``counts`` and ``config.job.features`` give the label
      vocabularies, the counts to reconcile and the frame table's optional column groups. A table
      with no files is validated as empty.
    * ``settings``: ``config.job.validation`` (`ValidationConfig`); None = its defaults.
      ``settings.enabled`` is for the caller (the end-of-run hook) to honour: this function
      always validates.
    * Writes, replacing what an earlier validation left: ``<output>/validation/results.json``
      (verdict, findings, settings, every GX result) and ``<output>/validation/data_docs/index.html``
      (GX Data Docs, relative links: open it from the folder). Sets ``"validation": {"valid",
      "validated_at", "failed", "warnings", "results", "data_docs"}`` in ``run_manifest.json`` and in
      ``runs/<run_id>/run_manifest.json`` when that exists. The tables are only read.
    * Returns a `ValidationReport`: ``valid`` is False when a critical expectation failed or could
      not be evaluated (a missing column, an unreadable file); warnings never make it invalid.
      ``report.exit_code`` is 0 or EXIT_INVALID (4); ``report.summary()`` is the one-screen text.
    * Raises ValueError when the folder is not an affectflow output (no manifest, or one without
      labels/counts) or a setting is out of range.
    * Memory stays bounded whatever the table size: DuckDB streams the Parquet files within
      ``settings.memory_limit`` (spilling to a temporary folder), GX holds aggregates only.

    Example::

        report = validate_output("out/demo", load_config().job.validation)
        if not report.valid:
            print(report.summary())
    """
    started = time.time()
    settings = settings or ValidationConfig()
    check_validation(settings)
    output = Path(output_dir).resolve()
    manifest = _read_manifest(output)
    from schemas.expectations import RunFacts, suites
    facts = RunFacts(run_id=str(manifest["run_id"]), labels=tuple(manifest["labels"]),
                     broad_labels=tuple(manifest["broad_labels"]), counts=dict(manifest["counts"]),
                     feature_groups=manifest_feature_groups(manifest))
    planned = suites(facts, settings)
    validation_dir = output / VALIDATION_DIR
    docs_dir = validation_dir / DATA_DOCS_DIR
    shutil.rmtree(docs_dir, ignore_errors=True)
    docs_dir.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="affectflow-validate-") as scratch:
        catalog = Path(scratch) / "catalog.duckdb"
        build_catalog(output, catalog, facts.schemas())
        results = _run_suites(catalog, Path(scratch), planned, settings, docs_dir, facts.run_id)

    findings = [_finding(r) for name in results for r in results[name].results if not r.success]
    order = {t: i for i, t in enumerate(("frames", "videos", "dead_letters"))}
    findings.sort(key=lambda f: (f.severity != "critical", order.get(f.table, 9), f.column, f.rule))
    validated_at = dt.datetime.now(dt.timezone.utc).isoformat()
    report = ValidationReport(
        output=str(output), run_id=facts.run_id,
        valid=not any(f.severity == "critical" for f in findings),
        failed=tuple(f for f in findings if f.severity == "critical"),
        warnings=tuple(f for f in findings if f.severity != "critical"),
        evaluated=sum(len(r.results) for r in results.values()),
        duration_s=round(time.time() - started, 3),
        results_path=str(validation_dir / RESULTS_FILE), data_docs_path=str(docs_dir / "index.html"),
        validated_at=validated_at)
    _write_json(validation_dir / RESULTS_FILE, {
        "output": report.output, "run_id": report.run_id, "valid": report.valid, "validated_at": validated_at,
        "duration_s": report.duration_s, "settings": dataclasses.asdict(settings),
        "expectations": {"evaluated": report.evaluated, "failed_critical": len(report.failed),
                         "warnings": len(report.warnings)},
        "failed": [f.as_dict() for f in report.failed], "warnings": [f.as_dict() for f in report.warnings],
        "data_docs": os.path.relpath(report.data_docs_path, output),
        "suites": {name: r.to_json_dict() for name, r in results.items()}})
    mark_manifests(output, facts.run_id, report.manifest_entry())
    return report


def run(args) -> int:
    """`affectflow validate OUTPUT [--config ...] [--set validation.x=y]` (args from pipelines.cli)."""
    from pipelines.config import load_config
    settings = load_config(args.config, None, args.set).job.validation
    report = validate_output(args.output, settings)
    print(report.summary())
    return report.exit_code


# --- inputs --------------------------------------------------------------------------------

def _read_manifest(output: Path) -> dict:
    path = output / "run_manifest.json"
    if not path.is_file():
        raise ValueError(f"{output} is not an affectflow output: {path} does not exist")
    manifest = json.loads(path.read_text())
    absent = [k for k in ("run_id", "labels", "broad_labels", "counts") if k not in manifest]
    counts = manifest.get("counts") or {}
    absent += [f"counts.{k}" for k in ("matched", "ok", "no_face", "failed") if k not in counts]
    if absent:
        raise ValueError(f"{path} lacks {', '.join(absent)}; was it written by affectflow run?")
    return manifest


def table_files(output: Path, table: str) -> list[str]:
    """The table's Parquet files, ``<output>/<table>/video_id=<id>/*.parquet``."""
    pattern = os.path.join(glob.escape(str(output / table)), f"{PARTITION_COLUMN}=*", "*.parquet")
    return sorted(glob.glob(pattern))


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def build_catalog(output: Path, path: Path, schemas: dict[str, pa.Schema]) -> None:
    """A DuckDB catalog at ``path``: one view per table over its Parquet files (an empty table
    of the schema when it has none) and ``parquet_columns``, every file's stored columns."""
    import duckdb
    from schemas.expectations import PARQUET_COLUMNS, stored_column_rows
    rows = []
    con = duckdb.connect(str(path))
    try:
        for table, schema in schemas.items():
            files = table_files(output, table)
            for file in files:               # footers only: a few KB per file whatever the table size
                relative = os.path.relpath(file, output)
                try:
                    rows += stored_column_rows(table, schema, relative, pq.read_schema(file))
                except Exception as exc:  # noqa: BLE001 - reported as a failed expectation, not raised
                    rows += stored_column_rows(table, schema, relative, None, type(exc).__name__)
            if files:
                glob_chars = set("*?[]{}") & set(str(output))
                source = ("[" + ", ".join(map(_quote, files)) + "]" if glob_chars else
                          _quote(os.path.join(str(output / table), f"{PARTITION_COLUMN}=*", "*.parquet")))
                con.execute(f'CREATE VIEW "{table}" AS SELECT * FROM read_parquet({source}, hive_partitioning = true, '
                            f"hive_types = {{'{PARTITION_COLUMN}': VARCHAR}}, union_by_name = true)")
            else:
                con.register("empty_table", schema.empty_table())
                con.execute(f'CREATE TABLE "{table}" AS SELECT * FROM empty_table')
                con.unregister("empty_table")
        names = ("table_name", "file", "column_name", "arrow_type", "expected_type")
        con.register("stored_columns", pa.table({n: pa.array([r[i] for r in rows], pa.string())
                                                 for i, n in enumerate(names)}))
        con.execute(f'CREATE TABLE "{PARQUET_COLUMNS}" AS SELECT * FROM stored_columns')
    finally:
        con.close()


# --- GX ------------------------------------------------------------------------------------

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


def _run_suites(catalog: Path, scratch: Path, planned, settings: ValidationConfig, docs_dir: Path, run_name: str) -> dict:
    """Run every suite (two passes), store the results in an in-memory GX context, build Data Docs."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import (DataContextConfig, InMemoryStoreBackendDefaults,
                                                            ProgressBarsConfig)
    from great_expectations.data_context.types.resource_identifiers import (ExpectationSuiteIdentifier,
                                                                            ValidationResultIdentifier)
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


# --- results -------------------------------------------------------------------------------

def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _examples(items: Sequence) -> str:
    shown = []
    for item in list(items)[:MAX_EXAMPLES]:
        shown.append(" ".join(f"{k}={_short(v)}" for k, v in item.items()) if isinstance(item, dict) else _short(item))
    return "e.g. " + "; ".join(shown) if shown else ""


def _exception_message(info) -> Optional[str]:
    if not info:
        return None
    entries = info.values() if all(isinstance(v, dict) for v in info.values()) else [info]
    messages = [str(e.get("exception_message")) for e in entries if e.get("raised_exception")]
    return "; ".join(dict.fromkeys(messages)) or None


def _finding(r) -> Finding:
    config = r.expectation_config
    m = config.meta or {}
    severity = getattr(config.severity, "value", config.severity) or "critical"
    res = r.result or {}
    unexpected: Optional[int] = None
    error = _exception_message(r.exception_info)
    if error:
        detail = f"could not be evaluated: {error}"
    elif config.type == "unexpected_rows_expectation":
        unexpected = int(res.get("observed_value") or 0)
        rows = (res.get("details") or {}).get("unexpected_rows") or []
        detail = f"{unexpected} offending row(s), " + _examples(rows)
    elif "unexpected_count" in res:
        unexpected = int(res["unexpected_count"])
        total = res.get("element_count")
        mostly = config.kwargs.get("mostly")
        share = (f" ({res['unexpected_percent']:.1f}%, allowed {100 * (1 - mostly):.1f}%)"
                 if mostly is not None and mostly < 1 and res.get("unexpected_percent") is not None else "")
        rows = res.get("partial_unexpected_index_list") or res.get("partial_unexpected_list") or []
        detail = f"{unexpected} of {total} rows{share}, " + _examples(rows)
    elif config.type == "expect_table_columns_to_match_set":
        mismatched = (res.get("details") or {}).get("mismatched") or {}
        detail = ", ".join(f"{k} {sorted(v)}" for k, v in mismatched.items() if v) or f"observed {res.get('observed_value')}"
    else:
        detail = f"observed {_short(res.get('observed_value'))}"
    column = m.get("column", config.kwargs.get("column", "?"))
    named = [row["column_name"] for row in res.get("partial_unexpected_index_list") or []
             if isinstance(row, dict) and "column_name" in row]
    if named:                           # the stored-columns rule: name the offending columns
        column = ", ".join(dict.fromkeys(named))
    return Finding(table=m.get("table", "?"), column=column,
                   rule=m.get("rule", config.type), severity=str(severity), expectation=config.type,
                   detail=detail.rstrip(", "), unexpected=unexpected)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def mark_manifests(output: Path, run_id: str, entry: dict) -> None:
    """Put ``entry`` as ``validation`` into the latest and the run's own run_manifest.json, when
    they are ``run_id``'s (a later run's manifest is left alone)."""
    for path in (output / "run_manifest.json", output / "runs" / run_id / "run_manifest.json"):
        if path.is_file():
            manifest = json.loads(path.read_text())
            if manifest.get("run_id") == run_id:
                manifest["validation"] = entry
                _write_json(path, manifest)
