"""The training report: one self-contained HTML file from cv.json's content (so the two cannot disagree).

Sections: the paper's table (method x feature set, one column pair per task: UAR and accuracy,
mean +- SD over the test folds), per-class recall, learning curves (validation loss per epoch
of every fold), pooled out-of-fold confusion matrices, what was left out, and the settings.
"""
from __future__ import annotations

import json

import numpy as np

from pipelines.html_report import STYLE, draw_confusion, escape, new_figure, png, table

CAVEAT = ("Every figure is out of fold: each video is predicted by models fitted without its fold, folds grouped "
          "by subject (no person on both sides), scalers and early stopping fitted on the training folds only. "
          "The baseline is a logistic regression on each video's mean and SD of the same features: a sequence "
          "model that does not beat it does not use the order of frames. Top-1 and threshold are the run's own "
          "labels (nothing fitted), shown where the emotion model's labels can name the classes.")


def _cell(result: dict, metric: str) -> str:
    return f"{result['mean'][metric]:.3f} ± {result['sd'][metric]:.3f}"


def paper_table(report: dict) -> str:
    """Rows: method x feature set; per task: UAR and accuracy (mean ± SD over folds)."""
    tasks = list(report["tasks"])
    keys = sorted({(r["method"], r["feature_set"]) for r in report["results"]},
                  key=lambda k: (k[1] == "-", k[1], k[0]))
    by_key = {(r["method"], r["feature_set"], r["task"]): r for r in report["results"]}
    headers = ["Method", "Features"] + [f"{t} {m}" for t in tasks for m in ("UAR", "accuracy")]
    rows = []
    for method, feature_set in keys:
        row = [method, feature_set]
        for task in tasks:
            result = by_key.get((method, feature_set, task))
            row += [_cell(result, "uar"), _cell(result, "accuracy")] if result else ["", ""]
        rows.append(row)
    return table(headers, rows, 'class="paper-table"')


def recall_table(report: dict, task: str) -> str:
    results = [r for r in report["results"] if r["task"] == task]
    classes = report["tasks"][task]["classes"]
    rows = [[r["name"]] + [("" if r["pooled"]["per_class_recall"].get(c) is None
                            else f"{r['pooled']['per_class_recall'][c]:.3f}") for c in classes] for r in results]
    return table(["Method"] + classes, rows)


