"""Temporal smoothing (smooth_* columns), end-of-run validation and the feature-set entry."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import cli
from pipelines.cli.summary import EXIT_INVALID
from core.errors import ConfigError
from pipelines.config import load_config
from pipelines.extract import execute
from pipelines.output.layout import read_table
from pipelines.validation.job import validate_output
from schemas.features import GEOMETRY_MEASURES, feature_set_columns
from schemas.columns import prob_column, smooth_column
from transforms.series import SeriesSettings, neutral_baseline, smooth_series

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def test_window_is_a_centred_mean_cut_short_at_the_ends():
    p = np.array([[1, 0], [0, 1], [1, 0], [1, 0]], float)
    out = smooth_series(p, SeriesSettings("window", window=3))
    np.testing.assert_allclose(out, [[0.5, 0.5], [2 / 3, 1 / 3], [2 / 3, 1 / 3], [1.0, 0.0]], rtol=1e-6)


def test_ema_follows_its_recurrence_and_window_one_is_identity():
    p = np.array([[1, 0], [0, 1], [1, 0]], float)
    np.testing.assert_allclose(smooth_series(p, SeriesSettings("ema", alpha=0.5)),
                               [[1, 0], [0.5, 0.5], [0.75, 0.25]], rtol=1e-6)
    np.testing.assert_allclose(smooth_series(p, SeriesSettings("window", window=1)), p)
    assert smooth_series(np.zeros((0, 2)), SeriesSettings("ema")).shape == (0, 2)


@pytest.mark.parametrize("sets, message", [
    (["features.smoothing.method=median"], "features.smoothing.method = 'median': Input should be 'none', 'window'"),
    (["features.smoothing.method=window", "features.smoothing.window=4"], "features.smoothing.window = 4: must be odd"),
    (["features.smoothing.alpha=0"], "features.smoothing.alpha = 0: Input should be greater than 0"),
    (["features.feature_set=appearance"], "feature_set=appearance needs blendshapes or geometry: true"),
    (["features.feature_set=deep"], "feature_set=deep needs embedding or resnet50: true"),
    (["features.feature_set=texture"], "features.feature_set = 'texture': Input should be 'none', 'appearance'"),
])
def test_bad_feature_settings_are_config_errors(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(sets=sets)


def test_feature_set_columns_follow_the_documented_order():
    geo = list(GEOMETRY_MEASURES)
    assert feature_set_columns("appearance", ["landmarks", "geometry"]) == geo
    assert feature_set_columns("deep", ["embedding", "resnet50"]) == ["emb_mini_xception", "resnet50"]
    assert feature_set_columns("both", ["geometry", "resnet50"]) == geo + ["resnet50"]
    with pytest.raises(ValueError, match="needs the embedding or resnet50"):
        feature_set_columns("deep", ["geometry"])


def _expected(frames: pd.DataFrame, method: str, window: int = 5, alpha: float = 0.3) -> pd.DataFrame:
    """Independent reference: pandas rolling / ewm over each video's primary-face rows."""
    primary = frames[frames.face_index == 0].sort_values(["video_id", "frame_index"])
    probs = primary.groupby("video_id")[[prob_column(l) for l in LABELS]]
    if method == "window":
        smoothed = probs.transform(lambda s: s.rolling(window, center=True, min_periods=1).mean())
    else:
        smoothed = probs.transform(lambda s: s.ewm(alpha=alpha, adjust=False).mean())
    return smoothed.set_axis([smooth_column(l) for l in LABELS], axis=1)


@pytest.mark.parametrize("method", ["window", "ema"])
def test_pipeline_smooths_across_chunk_and_segment_files(tmp_path, single_face, method):
    from tests import media
    shutil.copy(single_face, tmp_path / "s.mp4")
    media.face_appears_disappears_video(tmp_path / "appears.mp4", single_face, 3, 6, 3)
    out = tmp_path / "out"
    manifest = execute(load_config(None, {"input": str(tmp_path), "output": str(out)},
                                   ["progress=false", f"features.smoothing.method={method}",
                                    "decode.chunk_frames=16", "decode.segment_seconds=1"]))
    assert manifest["frame_feature_groups"] == ["smoothing"] and manifest["validation"]["valid"] is True
    assert len(list((out / "frames").glob("video_id=s-*/*.parquet"))) == 6     # 3 segments x 2 chunks: the series crosses files
    frames = read_table(str(out), "frames").to_pandas()
    smooth = [smooth_column(l) for l in LABELS]
    faces = frames[frames.face_found]
    assert frames.loc[~frames.face_found, smooth].isna().all().all()
    np.testing.assert_allclose(faces[smooth].sum(axis=1), 1.0, atol=1e-5)
    expected = _expected(frames, method)
    np.testing.assert_allclose(frames.loc[expected.index, smooth].to_numpy(), expected.to_numpy(), atol=1e-6)
    # Smoothing changes the series: the raw and smoothed columns differ somewhere.
    assert np.abs(faces[smooth].to_numpy() - faces[[prob_column(l) for l in LABELS]].to_numpy()).max() > 1e-3
    if method == "window":      # the validation rule for the group catches a smoothed row that no longer sums to 1
        path = sorted(out.glob("frames/video_id=s-*/*.parquet"))[0]
        table = pq.read_table(path)
        column = table.column(smooth_column("happy")).to_numpy(zero_copy_only=False).copy()
        column[0] += 0.5
        i = table.schema.get_field_index(smooth_column("happy"))
        pq.write_table(table.set_column(i, table.schema.field(i), pa.array(column, pa.float32())), path)
        report = validate_output(out)
        assert not report.valid and [f.column for f in report.failed] == ["smooth_*"], report.summary()
        # A further face (face_index 1) with a smoothed value: series follow the primary face only.
        table = pq.read_table(path)
        extra = table.slice(1, 1)
        extra = extra.set_column(extra.schema.get_field_index("face_index"), extra.schema.field("face_index"),
                                 pa.array([1], extra.schema.field("face_index").type))
        pq.write_table(pa.concat_tables([table, extra]), path)
        report = validate_output(out)
        further = {f.column for f in report.failed if "further faces" in f.rule}
        assert further == {smooth_column(l) for l in LABELS}, report.summary()


