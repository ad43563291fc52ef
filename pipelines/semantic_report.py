"""A semantic model's predictions as pictures: per video, its similarity to every vocabulary word.

Written by `affectflow predict` (and a run with ``classifier.model``) for a semantic model, to
``<output>/reports/semantic/<model>.html``: one self-contained page with, per video (the first
``limit`` by id), a bar chart of the cosine between the video's point (the mean of its windows'
points, back to unit length) and each vocabulary word, nearest first, plus the window-by-window
nearest words.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from models.sentence_encoder import Vocabulary, unit_rows
from pipelines.html_report import STYLE, escape, new_figure, png, table
from pipelines.output.layout import dataset
from schemas.columns import PARTITION_COLUMN

REPORT_DIR = "reports/semantic"


def _video_points(output: str, table_path: str, limit: int) -> list[tuple[str, np.ndarray, list[str]]]:
    """(video_id, its unit mean point, its windows' nearest words) of the first ``limit`` videos with a point."""
    rows = dataset(output, table_path).to_table(
        columns=[PARTITION_COLUMN, "window_index", "status", "embedding", "nearest_word"],
        filter=pc.field("status") == "ok").sort_by([(PARTITION_COLUMN, "ascending"), ("window_index", "ascending")])
    by_video: dict[str, list] = {}
    for video_id, embedding, word in zip(*(rows.column(c).to_pylist() for c in (PARTITION_COLUMN, "embedding",
                                                                                 "nearest_word"))):
        if len(by_video) >= limit and video_id not in by_video:
            break
        by_video.setdefault(video_id, []).append((embedding, word))
    return [(v, unit_rows(np.mean([np.asarray(e, np.float32) for e, _ in items], axis=0)), [w for _, w in items])
            for v, items in by_video.items()]


def similarity_figure(vocabulary: Vocabulary, point: np.ndarray, shown: int = 12) -> str:
    """Base64 PNG: cosines of ``point`` to the ``shown`` nearest vocabulary words, nearest on top."""
    sims = vocabulary.similarities(point[None])[0]
    order = np.argsort(-sims, kind="stable")[:shown]
    fig = new_figure(5.0, 0.25 * len(order) + 0.8)
    ax = fig.subplots()
    ax.barh(range(len(order))[::-1], sims[order], color="#4a7fb5")
    ax.set_yticks(range(len(order))[::-1], [vocabulary.words[i] for i in order], fontsize=8)
    ax.set_xlabel("cosine to the video's point")
    ax.set_xlim(min(0.0, float(sims[order].min())), 1.0)
    ax.grid(axis="x", alpha=0.3)
    return png(fig)


def write_similarity_report(output: str, table_path: str, model_name: str, vocabulary: Vocabulary,
                            limit: int = 50) -> Path:
    """Write the page for one semantic model's predictions of a local output; return its path."""
    videos = _video_points(output, table_path, limit)
    sections = []
    for video_id, point, words in videos:
        sections.append(f"<h3>{escape(video_id)}</h3><img alt='similarity of {escape(video_id)}' "
                        f"src='data:image/png;base64,{similarity_figure(vocabulary, point)}'>"
                        + table(["windows, nearest word in order"], [[", ".join(words)]]))
    path = Path(output) / REPORT_DIR / f"{model_name}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join([
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{escape(model_name)}: similarity to the vocabulary</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(model_name)}</h1><p>Per video (the first {limit} by id): the cosine of the video's point "
        "(the mean of its windows' points) to the nearest vocabulary words.</p>", *sections, "</body></html>"]))
    return path
