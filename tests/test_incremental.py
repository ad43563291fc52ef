"""Incremental, idempotent reruns and provenance, with exact row counts."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipelines.output import commit as outputs
from pipelines.config import load_config
from pipelines.extract import execute
from pipelines.output.layout import read_table
from tests import media


def _run(archive, output, *sets, force=False):
    return execute(load_config(None, {"input": str(archive), "output": str(output)}, ["progress=false", *sets]),
                   force=force)


def _frame_rows(output) -> dict[str, int]:
    frames = read_table(str(output), "frames").to_pandas()
    return frames.groupby(frames["video_id"].astype(str)).size().to_dict()


@pytest.fixture
def archive(tmp_path, single_face):
    folder = tmp_path / "archive"
    folder.mkdir()
    shutil.copy(single_face, folder / "a.mp4")                                 # 72 frames
    media.face_appears_disappears_video(folder / "b.mp4", single_face, 4, 8, 4)  # 16 frames
    media.zero_byte_file(folder / "broken.mp4")
    return folder


def test_unchanged_archive_processes_nothing(archive, tmp_path):
    out = tmp_path / "out"
    first = _run(archive, out)
    assert (first["counts"]["processed"], first["counts"]["skipped"]) == (3, 0)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    second = _run(archive, out)
    c = second["counts"]
    assert (c["matched"], c["processed"], c["skipped"]) == (3, 0, 3)
    assert (c["ok"], c["no_face"], c["failed"], c["accounted"]) == (2, 0, 1, True)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == before      # nothing rewritten
    assert _frame_rows(out) == {v: n for v, n in _frame_rows(out).items()} and sum(_frame_rows(out).values()) == 88


def test_new_and_changed_files_are_processed_exactly(archive, tmp_path, single_face):
    out = tmp_path / "out"
    _run(archive, out)
    media.no_face_video(archive / "c.mp4", n=12)                           # new
    frames = media.read_frames(single_face, 10)
    media.write_video(archive / "b.mp4", frames)                            # changed: now 10 face frames
    run = _run(archive, out)
    assert (run["counts"]["processed"], run["counts"]["skipped"]) == (2, 2)
    videos = read_table(str(out), "videos").to_pandas().set_index("source_path")
    processed = videos[videos.run_id == run["run_id"]].index.map(lambda p: Path(p).name)
    assert sorted(processed) == ["b.mp4", "c.mp4"]
    rows = {Path(p).name: n for p, n in zip(videos.index, videos.frames_sampled)}
    assert rows == {"a.mp4": 72, "b.mp4": 10, "c.mp4": 12, "broken.mp4": 0}
    assert sum(_frame_rows(out).values()) == 72 + 10 + 12                  # b's 16 old rows are gone


def test_changed_settings_reprocess_and_force_reprocesses(archive, tmp_path):
    out = tmp_path / "out"
    _run(archive, out)
    assert _run(archive, out, "faces.min_score=0.8")["counts"]["processed"] == 3
    assert _run(archive, out, "faces.min_score=0.8")["counts"]["processed"] == 0
    assert _run(archive, out, "faces.min_score=0.8", force=True)["counts"]["processed"] == 3
    assert sum(_frame_rows(out).values()) == 88


def test_changed_aggregate_settings_relabel_without_decoding(archive, tmp_path):
    """The threshold decides labels only: a rerun recomputes them from each row's counts."""
    out = tmp_path / "out"
    _run(archive, out)
    frames_before = {p: p.stat().st_mtime_ns for p in (out / "frames").rglob("*.parquet")}
    run = _run(archive, out, "aggregate.threshold=1.0", "aggregate.fallback=top1")
    c = run["counts"]
    assert (c["processed"], c["skipped"], c["relabelled"], c["accounted"]) == (0, 3, 3, True)
    videos = read_table(str(out), "videos").to_pandas()
    assert set(videos.threshold) == {1.0} and set(videos.fallback) == {"top1"}
    ok = videos[videos.status == "ok"]
    assert (ok.threshold_label == ok.top1_label).all()        # no emotion fills every frame: the Top-1 fallback
    assert {p: p.stat().st_mtime_ns for p in (out / "frames").rglob("*.parquet")} == frames_before
    assert run["validation"]["valid"] is True, run["validation"]


