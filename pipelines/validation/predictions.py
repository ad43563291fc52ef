"""The predictions suite: one model's predictions/ rows checked against its card and the output's videos.

    report = validate_predictions("out/run", PredictedModel.of(card, sha256), ValidationConfig())

Great Expectations (1.x) rules over DuckDB views, as the output's own suites run
(pipelines.validation.engine): the stored columns and types of every file, one row per
video, the status vocabulary, labels from the card, probabilities in [0, 1] summing to 1 with
the predicted label their argmax, nulls that follow the status, and reconciliation with the
videos table (every video has a row, no row without a video). A prediction made from frame
rows that a later run replaced is a warning (predict again). Results and Data Docs go to
``<output>/validation/predictions/<model>/``.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import great_expectations.expectations as gxe
import pyarrow as pa
import pyarrow.parquet as pq

from core.settings import ValidationConfig
from models.video_classifier import ModelCard
from pipelines.output.layout import table_files
from pipelines.validation.catalog import create_empty_table, create_parquet_columns, sql_literal
from pipelines.validation.engine import run_suites
from pipelines.validation.job import VALIDATION_DIR, RESULTS_FILE, DATA_DOCS_DIR, verdict, write_results
from pipelines.validation.report import ValidationReport
from pipelines.validation.rules import WARNING, between, columns_match, ident, in_set, lit, meta, rows_rule, Suite
from pipelines.validation.stored import PARQUET_COLUMNS, parquet_column_expectations, stored_column_rows
from schemas.columns import PARTITION_COLUMN
from schemas.predictions import (MODEL_PARTITION, PREDICTION_STATUSES, SEMANTIC_TASK, SPACE_AXES, SPACE_LEVELS,
                                 SPACE_TASK, prediction_schema, probability_column, semantic_prediction_schema,
                                 space_prediction_schema)

PREDICTIONS = "predictions"


@dataclass(frozen=True)
class PredictedModel:
    """What the predictions suite needs to know of a model: its name, label order and weights' SHA-256,
    and whether it is a classifier, a semantic model or an emotion space (with its dimensions)."""
    name: str
    labels: tuple[str, ...]             # a semantic model's: its vocabulary
    model_sha256: str
    semantic: bool = False
    space_dimensions: int = 0           # an emotion space's (pipelines.space); 0: not a space

    @classmethod
    def of(cls, card: ModelCard, model_sha256: str) -> "PredictedModel":
        return cls(card.name, card.labels, model_sha256, card.semantic)

    @classmethod
    def from_manifest(cls, manifest: dict) -> "PredictedModel":
        """From a model's ``_predict_manifest.json`` (pipelines.predict, pipelines.space)."""
        task = manifest.get("task")
        return cls(manifest["model"], tuple(manifest["labels"]), manifest["model_sha256"], task == SEMANTIC_TASK,
                   int(manifest.get("dimensions") or 0) if task == SPACE_TASK else 0)

    @property
    def schema(self) -> pa.Schema:
        if self.space_dimensions:
            return space_prediction_schema()
        return semantic_prediction_schema() if self.semantic else prediction_schema(self.labels)

    @property
    def probability_columns(self) -> list[str]:
        return [probability_column(l) for l in self.labels]


