"""`affectflow report`: one offline HTML page of an output: the archive at a glance and per-video timelines.

    affectflow report OUTPUT [--videos ID,...] [--timelines N] [--rows N] [--dest DIR]

The overview is aggregated by DuckDB over the videos table's Parquet files (nothing of it is
held per video in Python): videos by status, a face-coverage histogram, the Top-1 and threshold
labels (specific and broad), the emotion model, threshold and fallback the labels were made
with, and a sortable table of the first ``rows`` videos by id. Then a timeline per video (the
ids asked for, else the first ``timelines`` videos with a face, by id): every emotion's
probability over time, raw and smoothed, faceless stretches shaded, the threshold, the video's
labels; the blendshape AU view (``au_*``) or the geometric measures (``geo_*``) when the run has
them; and the rows of every model that predicted the video (``predictions/``). Frames are read
one video at a time, so memory does not grow with the archive. The page is one file: figures are
embedded PNG, the table sorts with a few lines of inline script, nothing is fetched.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.errors import UsageError
from models.smoothing import smooth
from pipelines.html_report import STYLE, escape, new_figure, png, table
from pipelines.output.layout import sql_literal, table_files
from pipelines.output.state import latest_manifest
from schemas.columns import PARTITION_COLUMN

REPORT_FILE = "archive.html"
DEFAULT_DEST = "reports"
LABEL_COLUMNS = ("top1_label", "threshold_label", "broad_top1_label", "broad_threshold_label")
LISTED = ("video_id", "status", "top1_label", "threshold_label", "broad_top1_label", "broad_threshold_label",
          "face_coverage", "duration_s", "frames_sampled")
TRACKS_SHOWN = 6                    # AU tracks drawn per timeline: the ones that vary most
COVERAGE_BINS = 10
SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th, i) {
  th.style.cursor = 'pointer';
  th.onclick = function () {
    var body = th.closest('table').tBodies[0], rows = Array.prototype.slice.call(body.rows);
    var dir = th.dataset.dir = th.dataset.dir === 'asc' ? 'desc' : 'asc';
    rows.sort(function (a, b) {
      var x = a.cells[i].textContent, y = b.cells[i].textContent, nx = parseFloat(x), ny = parseFloat(y);
      var order = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
      return dir === 'asc' ? order : -order;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  };
});
"""


@dataclass(frozen=True)
class Overview:
    """The archive's aggregates (DuckDB over the videos table)."""
    videos: int
    by_status: dict[str, int]
    coverage: list[int]                         # videos with a face-coverage share in each tenth (failed left out)
    labels: dict[str, dict[str, int]]           # label column -> label (or "(none)") -> videos
    label_settings: list[tuple]                 # (threshold, fallback, videos)
    rows: list[dict]                            # the first ``rows`` videos by id


def _connect(output: str, union_by_name: bool):
    import duckdb
    files = table_files(output, "videos")
    if not files:
        raise UsageError(f"{output} has no videos/ table: give the output folder of an affectflow run")
    con = duckdb.connect()
    con.execute("SET memory_limit = '1GB'")
    con.execute("CREATE VIEW videos AS SELECT * FROM read_parquet([" + ", ".join(map(sql_literal, files))
                + f"], hive_partitioning = true, hive_types = {{'{PARTITION_COLUMN}': VARCHAR}}, "
                f"union_by_name = {str(union_by_name).lower()})")
    return con


def with_videos(output: str, work: Callable):
    """``work(con)`` with a DuckDB view ``videos`` over the output's video rows.

    The files are first bound to the first file's columns, which reads one footer; only when that
    fails (runs that carried other manifest columns into one output) by name over every file,
    which reads every footer: on 5,000 videos that took 1 GB against 0.4 GB.
    """
    import duckdb
    for union_by_name in (False, True):
        con = _connect(output, union_by_name)
        try:
            return work(con)
        except duckdb.Error:
            if union_by_name:
                raise
        finally:
            con.close()


