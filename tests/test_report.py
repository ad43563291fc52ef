"""`affectflow report`: one offline HTML page whose numbers are the tables' numbers.

A run over real faces (cuts of the reference clip, a clip whose face comes and goes), a
faceless clip and a file that is not a video; a classifier's prediction rows written by hand
for one video. The page is parsed and its figures are compared with DuckDB queries over the
same Parquet files.
"""
from __future__ import annotations

import datetime as dt
from html.parser import HTMLParser
from pathlib import Path

import duckdb
import pytest

from pipelines.cli import main
from tests import media
from tests.test_training import _sets

CUTS = [("sad0", 0.0, 1.0), ("sad1", 1.0, 2.0), ("happy0", 10.0, 11.0), ("happy1", 11.0, 12.0)]


class Page(HTMLParser):
    """What the tests read back from the page: tags, attributes, tables' data rows, timelines."""

    def __init__(self, text: str):
        super().__init__()
        self.open: list[str] = []
        self.attributes: list[tuple[str, str, str]] = []
        self.timelines: list[str] = []
        self.rows: dict[str, dict[str, str]] = {}       # table id -> data key -> count
        self._table, self._key, self._cells = None, None, []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag not in ("img", "meta", "br", "hr", "input"):
            self.open.append(tag)
        self.attributes += [(tag, k, v or "") for k, v in attrs.items()]
        if tag == "section" and "timeline" in attrs.get("class", ""):
            self.timelines.append(attrs["data-video"])
        if tag == "table":
            self._table = attrs.get("id")
        if tag == "tr" and self._table:
            keys = [v for k, v in attrs.items() if k.startswith("data-")]
            self._key, self._cells = (keys[0] if keys else None), []

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()
        if tag == "tr" and self._table and self._key is not None:
            self.rows.setdefault(self._table, {})[self._key] = self._cells[-1]
        if tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._table and self.open and self.open[-1] == "td":
            self._cells.append(data)


@pytest.fixture(scope="module")
def archive(tmp_path_factory, wolfgang, single_face):
    root = tmp_path_factory.mktemp("report")
    videos = root / "videos"
    media.cut_clips(wolfgang, videos, CUTS)
    media.face_appears_disappears_video(videos / "comes_and_goes.mp4", single_face)
    media.no_face_video(videos / "nobody.mp4")
    media.random_bytes_file(videos / "not_a_video.mp4")
    out = root / "out"
    code = main(["run", "--input", str(videos), "--output", str(out),
                 *_sets(["features.blendshapes=true", "progress=false"])])
    assert code == 1                                               # the file that is not a video failed
    return out


def _query(out: Path, sql: str) -> list[tuple]:
    return duckdb.sql(sql.replace("VIDEOS", f"read_parquet('{out}/videos/*/*.parquet', hive_partitioning = true)")
                      ).fetchall()


def _ids(out: Path) -> dict[str, str]:
    """file stem -> video id (ids carry a hash of the path)."""
    return {Path(p).stem: v for v, p in _query(out, "SELECT video_id, source_path FROM VIDEOS")}


def _write_prediction(out: Path, video_id: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from schemas.predictions import prediction_file_schema
    row = {"model_sha256": "0" * 64, "model_kind": "rnn-attention", "task": "binary", "feature_set": "appearance",
           "status": "ok", "predicted_label": "positive", "confidence": 0.75, "prob_negative": 0.25,
           "prob_positive": 0.75, "frames_total": 8, "frames_valid": 8, "error": None, "source": "x", "run_id": "r",
           "predicted_at": dt.datetime.now(dt.timezone.utc)}
    folder = out / "predictions" / "model=rnn-attention.appearance.binary" / f"video_id={video_id}"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([row], schema=prediction_file_schema(("negative", "positive"))),
                   folder / "part-00000.parquet")