def test_settings_of_steps_that_are_off_do_not_force_a_rerun(archive, tmp_path):
    """A smoothing window while smoothing is off, or baseline_min_frames without the baseline,
    changes no row: such a change reprocesses nothing; switching the step on reprocesses all."""
    out = tmp_path / "out"
    _run(archive, out)
    unused = ["features.smoothing.window=9", "features.smoothing.alpha=0.9", "features.baseline_min_frames=3"]
    assert _run(archive, out, *unused)["counts"]["processed"] == 0
    window = _run(archive, out, "features.smoothing.method=window")
    assert window["counts"]["processed"] == 3
    assert _run(archive, out, "features.smoothing.method=window", "features.smoothing.alpha=0.9")["counts"]["processed"] == 0
    assert _run(archive, out, "features.smoothing.method=window", "features.smoothing.window=3")["counts"]["processed"] == 3


def test_a_run_that_would_mix_frame_schemas_is_refused(archive, tmp_path):
    """Other feature groups over part of an output would leave two frame schemas in it: refused
    with a message naming the folder; over every video already there it goes ahead."""
    from core.errors import ConfigError
    out = tmp_path / "out"
    _run(archive, out)
    with pytest.raises(ConfigError, match="would mix two schemas"):
        _run(archive / "a.mp4", out, "features.smoothing.method=ema")
    assert _run(archive, out, "features.smoothing.method=ema")["frame_feature_groups"] == ["smoothing"]
    assert _run(archive / "a.mp4", out, "features.smoothing.method=ema")["counts"]["processed"] == 0
    # broken.mp4 has no frame rows: leaving it out cannot mix schemas.
    (archive / "broken.mp4").unlink()
    assert _run(archive, out)["frame_feature_groups"] == []