def overview(con, rows: int) -> Overview:
    """The archive's aggregates and its first ``rows`` videos by id (``con``: see `with_videos`)."""
    columns = {r[0] for r in con.execute("DESCRIBE videos").fetchall()}
    by_status = dict(con.execute("SELECT status, count(*) FROM videos GROUP BY status ORDER BY status").fetchall())
    coverage = [0] * COVERAGE_BINS
    for bin_, n in con.execute(f"SELECT least(CAST(floor(face_coverage * {COVERAGE_BINS}) AS INTEGER), "
                               f"{COVERAGE_BINS - 1}), count(*) FROM videos WHERE status <> 'failed' AND "
                               "face_coverage IS NOT NULL GROUP BY 1").fetchall():
        coverage[int(bin_)] = int(n)
    labels = {c: dict(con.execute(f"SELECT coalesce({c}, '(none)'), count(*) FROM videos WHERE status <> 'failed' "
                                  "GROUP BY 1 ORDER BY 2 DESC, 1").fetchall())
              for c in LABEL_COLUMNS if c in columns}
    settings = con.execute("SELECT threshold, fallback, count(*) FROM videos WHERE status <> 'failed' "
                           "GROUP BY ALL ORDER BY 3 DESC").fetchall()
    listed = [c for c in LISTED if c in columns]
    result = con.execute(f"SELECT {', '.join(listed)} FROM videos ORDER BY {PARTITION_COLUMN} LIMIT {int(rows)}")
    names = [d[0] for d in result.description]
    listing = [dict(zip(names, r)) for r in result.fetchall()]
    total = int(con.execute("SELECT count(*) FROM videos").fetchone()[0])
    return Overview(total, {str(k): int(v) for k, v in by_status.items()}, coverage,
                    {c: {str(k): int(v) for k, v in d.items()} for c, d in labels.items()}, settings, listing)


def timeline_ids(con, output: str, requested: Sequence[str], limit: int) -> list[str]:
    """The ids asked for (UsageError naming unknown ones), else the first ``limit`` videos with a face."""
    if requested:
        known = {r[0] for r in con.execute(
            f"SELECT {PARTITION_COLUMN} FROM videos WHERE {PARTITION_COLUMN} IN ("
            + ", ".join(map(sql_literal, requested)) + ")").fetchall()}
        unknown = [v for v in requested if v not in known]
        if unknown:
            raise UsageError(f"--videos: {', '.join(unknown[:10])} {'is' if len(unknown) == 1 else 'are'} not "
                             f"a video of {output}")
        return list(dict.fromkeys(requested))
    return [r[0] for r in con.execute(
        f"SELECT {PARTITION_COLUMN} FROM videos WHERE status = 'ok' ORDER BY {PARTITION_COLUMN} "
        f"LIMIT {int(limit)}").fetchall()]


def video_rows(con, video_ids: Sequence[str]) -> dict[str, dict]:
    """video_id -> its videos row (the timelines' videos only)."""
    if not video_ids:
        return {}
    result = con.execute(f"SELECT * FROM videos WHERE {PARTITION_COLUMN} IN ("
                         + ", ".join(map(sql_literal, video_ids)) + ")")
    names = [d[0] for d in result.description]
    return {r[names.index(PARTITION_COLUMN)]: dict(zip(names, r)) for r in result.fetchall()}


def model_rows(output: str, video_ids: Sequence[str]) -> dict[str, list[dict]]:
    """video_id -> the video-level rows of every model in ``predictions/`` (empty without predictions)."""
    import duckdb
    files = sorted(str(p) for p in Path(output).glob(f"predictions/model=*/{PARTITION_COLUMN}=*/*.parquet"))
    wanted = set(video_ids)
    files = [f for f in files if Path(f).parent.name.split("=", 1)[1] in wanted]
    if not files:
        return {}
    con = duckdb.connect()
    try:
        con.execute("CREATE VIEW p AS SELECT * FROM read_parquet([" + ", ".join(map(sql_literal, files))
                    + f"], hive_partitioning = true, hive_types = {{'{PARTITION_COLUMN}': VARCHAR, 'model': VARCHAR}}, "
                    "union_by_name = true)")
        columns = {r[0] for r in con.execute("DESCRIBE p").fetchall()}
        pick = [c if c in columns else f"NULL AS {c}" for c in
                ("model", "status", "predicted_label", "confidence", "nearest_word", "cluster", "window_index")]
        # a space's video row, not its frame rows; a semantic model's first window
        video_level = "(level = 'video' OR level IS NULL)" if "level" in columns else "true"
        window = "coalesce(window_index, 0) = 0" if "window_index" in columns else "true"
        result = con.execute(f"SELECT {PARTITION_COLUMN}, {', '.join(pick)} FROM p WHERE {video_level} AND {window} "
                             f"ORDER BY {PARTITION_COLUMN}, model")
        names = [d[0] for d in result.description]
        out: dict[str, list[dict]] = {}
        for r in result.fetchall():
            row = dict(zip(names, r))
            out.setdefault(row[PARTITION_COLUMN], []).append(row)
        return out
    finally:
        con.close()