def build_prediction_catalog(output: Path, path: Path, model: PredictedModel) -> None:
    """DuckDB views ``predictions`` (the model's rows, both partition columns) and ``videos`` (video
    ids, status, source), and ``parquet_columns`` for the prediction files."""
    import duckdb
    folder = output / PREDICTIONS / f"{MODEL_PARTITION}={model.name}"
    files = table_files(folder.parent, folder.name)
    stored_schema = pa.schema([f for f in model.schema if f.name != MODEL_PARTITION])
    rows = []
    con = duckdb.connect(str(path))
    try:
        for file in files:
            rows += stored_column_rows(PREDICTIONS, stored_schema, os.path.relpath(file, output), pq.read_schema(file))
        if files:
            source = "[" + ", ".join(map(sql_literal, files)) + "]"
            con.execute(f"CREATE VIEW {PREDICTIONS} AS SELECT * FROM read_parquet({source}, hive_partitioning = true, "
                        f"hive_types = {{'{PARTITION_COLUMN}': VARCHAR, '{MODEL_PARTITION}': VARCHAR}}, "
                        "union_by_name = true)")
        else:
            create_empty_table(con, PREDICTIONS, model.schema)
        videos = table_files(output, "videos")
        if videos:
            con.execute("CREATE VIEW videos AS SELECT video_id, status, coalesce(content_sha256, '-') || ':' || "
                        "coalesce(settings_fingerprint, '-') AS source FROM read_parquet(["
                        + ", ".join(map(sql_literal, videos)) + f"], hive_partitioning = true, hive_types = "
                        f"{{'{PARTITION_COLUMN}': VARCHAR}}, union_by_name = true)")
        else:
            con.execute("CREATE TABLE videos (video_id VARCHAR, status VARCHAR, source VARCHAR)")
        create_parquet_columns(con, rows)
    finally:
        con.close()


def _reconciliation(t: str) -> list:
    """Every video of the output has a row; no row without a video; rows from the current frames."""
    return [
        rows_rule(t, PARTITION_COLUMN, "every video of the output has a prediction",
                  f"SELECT v.* FROM videos v LEFT JOIN (SELECT DISTINCT {PARTITION_COLUMN} FROM {{batch}}) p "
                  f"USING ({PARTITION_COLUMN}) WHERE p.{PARTITION_COLUMN} IS NULL"),
        rows_rule(t, PARTITION_COLUMN, "every prediction is of a video of the output",
                  f"SELECT p.* FROM {{batch}} p LEFT JOIN videos v USING ({PARTITION_COLUMN}) "
                  f"WHERE v.{PARTITION_COLUMN} IS NULL"),
        rows_rule(t, "source", "made from the video's current frame rows (else predict again)",
                  f"SELECT p.* FROM {{batch}} p JOIN videos v USING ({PARTITION_COLUMN}) "
                  "WHERE p.status <> 'failed' AND p.source <> v.source", severity=WARNING),
        rows_rule(t, "error", "an error exactly when status is failed",
                  "SELECT * FROM {batch} WHERE (status = 'failed') <> (error IS NOT NULL)"),
        rows_rule(t, "frames_valid", "0 <= frames_valid <= frames_total; no_face exactly when no frame is valid",
                  "SELECT * FROM {batch} WHERE frames_valid < 0 OR frames_valid > frames_total OR "
                  "(status = 'no_face') <> (status <> 'failed' AND frames_valid = 0)"),
    ]


def semantic_expectations(model: PredictedModel, tolerance: float) -> list:
    """A semantic model's rows: windows, the vocabulary, unit-length points, words nearest first."""
    t = PREDICTIONS
    return [
        columns_match(t, model.schema, exact=True),
        rows_rule(t, "window_index", "one row per video and window",
                  f"SELECT {PARTITION_COLUMN}, window_index, count(*) AS rows FROM {{batch}} "
                  f"GROUP BY {PARTITION_COLUMN}, window_index HAVING count(*) > 1"),
        in_set(t, "status", PREDICTION_STATUSES, "statuses"),
        in_set(t, MODEL_PARTITION, (model.name,), "the model's name"),
        in_set(t, "model_sha256", (model.model_sha256,), "the model file's SHA-256"),
        in_set(t, "nearest_word", model.labels, "the model's vocabulary"),
        between(t, "nearest_cosine", -1 - tolerance, 1 + tolerance),
        rows_rule(t, "embedding", "status ok: a unit-length point, its nearest words in order, the first the "
                                  "nearest word",
                  f"SELECT * FROM {{batch}} WHERE status = 'ok' AND (embedding IS NULL OR "
                  f"abs(list_dot_product(embedding, embedding) - 1) > {max(tolerance, 1e-4)} OR top_words IS NULL "
                  "OR top_words[1] <> nearest_word OR top_cosines[1] <> nearest_cosine OR "
                  "len(top_words) <> len(top_cosines) OR list_sort(top_cosines, 'DESC') <> top_cosines)"),
        rows_rule(t, "embedding", "status not ok: no point, no words",
                  "SELECT * FROM {batch} WHERE status <> 'ok' AND (embedding IS NOT NULL OR nearest_word IS NOT NULL "
                  "OR top_words IS NOT NULL)"),
        *_reconciliation(t),
    ]