def test_run_validates_its_output_and_a_critical_failure_exits_4(tmp_path, single_face, capsys):
    from tests import media
    (tmp_path / "in").mkdir()
    media.face_appears_disappears_video(tmp_path / "in" / "appears.mp4", single_face, 3, 6, 3)
    out = tmp_path / "out"
    code = cli.main(["run", "--input", str(tmp_path / "in"), "--output", str(out), "--set", "progress=false"])
    printed = capsys.readouterr().out
    assert code == 0 and "VALID" in printed and (out / "validation" / "data_docs" / "index.html").is_file()
    # 6 of 12 frames have a face: coverage 0.5 below a critical minimum of 0.9 makes the output invalid.
    code = cli.main(["run", "--input", str(tmp_path / "in"), "--output", str(out), "--force",
                     "--set", "progress=false", "--set", "validation.min_face_coverage_fail=0.9"])
    printed = capsys.readouterr().out
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert code == EXIT_INVALID and "INVALID" in printed and "face_coverage" in printed
    assert manifest["validation"]["valid"] is False
    assert manifest["validation"]["failed"][0]["table"] == "videos"


def test_validation_can_be_switched_off(tmp_path, single_face):
    shutil.copy(single_face, tmp_path / "s.mp4")
    manifest = execute(load_config(None, {"input": str(tmp_path), "output": str(tmp_path / "out")},
                                   ["progress=false", "validation.enabled=false"]))
    assert "validation" not in manifest and not (tmp_path / "out" / "validation").exists()


def test_neutral_baseline_is_the_median_of_neutral_rows_or_nothing():
    values = np.array([[1.0, 10], [3, 30], [2, 20], [100, 100]])
    neutral = np.array([True, True, True, False])
    np.testing.assert_allclose(neutral_baseline(values, neutral, 3), [2, 20])
    assert np.isnan(neutral_baseline(values, neutral, 4)).all()          # too few: none, not invented
    assert (load_config(sets=["features.geometry=true", "features.geometry_baseline=true"])
            .job.features.geometry_baseline)
    with pytest.raises(ConfigError, match="geometry_baseline needs geometry: true"):
        load_config(sets=["features.geometry_baseline=true"])


def test_pipeline_writes_geometry_relative_to_each_videos_neutral_frames(tmp_path, single_face):
    from tests import media
    shutil.copy(single_face, tmp_path / "s.mp4")                    # 21 of 72 frames labelled neutral
    media.face_appears_disappears_video(tmp_path / "appears.mp4", single_face, 3, 6, 3)
    out = tmp_path / "out"
    manifest = execute(load_config(None, {"input": str(tmp_path), "output": str(out)},
                                   ["progress=false", "features.geometry=true", "features.geometry_baseline=true",
                                    "features.baseline_min_frames=10", "decode.chunk_frames=16"]))
    assert manifest["frame_feature_groups"] == ["geometry", "baseline"] and manifest["validation"]["valid"]
    frames = read_table(str(out), "frames").to_pandas()
    geo = list(GEOMETRY_MEASURES)
    rel = [f"{g}_rel" for g in geo]
    with_baseline = 0
    for video_id, rows in frames[frames.face_index == 0].groupby("video_id", observed=True):
        neutral = rows[rows.emotion_label == "neutral"]
        if len(neutral) >= 10:
            expected = rows[geo].to_numpy() - neutral[geo].median().to_numpy()
            np.testing.assert_allclose(rows[rel].to_numpy(), expected, atol=1e-5)
            np.testing.assert_allclose(rows.loc[neutral.index, rel].median().to_numpy(), 0, atol=1e-5)
            with_baseline += 1
        else:                                   # the 6-frame clip: too few neutral frames for a baseline
            assert rows[rel].isna().all().all()
    assert with_baseline == 1
    assert frames.loc[~frames.face_found, rel].isna().all().all()