def test_crash_during_commit_then_rerun_completes_without_duplicates(archive, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = outputs._replace_partition
    calls = {"n": 0}

    def crash_after_four(*args):
        calls["n"] += 1
        if calls["n"] > 4:              # 3 tables per video: the first video commits, the second half-way
            raise KeyboardInterrupt("simulated crash")
        return real(*args)

    monkeypatch.setattr(outputs, "_replace_partition", crash_after_four)
    with pytest.raises(KeyboardInterrupt):
        _run(archive, out)
    monkeypatch.setattr(outputs, "_replace_partition", real)
    assert (out / "_staging").exists()
    committed = {p.name for p in (out / "videos").iterdir()}
    assert len(committed) == 1
    run = _run(archive, out)                # finishes the interrupted commit first: nothing to decode again
    c = run["counts"]
    assert (c["matched"], c["processed"], c["skipped"], c["accounted"]) == (3, 0, 3, True)
    assert len(run["recovered_commits"]) == 1
    assert sum(_frame_rows(out).values()) == 88
    assert read_table(str(out), "videos").num_rows == 3
    assert not (out / "_staging").exists()


def test_every_video_row_traces_to_its_run_manifest(archive, tmp_path):
    out = tmp_path / "out"
    run = _run(archive, out)
    for row in read_table(str(out), "videos").to_pylist():
        manifest = json.loads((out / "runs" / row["run_id"] / "run_manifest.json").read_text())
        assert manifest["settings_fingerprint"] == row["settings_fingerprint"]
        models = json.loads(row["models"])
        assert {m["name"] for m in models} == {m["name"] for m in manifest["models"]}
        assert {m["name"]: m["sha256"] for m in models} == {m["name"]: m["sha256"] for m in manifest["models"]}
        assert manifest["config"]["job"]["aggregate"]["threshold"] == row["threshold"]
    assert json.loads((out / "run_manifest.json").read_text())["run_id"] == run["run_id"]


def test_unchanged_local_files_never_reach_the_pipeline(archive, tmp_path, monkeypatch, single_face):
    """The run hashes local inputs with a kept row itself: a rerun where nothing changed starts no
    pipeline and keeps the previous validation verdict; a changed file is all the pipeline sees."""
    import pipelines.extract as extract
    out = tmp_path / "out"
    first = _run(archive, out)
    handed: list[list[str]] = []
    real = extract.run_pipeline
    monkeypatch.setattr(extract, "run_pipeline",
                        lambda config, plan: (handed.append(sorted(v.path for v in plan.inputs)), real(config, plan)))
    files = {p: p.read_bytes() for p in out.rglob("*.parquet")}
    second = _run(archive, out)
    assert handed == [] and second["counts"]["skipped"] == 3
    assert {p: p.read_bytes() for p in out.rglob("*.parquet")} == files                # the same bytes, no file more
    assert second["validation"]["valid"] is True and second["validation"]["reused_from"] == first["run_id"]
    third = _run(archive, out)                                                         # a verdict carried twice names
    assert third["validation"]["reused_from"] == first["run_id"]                       # the run that validated
    other = _run(archive, out, "validation.min_face_coverage_warn=0.9")                # other rules: validated again
    assert handed == [] and "reused_from" not in other["validation"] and other["validation"]["warnings"]

    media.write_video(archive / "b.mp4", media.read_frames(single_face, 10))           # changed bytes
    changed = _run(archive, out, "validation.min_face_coverage_warn=0.9")
    assert handed == [[str(archive / "b.mp4")]] and changed["counts"]["processed"] == 1
    assert "reused_from" not in changed["validation"]


def test_a_default_run_does_not_import_tensorflow(archive, tmp_path):
    """The TF Lite models run on LiteRT: start-up without TensorFlow's 2.5 s and 500 MB."""
    import subprocess
    import sys
    code = ("import sys; from pipelines.cli import main; code = main(sys.argv[1:]); "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code, "run", "--input", str(archive), "--output",
                           str(tmp_path / "out"), "--set", "progress=false", "--set", "validation.enabled=false"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 1, done.stderr                      # broken.mp4 fails; the others are ok
    assert done.stdout.strip().splitlines()[-1] == "False False"


def test_end_of_run_validation_reads_the_changed_videos_and_validate_reads_all(archive, tmp_path, single_face, capsys):
    """After a run that wrote one video, its validation reads that video's frame files (and every
    video row); a damaged frame file of an untouched video is for `affectflow validate` (or
    validation.after_run=all) to find."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pipelines.cli import main
    out = tmp_path / "out"
    _run(archive, out)
    a_file = next(p for p in (out / "frames").glob("video_id=a-*/*.parquet"))
    table = pq.read_table(a_file)
    index = table.schema.get_field_index("prob_happy")
    broken = table.set_column(index, table.schema.field(index), pa.array([2.0] * table.num_rows, pa.float32()))
    pq.write_table(broken, a_file)                                              # probabilities that sum past 1
    media.write_video(archive / "b.mp4", media.read_frames(single_face, 10))   # b changes; a does not
    changed = _run(archive, out)
    assert changed["counts"]["processed"] == 1 and changed["validation"]["valid"] is True
    results = json.loads((out / "validation" / "results.json").read_text())
    assert results["frames_checked_for"] == "1 video(s) the run wrote"
    assert main(["validate", str(out)]) == 4                                    # the full pass finds a's file
    assert "prob_happy" in capsys.readouterr().out
    media.write_video(archive / "b.mp4", media.read_frames(single_face, 12))
    full = _run(archive, out, "validation.after_run=all")
    assert full["validation"]["valid"] is False and full["validation"]["failed"]