@dataclass(frozen=True)
class Timeline:
    """One video's primary-face rows in frame order, as the figure needs them."""
    times: np.ndarray                           # float64[n] seconds
    face: np.ndarray                            # bool[n]
    probs: np.ndarray                           # float32[n, emotions], NaN without a face
    smoothed: Optional[np.ndarray]              # the run's smooth_* columns, when it wrote them
    tracks: dict[str, np.ndarray]               # AU view or geometric measures, NaN without a face


def read_timeline(output: str, video_id: str, labels: Sequence[str]) -> Timeline:
    """The video's frame rows (its partition's files only)."""
    files = sorted(glob.glob(os.path.join(glob.escape(os.path.join(output, "frames", f"{PARTITION_COLUMN}={video_id}")),
                                          "*.parquet")))
    if not files:
        empty = np.zeros(0)
        return Timeline(empty, empty.astype(bool), np.zeros((0, len(labels)), np.float32), None, {})
    schema = pq.read_schema(files[0])
    prob = [f"prob_{l}" for l in labels]
    smooth_cols = [f"smooth_{l}" for l in labels]
    tracks = [n for n in schema.names if n.startswith("au") and n[2:4].isdigit()] or \
             [n for n in schema.names if n.startswith("geo_au")]
    wanted = ["frame_index", "timestamp_s", "face_found", "face_index", *prob, *tracks,
              *[c for c in smooth_cols if c in schema.names]]
    frames = pa.concat_tables([pq.read_table(f, columns=[c for c in wanted if c in pq.read_schema(f).names])
                               for f in files], promote_options="default")
    primary = pc.fill_null(pc.or_(pc.invert(frames.column("face_found")), pc.equal(frames.column("face_index"), 0)),
                           True)
    frames = frames.filter(primary).sort_by("frame_index")

    def values(names: Sequence[str]) -> np.ndarray:
        return np.column_stack([np.asarray(pc.fill_null(pc.cast(frames.column(n), pa.float32()), np.nan)
                                           .to_numpy(zero_copy_only=False), np.float32) for n in names])

    smoothed = values(smooth_cols) if all(c in frames.column_names for c in smooth_cols) else None
    return Timeline(np.asarray(frames.column("timestamp_s").to_numpy(zero_copy_only=False), np.float64),
                    np.asarray(pc.fill_null(frames.column("face_found"), False).to_numpy(zero_copy_only=False), bool),
                    values(prob), smoothed, {n: values([n])[:, 0] for n in tracks})


def faceless_spans(times: np.ndarray, face: np.ndarray) -> list[tuple[float, float]]:
    """(start, end) seconds of each run of frames without a face (a lone frame spans to the next frame)."""
    spans, start = [], None
    step = float(np.median(np.diff(times))) if len(times) > 1 else 0.04
    for i, has_face in enumerate(face):
        if not has_face and start is None:
            start = times[i]
        if has_face and start is not None:
            spans.append((float(start), float(times[i])))
            start = None
    if start is not None:
        spans.append((float(start), float(times[-1] + step)))
    return spans


