"""Hostile runs: what an unattended tool must survive without silent damage (issue of trust).

Each test reproduces a way to get wrong output or lose data and checks it is now a clear error
or a correct result: concurrent runs, a crash inside the commit, manifest columns that change
type or name, ids that clash or change, damaged files in the output, bad output paths, odd
folder names and links, deleted inputs, and exit codes that mean one thing each.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from core.errors import OutputLockedError
from pipelines.cli import main
from pipelines.config import load_config
from pipelines.extract import execute
from pipelines.output import commit
from pipelines.output.layout import read_table
from pipelines.output.lock import LOCK_FILE, OutputLock
from tests import media

FAST = ["progress=false", "decode.sample_fps=5"]


def _run(inputs, output, *sets, **kwargs):
    return execute(load_config(None, {"input": str(inputs), "output": str(output)}, [*FAST, *sets]), **kwargs)


@pytest.fixture
def archive(tmp_path, single_face):
    folder = tmp_path / "archive"
    (folder / "site1").mkdir(parents=True)
    shutil.copy(single_face, folder / "site1" / "a.mp4")
    media.face_appears_disappears_video(folder / "b.mp4", single_face, 4, 8, 4)
    return folder


def _tables(output) -> dict[str, pd.DataFrame]:
    """Every table without the columns that name the run."""
    keys = {"frames": ["video_id", "frame_index", "face_index"], "videos": ["video_id"],
            "dead_letters": ["video_id", "stage"]}
    out = {}
    for table, key in keys.items():
        df = read_table(str(output), table).to_pandas()
        df["video_id"] = df["video_id"].astype(str)
        out[table] = df.drop(columns=[c for c in ("run_id", "processed_at") if c in df]).sort_values(
            key, ignore_index=True)
    return out


# --- one run at a time -----------------------------------------------------------------------

def test_a_second_run_refuses_while_the_first_holds_the_output(archive, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    staging = out / "_staging" / "first-run"
    staging.mkdir(parents=True)
    (staging / "keep.txt").write_text("the first run's work")
    with OutputLock(str(out), "first-run", "affectflow run ..."):
        code = main(["run", "--input", str(archive), "--output", str(out), *sum((["--set", s] for s in FAST), [])])
        assert code == 3
        err = capsys.readouterr().err
        assert "is in use by run first-run" in err and f"pid {os.getpid()}" in err
        assert (staging / "keep.txt").read_text() == "the first run's work"       # not emptied
    assert not (out / LOCK_FILE).exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(archive, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket
    (out / LOCK_FILE).write_text(json.dumps({"run_id": "crashed", "pid": int(dead.stdout), "host": socket.gethostname()}))
    assert _run(archive, out)["counts"]["accounted"] is True
    assert not (out / LOCK_FILE).exists()


def test_waiting_for_the_lock_gives_up_with_the_holders_name(tmp_path):
    with OutputLock(str(tmp_path), "holder"):
        with pytest.raises(OutputLockedError, match="in use by run holder"):
            with OutputLock(str(tmp_path), "waiter", wait_s=0.3, poll_s=0.1):
                pass


# --- the commit ------------------------------------------------------------------------------

def test_a_crash_between_the_two_renames_loses_nothing(archive, tmp_path, monkeypatch):
    """The old partition moved out, the new one not yet in: the next run finishes the commit from
    the journal, and the tables equal those of a clean run."""
    clean = tmp_path / "clean"
    _run(archive, clean)
    out = tmp_path / "out"
    _run(archive, out)
    real_replace = os.replace
    calls = {"n": 0}

    def crash_on_the_second_rename(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:                         # dest -> trash done, staged -> dest not
            raise KeyboardInterrupt("power cut")
        return real_replace(src, dst)

    monkeypatch.setattr(commit.os, "replace", crash_on_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        _run(archive, out, force=True)
    monkeypatch.setattr(commit.os, "replace", real_replace)
    rerun = _run(archive, out)
    assert len(rerun["recovered_commits"]) == 1
    assert rerun["counts"]["processed"] == 0 and rerun["counts"]["accounted"]
    for table, frame in _tables(clean).items():
        pd.testing.assert_frame_equal(frame, _tables(out)[table], check_dtype=False, obj=table)


def test_a_video_whose_frames_do_not_reconcile_with_its_row_is_repaired(archive, tmp_path):
    out = tmp_path / "out"
    _run(archive, out)
    before = _tables(out)["frames"]
    victim = next((out / "frames").glob("video_id=*"))
    shutil.rmtree(victim)                                    # frames lost, row still there
    run = _run(archive, out)
    assert run["repaired"] == [victim.name.split("=", 1)[1]] and run["counts"]["processed"] == 1
    pd.testing.assert_frame_equal(before, _tables(out)["frames"], check_dtype=False)


def test_a_truncated_parquet_file_makes_validate_exit_4_and_run_repair_it(archive, tmp_path, capsys):
    out = tmp_path / "out"
    _run(archive, out)
    assert json.loads((out / "validation" / "results.json").read_text())["valid"] is True
    frame_file = next((out / "frames").rglob("*.parquet"))
    frame_file.write_bytes(frame_file.read_bytes()[:200])
    assert main(["validate", str(out)]) == 4
    printed = capsys.readouterr().out
    assert "INVALID" in printed and "unreadable" in printed
    assert json.loads((out / "validation" / "results.json").read_text())["valid"] is False
    assert json.loads((out / "run_manifest.json").read_text())["validation"]["valid"] is False
    run = _run(archive, out)
    assert len(run["repaired"]) == 1 and run["validation"]["valid"] is True


# --- manifests -------------------------------------------------------------------------------

def _manifest(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_a_carried_column_that_changes_type_is_refused_before_any_work(archive, tmp_path):
    out = tmp_path / "out"
    _run(_manifest(tmp_path / "m1.csv", [{"path": str(archive / "b.mp4"), "video_id": "vb", "n_int": 3}]), out)
    manifest = _manifest(tmp_path / "m2.csv", [{"path": str(archive / "site1" / "a.mp4"), "video_id": "va",
                                                 "n_int": "abc"}])
    assert main(["run", "--input", str(manifest), "--output", str(out), "--set", "progress=false"]) == 2
    assert pd.read_parquet(out / "videos").shape[0] == 1          # still readable, nothing added


def test_a_column_a_later_manifest_adds_reaches_every_row(archive, tmp_path):
    out = tmp_path / "out"
    _run(_manifest(tmp_path / "m1.csv", [{"path": str(archive / "b.mp4"), "video_id": "vb", "site": "berlin"}]), out)
    run = _run(_manifest(tmp_path / "m2.csv", [{"path": str(archive / "site1" / "a.mp4"), "video_id": "va",
                                                "site": "lyon", "age": 41}]), out)
    assert run["validation"]["valid"] is True, run["validation"]
    videos = pd.read_parquet(out / "videos").set_index("video_id")
    assert videos.loc["vb", "site"] == "berlin" and pd.isna(videos.loc["vb", "age"]) and videos.loc["va", "age"] == 41
    import duckdb
    ages = duckdb.sql(f"select video_id, age from '{out}/videos/**/*.parquet' order by video_id").fetchall()
    assert ages == [("va", 41), ("vb", None)]


def test_a_manifest_column_named_like_a_table_column_is_refused_first(archive, tmp_path, capsys):
    manifest = _manifest(tmp_path / "m.csv", [{"path": str(archive / "b.mp4"), "status": "new"}])
    assert main(["run", "--input", str(manifest), "--output", str(tmp_path / "out"), "--set", "progress=false"]) == 2
    assert "clash with video table columns" in capsys.readouterr().err
    assert not (tmp_path / "out" / "videos").exists()


# --- ids -------------------------------------------------------------------------------------

def test_a_subfolder_input_keeps_the_ids_of_the_whole_archive(archive, tmp_path):
    out = tmp_path / "out"
    first = _run(archive, out)
    ids = set(read_table(str(out), "videos").column("video_id").to_pylist())
    second = _run(archive / "site1", out)
    assert second["counts"]["processed"] == 0 and second["archive_root"] == first["archive_root"]
    assert set(read_table(str(out), "videos").column("video_id").to_pylist()) == ids


def test_manifest_paths_resolve_against_the_manifest_whatever_the_working_directory(archive, tmp_path, monkeypatch):
    from pipelines.inputs import discover
    (archive / "m.csv").write_text("path\nsite1/a.mp4\n")
    monkeypatch.chdir(archive)
    here = discover("m.csv")[0]
    monkeypatch.chdir(tmp_path)
    there = discover(str(archive / "m.csv"))[0]
    by_folder = {v.path: v.video_id for v in discover(str(archive))[0]}
    assert here == there and by_folder[here[0].path] == here[0].video_id


def test_two_files_with_one_name_in_two_folders_get_two_ids(tmp_path, single_face):
    for folder in ("dupA", "dupB"):
        (tmp_path / "in" / folder).mkdir(parents=True)
        shutil.copy(single_face, tmp_path / "in" / folder / "clip.mp4")
    out = tmp_path / "out"
    _run(tmp_path / "in" / "dupA", out, f"archive_root={tmp_path / 'in'}")
    _run(tmp_path / "in" / "dupB", out)
    videos = read_table(str(out), "videos").to_pylist()
    assert len({v["video_id"] for v in videos}) == 2
    assert sorted(Path(v["source_path"]).parent.name for v in videos) == ["dupA", "dupB"]


def test_an_input_outside_the_recorded_archive_root_is_refused(archive, tmp_path, single_face):
    out = tmp_path / "out"
    _run(archive / "site1", out)                        # the root becomes archive/site1/
    assert main(["run", "--input", str(archive), "--output", str(out), "--set", "progress=false"]) == 2


def test_a_folder_named_with_a_bracket_is_a_folder_not_a_glob(tmp_path, single_face):
    folder = tmp_path / "study [2024]"
    folder.mkdir()
    shutil.copy(single_face, folder / "a.mp4")
    assert _run(folder, tmp_path / "out")["counts"]["matched"] == 1


def test_a_symlink_loop_is_a_dead_letter_not_a_missing_video(tmp_path, single_face):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(single_face, folder / "a.mp4")
    os.symlink(folder / "loop1.mp4", folder / "loop2.mp4")
    os.symlink(folder / "loop2.mp4", folder / "loop1.mp4")
    os.symlink(folder, folder / "again")                # a folder loop is walked once
    run = _run(folder, tmp_path / "out")
    c = run["counts"]
    assert (c["matched"], c["ok"], c["failed"], c["accounted"]) == (3, 1, 2, True)
    letters = read_table(str(tmp_path / "out"), "dead_letters").to_pylist()
    assert {(l["stage"], l["error_type"]) for l in letters} == {("probe", "OSError")}


# --- output paths and deleted inputs ---------------------------------------------------------

@pytest.mark.parametrize("make", ["file", "partition"])
def test_an_output_that_cannot_be_a_folder_of_tables_is_refused_first(archive, tmp_path, make, capsys):
    out = tmp_path / "out.txt" if make == "file" else tmp_path / "x" / "video_id=abc"
    if make == "file":
        out.write_text("not a folder")
    assert main(["run", "--input", str(archive), "--output", str(out), "--set", "progress=false"]) == 2
    assert "affectflow run: error: output" in capsys.readouterr().err
    assert (out.read_text() == "not a folder") if make == "file" else not out.exists()


def test_rows_of_deleted_inputs_are_reported_and_pruned_on_request(archive, tmp_path, capsys):
    out = tmp_path / "out"
    _run(archive, out)
    (archive / "b.mp4").unlink()
    run = _run(archive, out)
    assert run["counts"]["deleted_inputs"] == 1 and read_table(str(out), "videos").num_rows == 2
    code = main(["run", "--input", str(archive), "--output", str(out), "--prune", *sum((["--set", s] for s in FAST), [])])
    assert code == 0 and "removed (--prune)" in capsys.readouterr().out
    assert read_table(str(out), "videos").num_rows == 1 and read_table(str(out), "frames").num_rows > 0


# --- exit codes, failures, re-aggregation ----------------------------------------------------

def test_exit_1_is_for_failures_of_this_run_only(archive, tmp_path, capsys):
    media.zero_byte_file(archive / "broken.mp4")
    args = ["run", "--input", str(archive), "--output", str(tmp_path / "out"), *sum((["--set", s] for s in FAST), [])]
    assert main(args) == 1
    assert main(args) == 0                               # the same broken file, unchanged: not a new failure
    assert "1 known failures kept from earlier runs" in capsys.readouterr().out


def test_an_unexpected_error_is_exit_3_with_its_type_and_traceback_on_request(archive, tmp_path, monkeypatch, capsys):
    import pipelines.extract as extract

    def broken(*args, **kwargs):
        raise KeyError("a bug, not a usage error")

    monkeypatch.setattr(extract, "resolve_models", broken)
    args = ["run", "--input", str(archive), "--output", str(tmp_path / "out")]
    assert main(args) == 3
    assert "the run could not complete: KeyError" in capsys.readouterr().err
    assert main(["-v", *args]) == 3
    assert "Traceback" in capsys.readouterr().err
    from pipelines.cli.terminal import configure_logging
    configure_logging(False)                              # the rest of the session logs as a normal run


@pytest.mark.parametrize("command", [["validate", "{typo}"], ["aggregate", "--output", "{typo}"],
                                     ["predict", "--output", "{typo}", "--model", "{typo}-model"],
                                     ["space", "project", "--output", "{typo}", "--space", "{typo}-space"],
                                     ["compact", "{typo}"]])
def test_a_mistyped_output_folder_is_refused_and_not_created(tmp_path, capsys, command):
    typo = tmp_path / "typo"
    assert main([part.format(typo=typo) for part in command]) == 2
    assert "error:" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_version():
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("affectflow ")


def test_the_command_exits_with_mains_code_and_skips_the_final_collection(tmp_path):
    """The console script (and python -m pipelines.cli) is `command`: main's exit code, its messages
    flushed, and the live objects frozen so the interpreter's exit does not traverse them."""
    from importlib.metadata import entry_points
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "affectflow"]
    assert script.value == "pipelines.cli:command"
    code = ("import gc, sys; from pipelines.cli import command; code = command(sys.argv[1:]); "
            "print('frozen', gc.get_freeze_count() > 1000); sys.exit(code)")
    typo = tmp_path / "typo"
    result = subprocess.run([sys.executable, "-c", code, "validate", str(typo)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "is not an affectflow output" in result.stderr and "frozen True" in result.stdout
    assert not typo.exists()                # validate neither creates nor locks a folder that is no output
    module = subprocess.run([sys.executable, "-m", "pipelines.cli", "validate", str(typo)], capture_output=True,
                            text=True)
    assert module.returncode == 2 and "is not an affectflow output" in module.stderr


def test_a_failure_while_building_a_row_is_that_videos_dead_letter(archive, tmp_path, monkeypatch):
    import transforms.videos as videos
    real = videos.build_video_row

    def fails_for_b(video, info, summaries, failures, *args):
        if video.path.endswith("b.mp4") and not failures:            # the first try; the failed row then builds
            raise ValueError("row could not be built")
        return real(video, info, summaries, failures, *args)

    monkeypatch.setattr(videos, "build_video_row", fails_for_b)
    run = _run(archive, tmp_path / "out")
    assert (run["counts"]["failed"], run["counts"]["ok"], run["counts"]["accounted"]) == (1, 1, True)
    letters = read_table(str(tmp_path / "out"), "dead_letters").to_pylist()
    assert [(l["stage"], l["error_type"], l["retryable"]) for l in letters] == [("write", "ValueError", False)]
    assert run["validation"]["valid"] is True, run["validation"]


def test_retries_follow_the_type_of_the_failure(archive, tmp_path, monkeypatch):
    """A connection reset is retried by the next run; a crop error on the same bytes is not."""
    import transforms.faces as faces
    out = tmp_path / "out"
    real = faces.crop_face

    def failing(error):
        def crop(frame, box, margin, *args):
            raise error
        return crop

    monkeypatch.setattr(faces, "crop_face", failing(ConnectionResetError("the share went away")))
    _run(archive, out)
    monkeypatch.setattr(faces, "crop_face", real)
    assert _run(archive, out)["counts"]["processed"] == 2              # transient: both processed again
    monkeypatch.setattr(faces, "crop_face", failing(ValueError("crop outside the frame")))
    _run(archive, out, force=True)
    monkeypatch.setattr(faces, "crop_face", real)
    assert _run(archive, out)["counts"]["processed"] == 0              # lasting: not retried while unchanged


def test_run_aggregate_run_keeps_labels_and_skips(archive, tmp_path):
    out = tmp_path / "out"
    _run(archive, out)
    assert main(["aggregate", "--output", str(out), "--threshold", "1.0", "--fallback", "top1"]) == 0
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["kind"] == "aggregate" and manifest["config"]["job"]["aggregate"]["threshold"] == 1.0
    assert manifest["validation"]["valid"] is True, manifest["validation"]
    again = _run(archive, out, "aggregate.threshold=1.0", "aggregate.fallback=top1")
    assert (again["counts"]["processed"], again["counts"]["relabelled"]) == (0, 0)
    assert set(read_table(str(out), "videos").column("threshold").to_pylist()) == {1.0}
    back = _run(archive, out)                             # the default threshold again: relabelled, not decoded
    assert (back["counts"]["processed"], back["counts"]["relabelled"]) == (0, 2)
    assert set(read_table(str(out), "videos").column("threshold").to_pylist()) == {0.2}


def test_aggregate_on_a_folder_that_is_not_an_output_is_a_usage_error(tmp_path, capsys):
    assert main(["aggregate", "--output", str(tmp_path)]) == 2
    assert "is not an affectflow output" in capsys.readouterr().err


def test_validation_recomputes_the_labels_from_the_counts(archive, tmp_path):
    from pipelines.validation.job import validate_output
    out = tmp_path / "out"
    _run(archive, out)
    path = next((out / "videos").rglob("*.parquet"))
    table = pq.read_table(path)
    wrong = "sad" if table.column("threshold_label")[0].as_py() != "sad" else "happy"
    table = table.set_column(table.schema.get_field_index("threshold_label"), "threshold_label",
                             pa_array([wrong]))
    pq.write_table(table, path)
    report = validate_output(out)
    assert not report.valid
    assert any("labels and broad counts follow from count_*" in f.rule for f in report.failed), report.summary()


def pa_array(values):
    import pyarrow as pa
    return pa.array(values, pa.string())


def test_a_full_disk_during_validation_leaves_no_temporary_manifest(archive, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _run(archive, out, "validation.enabled=false")
    real = Path.write_text

    def disk_full(self, *args, **kwargs):
        if self.name.endswith(".tmp"):
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", disk_full)
    assert main(["validate", str(out)]) == 3
    monkeypatch.setattr(Path, "write_text", real)
    assert not list(out.rglob("*.tmp"))


def test_calibrating_on_one_class_warns(tmp_path, capsys):
    from tests.test_calibrate import known_counts, write_manifest, write_run
    from models.aggregation import AggregationSettings
    from models.registry import FER2013_LABELS
    import numpy as np
    true = ["happy"] * 4
    ids = [f"v{i}" for i in range(4)]
    write_run(tmp_path / "run", dict(zip(ids, known_counts(np.asarray(true, dtype=object)))),
              settings=AggregationSettings(FER2013_LABELS))
    manifest = write_manifest(tmp_path / "m.csv", {"video_id": ids, "label": true})
    assert main(["calibrate", "--output", str(tmp_path / "run"), "--manifest", str(manifest), "--folds", "2"]) == 0
    err = capsys.readouterr().err
    assert "only one true class" in err and "fewer than 5" in err
    assert "WARNING: the labelled videos have only one true class" in (tmp_path / "run" / "calibration" /
                                                                        "threshold.yaml").read_text()


def test_the_orchestrators_script_takes_beams_flags_as_pipeline_options():
    """Airflow's Beam operator always passes --runner=...; the script entry turns unknown flags into
    pipeline options instead of failing on them."""
    from pipelines.cli.parser import build_parser
    from pipelines.cli.run_job import as_run_arguments
    args = as_run_arguments(["--input", "in", "--output", "out", "--runner=FnApiRunner", "--save_main_session",
                             "--set", "decode.sample_fps=5"])
    assert args == ["--input", "in", "--output", "out", "--set", "pipeline_options.runner=FnApiRunner",
                    "--set", "pipeline_options.save_main_session=true", "--set", "decode.sample_fps=5"]
    parsed = build_parser("").parse_args(["run", *args])
    config = load_config(parsed.config, {"input": parsed.input, "output": parsed.output}, parsed.set)
    assert config.pipeline_options["runner"] == "FnApiRunner" and config.pipeline_options["save_main_session"] is True