def space_expectations(model: PredictedModel) -> list:
    """An emotion space's rows: one video row and one row per valid frame, coordinates of the space's
    dimensions, clusters, the ensemble's labels, frame rows that add up to the video row."""
    t = PREDICTIONS
    used = SPACE_AXES[:model.space_dimensions]
    coords = " AND ".join(f"{a} IS NOT NULL AND isfinite({a})" for a in used)
    unused = " OR ".join(f"{a} IS NOT NULL" for a in SPACE_AXES[model.space_dimensions:]) or "false"
    return [
        columns_match(t, model.schema, exact=True),
        in_set(t, "level", SPACE_LEVELS, "video or frame"),
        rows_rule(t, "level", "one video row per video and one row per frame",
                  f"SELECT {PARTITION_COLUMN}, level, frame_index, count(*) AS rows FROM {{batch}} "
                  f"GROUP BY {PARTITION_COLUMN}, level, frame_index HAVING count(*) > 1 OR "
                  f"(level = 'video' AND frame_index IS NOT NULL) OR (level = 'frame' AND frame_index IS NULL)"),
        in_set(t, "status", PREDICTION_STATUSES, "statuses"),
        rows_rule(t, "status", "frame rows are ok (a frame without a face has no row)",
                  "SELECT * FROM {batch} WHERE level = 'frame' AND status <> 'ok'"),
        in_set(t, MODEL_PARTITION, (model.name,), "the space's name"),
        in_set(t, "model_sha256", (model.model_sha256,), "the space file's SHA-256"),
        in_set(t, "predicted_label", model.labels, "the ensemble's labels"),
        between(t, "cluster_strength", 0, 1),
        between(t, "cluster", -1, None, rule=">= -1 (-1: none)"),
        rows_rule(t, "x", f"status ok: {model.space_dimensions} finite coordinates, a cluster and a label",
                  f"SELECT * FROM {{batch}} WHERE status = 'ok' AND NOT ({coords} AND cluster IS NOT NULL AND "
                  f"cluster_strength IS NOT NULL AND predicted_label IS NOT NULL AND NOT ({unused}))"),
        rows_rule(t, "x", "status not ok: no point, cluster or label",
                  "SELECT * FROM {batch} WHERE status <> 'ok' AND (x IS NOT NULL OR y IS NOT NULL OR z IS NOT NULL OR "
                  "cluster IS NOT NULL OR predicted_label IS NOT NULL)"),
        rows_rule(t, "frames_valid", "a video row's frames_valid equals its frame rows",
                  f"SELECT v.* FROM {{batch}} v LEFT JOIN (SELECT {PARTITION_COLUMN}, count(*) AS n FROM {{batch}} "
                  f"WHERE level = 'frame' GROUP BY {PARTITION_COLUMN}) f USING ({PARTITION_COLUMN}) "
                  "WHERE v.level = 'video' AND v.frames_valid <> coalesce(f.n, 0)"),
        *_reconciliation(t),
    ]