def timeline_figure(timeline: Timeline, labels: Sequence[str], threshold: Optional[float], title: str) -> str:
    """Base64 PNG: probabilities (raw thin, smoothed thick), faceless stretches grey, the threshold; AU tracks."""
    from matplotlib import colormaps
    has_tracks = bool(timeline.tracks)
    fig = new_figure(9.0, 4.6 if has_tracks else 2.9)
    axes = fig.subplots(2 if has_tracks else 1, 1, sharex=True, squeeze=False)[:, 0]
    colours = colormaps["tab10"]
    smoothed = timeline.smoothed
    if smoothed is None:                        # not written by the run: an EMA over the frames with a face
        smoothed = np.full_like(timeline.probs, np.nan)
        if timeline.face.any():
            smoothed[timeline.face] = smooth(timeline.probs[timeline.face], "ema", 5, 0.3)
    for ax in axes:
        for start, end in faceless_spans(timeline.times, timeline.face):
            ax.axvspan(start, end, color="#dddddd", lw=0)
    for i, label in enumerate(labels):
        axes[0].plot(timeline.times, timeline.probs[:, i], color=colours(i % 10), lw=0.6, alpha=0.35)
        axes[0].plot(timeline.times, smoothed[:, i], color=colours(i % 10), lw=1.8, label=label)
    if threshold is not None:
        axes[0].axhline(threshold, color="black", ls="--", lw=0.8, label=f"threshold {threshold:g}")
    axes[0].set_ylim(0, 1)
    axes[0].set_ylabel("probability")
    axes[0].set_title(title, fontsize=9)
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if has_tracks:
        ranked = sorted(timeline.tracks, key=lambda n: -float(np.nanvar(timeline.tracks[n]))
                        if np.isfinite(timeline.tracks[n]).any() else 0.0)[:TRACKS_SHOWN]
        for n in ranked:
            axes[1].plot(timeline.times, timeline.tracks[n], lw=1.0, label=n)
        axes[1].set_ylabel("AU view" if ranked and not ranked[0].startswith("geo_") else "geometry")
        axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[-1].set_xlabel("seconds (grey: no face)")
    return png(fig)


def coverage_figure(coverage: Sequence[int]) -> str:
    fig = new_figure(5.0, 2.4)
    ax = fig.subplots()
    ax.bar([f"{i * 10}-{i * 10 + 10}" for i in range(len(coverage))], coverage, color="#4a7fb5")
    ax.set_xlabel("face coverage, % of sampled frames")
    ax.set_ylabel("videos")
    ax.tick_params(axis="x", labelsize=7)
    return png(fig)


def _counts_table(element_id: str, key: str, counts: dict[str, int]) -> str:
    rows = "".join(f"<tr data-{key}='{escape(k)}'><td>{escape(k)}</td><td>{v}</td></tr>" for k, v in counts.items())
    return f"<table id='{element_id}'><thead><tr><th>{key}</th><th>videos</th></tr></thead><tbody>{rows}</tbody></table>"


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _model_statement(manifest: dict, view: Overview) -> str:
    emotion = next((m for m in manifest.get("models") or [] if m.get("kind") == "emotion"), {})
    sha = next(iter((emotion.get("sha256") or {}).values()), "")
    used = "; ".join(f"threshold {t if t is not None else 'n/a'}, fallback {f or 'n/a'} ({n} videos)"
                     for t, f, n in view.label_settings) or "no labelled video"
    return (f"<p>Emotion model <b>{escape(emotion.get('name', '?'))}</b> ({escape(emotion.get('source', ''))}, "
            f"SHA-256 {escape(sha[:12])}…). Labels made with: {escape(used)}. Top-1: the most frequent frame "
            "label; threshold: the most frequent non-neutral label when its share of the frames with a face "
            "reaches the threshold, else the fallback.</p>")


