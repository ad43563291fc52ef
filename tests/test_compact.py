"""`affectflow compact`: a snapshot with the same rows as the per-video tables, kept current by
signature, stale after a run that changes the tables, ignored by runs and validation."""
from __future__ import annotations

import shutil

import duckdb
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main
from pipelines.compact import COMPACT_DIR, compact_state, is_stale
from tests import media


@pytest.fixture
def output(tmp_path, single_face):
    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.copy(single_face, archive / "a.mp4")
    media.face_appears_disappears_video(archive / "b.mp4", single_face, 4, 8, 4)
    media.zero_byte_file(archive / "broken.mp4")
    out = tmp_path / "out"
    assert main(["run", "--input", str(archive), "--output", str(out), "--set", "progress=false"]) == 1
    return archive, out


def _rows(sql: str) -> list[tuple]:
    return sorted(duckdb.sql(sql).fetchall())


def test_the_snapshot_holds_every_row_of_every_table_sorted_by_video(output, capsys):
    _, out = output
    assert main(["compact", str(out)]) == 0
    assert "compacted" in capsys.readouterr().out
    snap = out / COMPACT_DIR
    parts = f"'{out}/frames/*/*.parquet'"
    for table, path in (("frames", f"'{snap}/frames/*.parquet'"), ("videos", f"'{snap}/videos.parquet'"),
                        ("dead_letters", f"'{snap}/dead_letters.parquet'")):
        original = f"read_parquet('{out}/{table}/*/*.parquet', hive_partitioning = true)"
        assert _rows(f"SELECT * EXCLUDE (video_id), video_id::VARCHAR FROM {original}") == _rows(
            f"SELECT * EXCLUDE (video_id), video_id FROM read_parquet({path})"), table
    assert _rows(f"SELECT video_id::VARCHAR, avg(prob_happy), count(*) FROM read_parquet({parts}, "
                 "hive_partitioning = true) GROUP BY 1") == _rows(
        f"SELECT video_id, avg(prob_happy), count(*) FROM '{snap}/frames/*.parquet' GROUP BY 1")
    frames = pq.read_table(next((snap / "frames").glob("*.parquet")), columns=["video_id", "frame_index"]).to_pylist()
    assert frames == sorted(frames, key=lambda r: (r["video_id"], r["frame_index"]))   # a video's rows together
    state = compact_state(str(out))
    assert state["rows"]["videos"] == 3 and state["rows"]["dead_letters"] == 1 and not is_stale(str(out))
    assert main(["validate", str(out)]) == 0                                # the suites ignore the snapshot


def test_reruns_leave_the_snapshot_current_until_they_change_the_tables(output, single_face, capsys):
    archive, out = output
    assert main(["compact", str(out)]) == 0
    first = compact_state(str(out))
    assert main(["compact", str(out)]) == 0
    assert "already reflects" in capsys.readouterr().out and compact_state(str(out)) == first
    assert main(["run", "--input", str(archive), "--output", str(out), "--set", "progress=false"]) == 0
    assert not is_stale(str(out)) and "compact again" not in capsys.readouterr().out   # nothing changed
    media.write_video(archive / "b.mp4", media.read_frames(single_face, 10))           # one video changes
    assert main(["run", "--input", str(archive), "--output", str(out), "--set", "progress=false"]) == 0
    assert is_stale(str(out)) and "run affectflow compact again" in capsys.readouterr().out
    assert main(["compact", str(out)]) == 0
    assert not is_stale(str(out)) and compact_state(str(out))["signature"] != first["signature"]
    b_rows = duckdb.sql(f"SELECT count(*) FROM '{out}/{COMPACT_DIR}/frames/*.parquet' "
                        "WHERE video_id LIKE 'b-%'").fetchall()[0][0]
    assert b_rows == 10
    assert not list(out.glob(".compact*"))                                  # no partial or old snapshot left


def test_files_with_other_columns_are_compacted_by_name(output):
    _, out = output
    last = sorted((out / "videos").glob("video_id=*/*.parquet"))[-1]
    pq.write_table(pq.read_table(last).drop_columns(["codec"]), last)
    assert main(["compact", str(out)]) == 0
    codecs = duckdb.sql(f"SELECT count(codec), count(*) FROM '{out}/{COMPACT_DIR}/videos.parquet'").fetchall()[0]
    assert codecs[1] == 3 and codecs[0] < 3


def test_compact_refuses_what_is_not_an_output(tmp_path, capsys):
    assert main(["compact", str(tmp_path)]) == 2
    assert "not an affectflow output" in capsys.readouterr().err