def test_the_report_is_one_offline_page_whose_numbers_are_the_tables(archive, tmp_path, capsys):
    out = archive
    ids = _ids(out)
    _write_prediction(out, ids["happy0"])
    dest = tmp_path / "rep"
    capsys.readouterr()
    assert main(["report", str(out), "--dest", str(dest)]) == 0
    assert str(dest / "archive.html") in capsys.readouterr().out
    text = (dest / "archive.html").read_text()
    page = Page(text)
    assert page.open == []                                          # every element closed in order
    assert "http://" not in text and "https://" not in text and "<link" not in text
    assert all(v.startswith("data:image/png;base64,") for tag, k, v in page.attributes if k == "src")
    hrefs = [v for tag, k, v in page.attributes if k == "href"]
    assert any(h.endswith("out/run_manifest.json") and not h.startswith("/") for h in hrefs)
    assert all((dest / h).resolve().is_file() for h in hrefs)       # links resolve, relative to the page

    status = dict(_query(out, "SELECT status, count(*) FROM VIDEOS GROUP BY 1"))
    assert {k: int(v) for k, v in page.rows["status-counts"].items()} == status == {"ok": 5, "no_face": 1,
                                                                                     "failed": 1}
    for column in ("top1_label", "threshold_label", "broad_threshold_label"):
        counts = dict(_query(out, f"SELECT coalesce({column}, '(none)'), count(*) FROM VIDEOS "
                                  "WHERE status <> 'failed' GROUP BY 1"))
        assert {k: int(v) for k, v in page.rows[f"labels-{column}"].items()} == counts
    bins = {int(k): int(v) for k, v in page.rows["coverage-bins"].items()}
    assert sum(bins.values()) == 6 and bins[0] == 1                 # the faceless clip: coverage 0
    low, = _query(out, "SELECT count(*) FROM VIDEOS WHERE status <> 'failed' AND face_coverage >= 0.9")[0]
    assert bins[9] == low

    ok = sorted(v for v, in _query(out, "SELECT video_id FROM VIDEOS WHERE status = 'ok'"))
    assert page.timelines == ok                                     # by default: the videos with a face, by id
    section = text.split(f"data-video='{ids['happy0']}'")[1].split("</section>")[0]
    assert "rnn-attention.appearance.binary" in section and "positive" in section
    assert "fer_mini_xception" in text and "threshold 0.2, fallback neutral" in text


def test_chosen_videos_get_their_timelines_and_unknown_ones_a_clear_error(archive, tmp_path, capsys):
    out = archive
    ids = _ids(out)
    chosen = [ids["nobody"], ids["comes_and_goes"]]
    assert main(["report", str(out), "--videos", ",".join(chosen), "--dest", str(tmp_path), "--rows", "3"]) == 0
    text = (tmp_path / "archive.html").read_text()
    page = Page(text)
    assert page.timelines == chosen
    assert "the first 3 of 7 by id" in text and text.count("<tr>") >= 3
    capsys.readouterr()
    assert main(["report", str(out), "--videos", "nope", "--dest", str(tmp_path)]) == 2
    assert "nope is not a video of" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_video_files_with_other_columns_are_read_by_name(archive, tmp_path):
    """A file without a column the first file has (runs that carried other manifest columns): the
    cheap binding to the first file's columns fails and the report reads every file by name."""
    import shutil
    import pyarrow.parquet as pq
    from pipelines.archive_report import _connect, overview, with_videos
    out = tmp_path / "out"
    shutil.copytree(archive, out)
    last = sorted((out / "videos").glob("video_id=*/*.parquet"))[-1]
    pq.write_table(pq.read_table(last).drop_columns(["duration_s"]), last)
    first_binding = _connect(str(out), union_by_name=False)
    with pytest.raises(duckdb.Error, match="schema mismatch"):
        overview(first_binding, 100)
    first_binding.close()
    view = with_videos(str(out), lambda con: overview(con, 100))
    assert view.by_status == {"failed": 1, "no_face": 1, "ok": 5} and len(view.rows) == 7
    assert view.rows[-1]["duration_s"] is None and view.rows[0]["duration_s"] > 0


def test_faceless_stretches_are_found_from_the_frames():
    import numpy as np
    from pipelines.archive_report import faceless_spans
    times = np.arange(8) * 0.5
    face = np.array([False, False, True, True, False, True, True, False])
    assert faceless_spans(times, face) == [(0.0, 1.0), (2.0, 2.5), (3.5, 4.0)]
    assert faceless_spans(times, np.ones(8, bool)) == []


def test_the_run_summary_points_at_the_report(archive, capsys):
    from pipelines.cli.summary import print_summary
    from pipelines.output.state import latest_manifest
    print_summary(latest_manifest(str(archive)))
    assert f"affectflow report {archive}" in capsys.readouterr().out