def test_a_failed_series_write_removes_the_videos_frames_and_is_retried(tmp_path, single_face, monkeypatch):
    """A write failing on the 2nd of a video's 5 frame files: no file of it is committed (neither
    old-schema originals nor temporary files), its row says failed with no frames, the output is
    VALID; the next run processes it again."""
    import transforms.series as series
    from tests import media
    (tmp_path / "in").mkdir()
    shutil.copy(single_face, tmp_path / "in" / "s.mp4")
    media.face_appears_disappears_video(tmp_path / "in" / "appears.mp4", single_face, 3, 6, 3)
    real_write = series.write_parquet
    calls = []

    def failing_write(table, path, metadata=None):
        if "video_id=s-" in path:
            calls.append(path)
            if len(calls) == 2:
                raise OSError("disk full")
        real_write(table, path, metadata)

    monkeypatch.setattr(series, "write_parquet", failing_write)
    sets = ["progress=false", "features.smoothing.method=ema", "decode.chunk_frames=16",
            "validation.max_failed_share_fail=null"]
    config = load_config(None, {"input": str(tmp_path / "in"), "output": str(tmp_path / "out")}, sets)
    first = execute(config)
    assert (first["counts"]["ok"], first["counts"]["failed"]) == (1, 1) and len(calls) == 2
    assert first["validation"]["valid"] is True, first["validation"]
    assert not list((tmp_path / "out" / "frames").glob("video_id=s-*/*"))
    videos = {r["video_id"][:2]: r for r in read_table(str(tmp_path / "out"), "videos").to_pylist()}
    assert (videos["s-"]["status"], videos["s-"]["frames_sampled"]) == ("failed", 0)
    assert "features: OSError: disk full" in videos["s-"]["error"]
    monkeypatch.setattr(series, "write_parquet", real_write)
    second = execute(config)
    assert (second["counts"]["processed"], second["counts"]["ok"]) == (1, 2)
    files = list((tmp_path / "out" / "frames").glob("video_id=s-*/*"))
    assert len(files) == 5 and all(smooth_column("happy") in pq.read_schema(f).names for f in files)


def test_a_series_failure_fails_its_video_keeps_one_schema_and_is_retried(tmp_path, single_face, monkeypatch):
    """Computing the series fails for one video: that video is failed (stage features) with null
    series columns, the other is ok, the output keeps one frame schema (VALID); the next run
    retries the failed video (a features failure may pass) and skips the other."""
    import transforms.series as series
    from tests import media
    (tmp_path / "in").mkdir()
    shutil.copy(single_face, tmp_path / "in" / "s.mp4")
    media.face_appears_disappears_video(tmp_path / "in" / "appears.mp4", single_face, 3, 6, 3)
    real = series._series_values

    def failing_for_s(files, labels, settings):
        if "video_id=s-" in files[0]:
            raise MemoryError("series of s")
        return real(files, labels, settings)

    monkeypatch.setattr(series, "_series_values", failing_for_s)
    sets = ["progress=false", "features.smoothing.method=window", "validation.max_failed_share_fail=null"]
    first = execute(load_config(None, {"input": str(tmp_path / "in"), "output": str(tmp_path / "out")}, sets))
    assert (first["counts"]["ok"], first["counts"]["failed"]) == (1, 1)
    assert first["validation"]["valid"] is True, first["validation"]
    letters = read_table(str(tmp_path / "out"), "dead_letters").to_pylist()
    assert [(d["stage"], d["error_type"], d["source_path"]) for d in letters] == [
        ("features", "MemoryError", str(tmp_path / "in" / "s.mp4"))]
    frames = read_table(str(tmp_path / "out"), "frames").to_pandas()
    failed = frames.video_id.str.startswith("s-")
    assert frames.loc[failed, smooth_column("happy")].isna().all()
    assert frames.loc[~failed & frames.face_found, smooth_column("happy")].notna().all()
    monkeypatch.setattr(series, "_series_values", real)
    second = execute(load_config(None, {"input": str(tmp_path / "in"), "output": str(tmp_path / "out")}, sets))
    c = second["counts"]
    assert (c["processed"], c["skipped"], c["ok"], c["failed"]) == (1, 1, 2, 0)
    assert second["validation"]["valid"] is True


def test_a_validation_that_cannot_complete_marks_the_run_invalid(tmp_path, single_face, monkeypatch, capsys):
    """The data is committed; the verdict is 'not valid' in both manifests and the exit code is 4."""
    import pipelines.validation.job as validate

    def broken(*args, **kwargs):
        raise RuntimeError("duckdb went away")

    monkeypatch.setattr(validate, "validate_output", broken)
    shutil.copy(single_face, tmp_path / "s.mp4")
    out = tmp_path / "out"
    code = cli.main(["run", "--input", str(tmp_path / "s.mp4"), "--output", str(out), "--set", "progress=false"])
    assert code == EXIT_INVALID and "could not complete: RuntimeError: duckdb went away" in capsys.readouterr().out
    manifest = json.loads((out / "run_manifest.json").read_text())
    kept = json.loads((out / "runs" / manifest["run_id"] / "run_manifest.json").read_text())
    assert manifest["validation"]["valid"] is False and kept["validation"] == manifest["validation"]
    assert read_table(str(out), "frames").num_rows == 72
