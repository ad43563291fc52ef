"""`affectflow validate`: check an output folder against the schema-derived GX suites.

    affectflow validate OUTPUT [--config YAML] [--set validation.max_failed_share_fail=0.3]

`validate_output(output_dir, settings)` runs the Great Expectations (1.x) suites of
`pipelines.validation.suites` over the frame, video and dead-letter tables, writes the results as
JSON and as GX Data Docs into ``<output>/validation/``, records the verdict in the run
manifest and returns a `ValidationReport`. The CLI prints its one-screen summary and exits
0 (valid; warnings allowed) or 4 (a critical expectation failed).

How tables larger than memory are validated
-------------------------------------------
Every expectation runs in GX's SQL execution engine against DuckDB (SQLAlchemy +
duckdb-engine). A throw-away DuckDB catalog holds one view per table over its Parquet files
(``read_parquet('<output>/frames/video_id=*/*.parquet', hive_partitioning = true,
union_by_name = true)``), so each expectation is a SQL query DuckDB streams over the files.
The video and dead-letter tables (a row or so per video) are copied into the catalog once
instead: the suites query them dozens of times, and reopening a file per video per query cost
more than the queries. No table is loaded into Python, DuckDB's memory is capped by
``validation.memory_limit`` and the larger operators (the key GROUP BY, the timestamp window, the reconciliation joins)
spill to a temporary folder beyond it. GX only receives aggregates and at most a few hundred
example rows. This was preferred over handing GX pandas batches file by file because most
rules span files (keys, per-video frame counts, table-to-table and manifest reconciliation)
and would have had to be re-implemented outside GX; here all rules, including the SQL ones
(`UnexpectedRowsExpectation`), are GX expectations, rendered in Data Docs.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Collection, Optional

import pyarrow as pa

from core.errors import UsageError
from core.settings import ValidationConfig
from pipelines.output.layout import MANIFEST_FILE
from pipelines.output.manifest import manifest_feature_groups
from pipelines.validation.report import ValidationReport, finding

if TYPE_CHECKING:
    from pipelines.validation.rules import RunFacts

VALIDATION_DIR = "validation"
RESULTS_FILE = "results.json"
DATA_DOCS_DIR = "data_docs"


def validate_output(output_dir: str | os.PathLike, settings: Optional[ValidationConfig] = None,
                    scope: Optional[Collection[str]] = None) -> ValidationReport:
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
    * ``scope``: None checks every file. Video ids (the end-of-run validation of a run that wrote
      only those videos) limit the frame and dead-letter files read, and the rules that compare a
      video's row with its frames and dead letters, to them; every video row, the key and
      whole-table rules and the reconciliation with the manifest still read the whole videos
      table. Files of other videos are not read: ``affectflow validate`` (scope None) is the full
      pass. ``results.json`` records the scope.
    * Writes, replacing what an earlier validation left: ``<output>/validation/results.json``
      (verdict, findings, settings, every GX result) and ``<output>/validation/data_docs/index.html``
      (GX Data Docs, relative links: open it from the folder). Sets ``"validation": {"valid",
      "validated_at", "failed", "warnings", "results", "data_docs"}`` in ``run_manifest.json`` and in
      ``runs/<run_id>/run_manifest.json`` when that exists. The tables are only read.
    * Returns a `ValidationReport`: ``valid`` is False when a critical expectation failed or could
      not be evaluated (a missing column, an unreadable file); warnings never make it invalid.
      ``report.exit_code`` is 0 or EXIT_INVALID (4); ``report.summary()`` is the one-screen text.
    * Raises UsageError when the folder is not an affectflow output (no manifest, or one without
      labels/counts).
    * Memory stays bounded whatever the table size: DuckDB streams the Parquet files within
      ``settings.memory_limit`` (spilling to a temporary folder), GX holds aggregates only.

    Example::

        report = validate_output("out/demo", load_config().job.validation)
        if not report.valid:
            print(report.summary())
    """
    started = time.time()
    settings = settings or ValidationConfig()
    output = Path(output_dir).resolve()
    manifest = read_output_manifest(output)
    # Great Expectations (about 3 s to import) only once the folder is known to be an output.
    from pipelines.validation.catalog import build_catalog
    from pipelines.validation.engine import run_suites
    from pipelines.validation.suites import suites
    facts = run_facts(manifest)
    validation_dir = output / VALIDATION_DIR
    docs_dir = validation_dir / DATA_DOCS_DIR
    shutil.rmtree(docs_dir, ignore_errors=True)
    docs_dir.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="affectflow-validate-") as scratch:
        catalog = Path(scratch) / "catalog.duckdb"
        build_catalog(output, catalog, facts.schemas(), carried_known=facts.carried is not None, scope=scope)
        results = run_suites(catalog, Path(scratch), suites(facts, settings), settings, docs_dir, facts.run_id)
    report = verdict(output, facts.run_id, results, started, validation_dir / RESULTS_FILE, docs_dir / "index.html")
    write_results(report, settings, results, "all" if scope is None else f"{len(scope)} video(s) the run wrote")
    mark_manifests(output, facts.run_id, report.manifest_entry())
    return report