def prediction_expectations(model: PredictedModel, tolerance: float) -> list:
    """The rules of the predictions suite (see the module docstring)."""
    if model.semantic:
        return semantic_expectations(model, tolerance)
    if model.space_dimensions:
        return space_expectations(model)
    t = PREDICTIONS
    probs = model.probability_columns
    total = " + ".join(f"coalesce({ident(c)}, 0)" for c in probs)
    any_prob = " OR ".join(f"{ident(c)} IS NOT NULL" for c in probs)
    all_probs = " AND ".join(f"{ident(c)} IS NOT NULL" for c in probs)
    greatest = f"greatest({', '.join(ident(c) for c in probs)})"
    argmax = "CASE " + " ".join(f"WHEN {ident(c)} = {greatest} THEN {lit(l)}"
                                for c, l in zip(probs, model.labels)) + " END"
    rules = [
        columns_match(t, prediction_schema(model.labels), exact=True),
        gxe.ExpectColumnValuesToBeUnique(column=PARTITION_COLUMN, meta=meta(t, PARTITION_COLUMN, "one row per video")),
        in_set(t, "status", PREDICTION_STATUSES, "statuses"),
        in_set(t, MODEL_PARTITION, (model.name,), "the model's name"),
        in_set(t, "model_sha256", (model.model_sha256,), "the model file's SHA-256"),
        in_set(t, "predicted_label", model.labels, "the model's labels"),
        between(t, "confidence", 0, 1),
        *[between(t, c, 0, 1) for c in probs],
        rows_rule(t, "predicted_label", "status ok: a label, every probability, summing to 1, the label their argmax",
                  f"SELECT * FROM {{batch}} WHERE status = 'ok' AND (predicted_label IS NULL OR NOT ({all_probs}) "
                  f"OR abs({total} - 1) > {tolerance} OR predicted_label <> ({argmax}) "
                  f"OR abs(confidence - {greatest}) > {tolerance})"),
        rows_rule(t, "predicted_label", "status not ok: no label, no probability",
                  f"SELECT * FROM {{batch}} WHERE status <> 'ok' AND (predicted_label IS NOT NULL "
                  f"OR confidence IS NOT NULL OR {any_prob})"),
        *_reconciliation(t),
    ]
    return rules


def predicted_models(output_dir: str | os.PathLike) -> list[PredictedModel]:
    """The models whose predictions an output holds (from their predict manifests)."""
    root = Path(output_dir) / PREDICTIONS
    return [PredictedModel.from_manifest(json.loads(p.read_text()))
            for p in sorted(root.glob(f"{MODEL_PARTITION}=*/_predict_manifest.json"))]


def validate_predictions(output_dir: str | os.PathLike, model: PredictedModel,
                         settings: ValidationConfig | None = None) -> ValidationReport:
    """Validate one model's predictions in a local output; write results and Data Docs under
    ``<output>/validation/predictions/<model>/``; return the report (exit code 4 when invalid)."""
    started = time.time()
    settings = settings or ValidationConfig()
    output = Path(output_dir).resolve()
    folder = output / VALIDATION_DIR / PREDICTIONS / model.name
    docs_dir = folder / DATA_DOCS_DIR
    shutil.rmtree(docs_dir, ignore_errors=True)
    docs_dir.mkdir(parents=True)
    suites = [Suite(PARQUET_COLUMNS, PARQUET_COLUMNS, ("file", "column_name"), parquet_column_expectations([PREDICTIONS])),
              Suite(PREDICTIONS, PREDICTIONS, (PARTITION_COLUMN,),
                    prediction_expectations(model, settings.probability_tolerance))]
    with tempfile.TemporaryDirectory(prefix="affectflow-validate-") as scratch:
        catalog = Path(scratch) / "catalog.duckdb"
        build_prediction_catalog(output, catalog, model)
        results = run_suites(catalog, Path(scratch), suites, settings, docs_dir, model.name)
    report = verdict(output, model.name, results, started, folder / RESULTS_FILE, docs_dir / "index.html")
    write_results(report, settings, results)
    return report