def learning_curves(report: dict) -> str:
    """Base64 PNG: validation loss per epoch, every fold, one panel per trained model (None if none)."""
    trained = [r for r in report["results"] if r["histories"]]
    if not trained:
        return ""
    cols = min(3, len(trained))
    rows = int(np.ceil(len(trained) / cols))
    fig = new_figure(4 * cols, 2.8 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, result in zip(axes, trained):
        for history in result["histories"]:
            line, = ax.plot(range(1, len(history["val_loss"]) + 1), history["val_loss"], lw=1,
                            label=f"fold {history['fold'] + 1}")
            ax.plot(range(1, len(history["loss"]) + 1), history["loss"], lw=0.8, ls=":", color=line.get_color())
            ax.axvline(history["best_epoch"], color=line.get_color(), lw=0.6, alpha=0.5)
        ax.set_title(result["name"], fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (dotted: training)")
        ax.grid(alpha=0.3)
    for ax in axes[len(trained):]:
        ax.set_visible(False)
    return png(fig)


def confusion_matrices(report: dict) -> str:
    """Base64 PNG: the pooled out-of-fold confusion matrix of every result."""
    results = report["results"]
    cols = min(3, len(results))
    rows = int(np.ceil(len(results) / cols))
    side = max(3.2, 0.4 * max(len(r["classes"]) for r in results) + 1.6)
    fig = new_figure(side * cols, side * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, result in zip(axes, results):
        draw_confusion(ax, np.asarray(result["pooled"]["confusion"]), result["classes"],
                       f"{result['name']}: UAR {result['pooled']['uar']:.3f}")
    for ax in axes[len(results):]:
        ax.set_visible(False)
    return png(fig)


def render_report(report: dict) -> str:
    """The whole report page."""
    left_out = [[reason, entry["count"], ", ".join(entry["examples"][:5])]
                for reason, entry in report["videos"]["left_out"].items()]
    tasks = "".join(f"<h3>{escape(t)}</h3><p>classes: " + escape(", ".join(f"{c} ({n})" for c, n in
                                                                             v["class_counts"].items())) + "</p>"
                    + recall_table(report, t) for t, v in report["tasks"].items())
    curves = learning_curves(report)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>affectflow training report</title>",
        f"<style>{STYLE}</style></head><body><h1>Video-level emotion models</h1>",
        f"<p>Run <code>{escape(report['output'])}</code>, labels <code>{escape(report['manifest'])}</code> "
        f"(SHA-256 {escape(report['manifest_sha256'][:12])}...), {report['videos']['matched']} labelled videos, "
        f"{report['folds']} folds grouped by {escape(report['grouped_by'])}; {report['seconds']:.0f} s.</p>",
        f"<p class='caveat'>{escape(CAVEAT)}</p>",
        "<h2>Results</h2>", paper_table(report),
        "<h2>Per-class recall (pooled out of fold)</h2>", tasks,
        ("<h2>Learning curves</h2><figure><img alt='learning curves' src='data:image/png;base64,"
         f"{curves}'><figcaption>Loss on the held-out subjects used for early stopping (solid) and on the "
         "training videos (dotted) per epoch, every fold; the vertical line marks the epoch whose weights were "
         "kept.</figcaption></figure>") if curves else "",
        "<h2>Confusion matrices</h2><figure><img alt='confusion matrices' src='data:image/png;base64,"
        f"{confusion_matrices(report)}'><figcaption>Pooled over the test folds: counts; colour is the share of "
        "the true class's row.</figcaption></figure>",
        "<h2>Videos left out</h2>", table(["Reason", "Videos", "Examples"], left_out) if left_out else "<p>none</p>",
        "<h2>Models written</h2>", table(["Model", "model.keras SHA-256"],
                                         [[m["name"], m["model_sha256"][:16]] for m in report["models"]]),
        "<h2>Settings</h2><pre>" + escape(json.dumps(report["settings"], indent=1)) + "</pre>",
        "</body></html>"]
    return "".join(parts)


SEMANTIC_CAVEAT = ("Every figure is out of fold (folds grouped by subject). z: how far the own annotation stands "
                   "out among all distinct annotations, in SDs of the prediction's cosines to them (0 = chance). "
                   "top-k: the vocabulary word nearest to the annotation is among the k words nearest to the "
                   "prediction. mean-annotation predicts the training folds' mean annotation for every item: what "
                   "a model scores by knowing only which emotions are common.")


def _mean_sd(result: dict, metric: str) -> str:
    mean, sd = result["mean"].get(metric), result["sd"].get(metric)
    if mean is None:
        return "n/a"
    return f"{mean:.3f} ± {sd:.3f}" if sd is not None else f"{mean:.3f}"


def semantic_table(report: dict) -> str:
    """Rows: method x feature set; columns: cosine, z, top-k accuracy (mean ± SD over folds)."""
    metrics = ["cosine", "z", *(f"top{k}" for k in report["top_k"])]
    rows = [[r["method"], r["feature_set"], *(_mean_sd(r, m) for m in metrics)] for r in report["results"]]
    return table(["Method", "Features", "cosine", "z", *(f"top-{k}" for k in report["top_k"])], rows,
                 'class="paper-table"')


def render_semantic_report(report: dict) -> str:
    """The semantic target's report page."""
    curves = learning_curves(report)
    items = report["items"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>affectflow semantic training report</title>",
        f"<style>{STYLE}</style></head><body><h1>Semantic emotion space</h1>",
        f"<p>Run <code>{escape(report['output'])}</code>, annotations <code>{escape(report['manifest'])}</code> "
        f"(SHA-256 {escape(report['manifest_sha256'][:12])}...): {items['annotated']} items of {items['videos']} "
        f"videos, {items['distinct_annotations']} distinct texts; {report['folds']} folds grouped by "
        f"{escape(report['grouped_by'])}; {report['seconds']:.0f} s.</p>",
        f"<p class='caveat'>{escape(SEMANTIC_CAVEAT)}</p>",
        "<h2>Results</h2>", semantic_table(report),
        ("<h2>Learning curves</h2><figure><img alt='learning curves' src='data:image/png;base64,"
         f"{curves}'><figcaption>Cosine loss (minus the cosine) on the held-out subjects (solid) and the training "
         "items (dotted) per epoch, every fold.</figcaption></figure>") if curves else "",
        "<h2>Vocabulary</h2><p>" + escape(", ".join(report["vocabulary"])) + "</p>",
        "<h2>Models written</h2>", table(["Model", "model.keras SHA-256"],
                                         [[m["name"], m["model_sha256"][:16]] for m in report["models"]]),
        "<h2>Settings</h2><pre>" + escape(json.dumps(report["settings"], indent=1)) + "</pre>",
        "</body></html>"]
    return "".join(parts)