def write_results(report: ValidationReport, settings: ValidationConfig, results: dict, scope: str = "all") -> None:
    """The report and every GX result as JSON at ``report.results_path``."""
    _write_json(Path(report.results_path), {
        "output": report.output, "run_id": report.run_id, "valid": report.valid, "validated_at": report.validated_at,
        "frames_checked_for": scope,
        "duration_s": report.duration_s, "settings": settings.model_dump(mode="json"),
        "expectations": {"evaluated": report.evaluated, "failed_critical": len(report.failed),
                         "warnings": len(report.warnings)},
        "failed": [f.as_dict() for f in report.failed], "warnings": [f.as_dict() for f in report.warnings],
        "data_docs": os.path.relpath(report.data_docs_path, report.output),
        "suites": {name: r.to_json_dict() for name, r in results.items()}})


def run_facts(manifest: dict) -> RunFacts:
    """What the suites need from a run manifest: label sets, counts, the frame feature groups, the
    aggregate settings and the carried columns (the last two absent from older manifests)."""
    from pipelines.validation.rules import RunFacts
    aggregate = ((manifest.get("config") or {}).get("job") or {}).get("aggregate") or {}
    carried = None
    if "carried_columns" in manifest:
        data = base64.b64decode(manifest["carried_columns"]["arrow_schema"])
        carried = tuple(pa.ipc.read_schema(pa.py_buffer(data)))
    return RunFacts(run_id=str(manifest["run_id"]), labels=tuple(manifest["labels"]),
                    broad_labels=tuple(manifest["broad_labels"]), counts=dict(manifest["counts"]),
                    feature_groups=manifest_feature_groups(manifest), neutral_label=aggregate.get("neutral_label"),
                    broad_map=aggregate.get("broad_map"), carried=carried)


def verdict(output: Path, run_id: str, results: dict, started: float, results_path: Path,
            data_docs: Path) -> ValidationReport:
    """The verdict from the GX results: critical failures first, then warnings, by table and column."""
    findings = [finding(r) for name in results for r in results[name].results if not r.success]
    order = {t: i for i, t in enumerate(("frames", "videos", "dead_letters", "predictions"))}
    findings.sort(key=lambda f: (f.severity != "critical", order.get(f.table, 9), f.column, f.rule))
    return ValidationReport(
        output=str(output), run_id=run_id,
        valid=not any(f.severity == "critical" for f in findings),
        failed=tuple(f for f in findings if f.severity == "critical"),
        warnings=tuple(f for f in findings if f.severity != "critical"),
        evaluated=sum(len(r.results) for r in results.values()),
        duration_s=round(time.time() - started, 3),
        results_path=str(results_path), data_docs_path=str(data_docs),
        validated_at=dt.datetime.now(dt.timezone.utc).isoformat())


def read_output_manifest(output: Path) -> dict:
    """The output's latest run manifest; UsageError when the folder is not an affectflow output."""
    path = output / MANIFEST_FILE
    if not path.is_file():
        raise UsageError(f"{output} is not an affectflow output: {path} does not exist")
    manifest = json.loads(path.read_text())
    absent = [k for k in ("run_id", "labels", "broad_labels", "counts") if k not in manifest]
    counts = manifest.get("counts") or {}
    absent += [f"counts.{k}" for k in ("matched", "ok", "no_face", "failed") if k not in counts]
    if absent:
        raise UsageError(f"{path} lacks {', '.join(absent)}; was it written by affectflow run?")
    return manifest


def _write_json(path: Path, data: dict) -> None:
    """Write ``path`` whole or not at all (a full disk leaves the old file and no temporary one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def mark_manifests(output: Path, run_id: str, entry: dict) -> None:
    """Put ``entry`` as ``validation`` into the latest and the run's own run_manifest.json, when
    they are ``run_id``'s (a later run's manifest is left alone)."""
    for path in (output / MANIFEST_FILE, output / "runs" / run_id / MANIFEST_FILE):
        if path.is_file():
            manifest = json.loads(path.read_text())
            if manifest.get("run_id") == run_id:
                manifest["validation"] = entry
                _write_json(path, manifest)
