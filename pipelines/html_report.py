"""Building blocks of the self-contained HTML reports (calibration, training): style, tables, figures.

Figures use matplotlib's object API (``matplotlib.figure.Figure``, Agg) and are embedded as
base64 PNG, so a report is one file that opens anywhere, offline.
"""
from __future__ import annotations

import base64
import html
import io
from typing import Sequence

import numpy as np

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.8em 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f2f2f2}
.caveat{background:#fff6e0;border-left:4px solid #e0a000;padding:0.6em 1em}
figure{margin:1.2em 0}figure img{max-width:100%}figcaption{font-size:0.92em;color:#444}
pre{background:#f6f6f6;padding:0.6em}
"""


def png(fig) -> str:
    """A figure as base64 PNG text."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), layout="constrained")


def escape(value) -> str:
    return html.escape(str(value))


def table(headers: Sequence, rows: Sequence[Sequence], attrs: str = "") -> str:
    """An HTML table; every cell escaped."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table {attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def draw_confusion(ax, cm: np.ndarray, names: Sequence[str], title: str) -> None:
    """A confusion matrix on ``ax``: counts in the cells, colour = share of the true class's row."""
    cm = np.asarray(cm)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    size = 9 if len(names) <= 8 else 6
    for i, j in zip(*np.nonzero(cm)):
        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=size,
                color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=size + 1)
    ax.set_yticks(range(len(names)), names, fontsize=size + 1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