def write_report(output: str, dest: Optional[str] = None, videos: Sequence[str] = (), timelines: int = 20,
                 rows: int = 2000) -> dict:
    """Write ``<dest>/archive.html`` (default ``<output>/reports/``); return what it holds."""
    output = output.rstrip("/")
    if "://" in output:
        raise UsageError(f"{output}: the report reads a local output folder")
    manifest = latest_manifest(output)
    if manifest is None:
        raise UsageError(f"{output} has no run_manifest.json: give the output folder of an affectflow run")
    labels = list(manifest.get("labels") or [])
    def read(con):
        ids = timeline_ids(con, output, videos, timelines)
        return overview(con, rows), ids, video_rows(con, ids)

    view, ids, video_info = with_videos(output, read)
    predicted = model_rows(output, ids)
    folder = Path(dest) if dest else Path(output) / DEFAULT_DEST
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / REPORT_FILE

    def link(target: str, text: str) -> str:
        where = Path(output) / target
        if not where.exists():
            return ""
        return f"<a href='{escape(os.path.relpath(where, folder))}'>{escape(text)}</a>"

    links = " · ".join(filter(None, [link("run_manifest.json", "run manifest"),
                                     link("validation/data_docs/index.html", "validation (Data Docs)"),
                                     link("validation/results.json", "validation results")]))
    parts = [f"<h1>{escape(Path(output).resolve().name)}: {view.videos} videos</h1>",
             f"<p>Output <code>{escape(str(Path(output).resolve()))}</code>, last run {escape(manifest['run_id'])} "
             f"({escape(manifest.get('finished_at', ''))}). {links}</p>", _model_statement(manifest, view),
             "<h2>Videos by status</h2>", _counts_table("status-counts", "status", view.by_status),
             "<h2>Face coverage</h2>", f"<img alt='face coverage histogram' src='data:image/png;base64,"
             f"{coverage_figure(view.coverage)}'>",
             "<table id='coverage-bins'><thead><tr><th>coverage</th><th>videos</th></tr></thead><tbody>"
             + "".join(f"<tr data-bin='{i}'><td>{i * 10}-{i * 10 + 10}%</td><td>{n}</td></tr>"
                       for i, n in enumerate(view.coverage)) + "</tbody></table>",
             "<h2>Labels</h2><p>Videos that did not fail; (none): no frame with a face.</p>"]
    parts += [f"<h3>{escape(column)}</h3>" + _counts_table(f"labels-{column}", "label", counts)
              for column, counts in view.labels.items()]
    listed = list(view.rows[0]) if view.rows else list(LISTED)
    shown = f"the first {len(view.rows)} of {view.videos} by id" if len(view.rows) < view.videos else "all"
    parts += [f"<h2>Videos ({shown}; click a heading to sort)</h2>",
              table(listed, [[_cell(r[c]) for c in listed] for r in view.rows], "class='sortable' id='videos'")]
    parts.append(f"<h2>Timelines ({len(ids)})</h2>" + ("" if videos else
                 f"<p>The first {timelines} videos with a face, by id; <code>--videos ID,...</code> picks others.</p>"))
    for video_id in ids:
        row = video_info.get(video_id, {})
        timeline = read_timeline(output, video_id, labels)
        title = (f"{video_id}: Top-1 {row.get('top1_label')}, threshold {row.get('threshold_label')} "
                 f"(broad {row.get('broad_top1_label')} / {row.get('broad_threshold_label')}), face coverage "
                 f"{_cell(row.get('face_coverage'))}")
        figure = (f"<img alt='timeline of {escape(video_id)}' src='data:image/png;base64,"
                  f"{timeline_figure(timeline, labels, row.get('threshold'), title)}'>" if len(timeline.times)
                  else "<p>No frame was sampled.</p>")
        models = predicted.get(video_id, [])
        model_table = table(["model", "status", "label", "confidence", "nearest word", "cluster"],
                            [[m["model"], m["status"], _cell(m["predicted_label"]), _cell(m["confidence"]),
                              _cell(m["nearest_word"]), _cell(m["cluster"])] for m in models]) if models else ""
        parts.append(f"<section class='timeline' data-video='{escape(video_id)}'><h3>{escape(video_id)}</h3>"
                     f"{figure}{model_table}</section>")
    path.write_text("".join(["<!doctype html><html><head><meta charset='utf-8'>",
                             f"<title>{escape(Path(output).resolve().name)}: archive report</title>",
                             f"<style>{STYLE}</style></head><body>", *parts,
                             f"<script>{SORT_SCRIPT}</script></body></html>"]))
    return {"path": str(path), "videos": view.videos, "timelines": ids, "by_status": view.by_status}
