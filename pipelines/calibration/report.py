"""The calibration report: one self-contained HTML file (PNG figures embedded as base64), the
terminal table and the config fragment.

Input is the JSON-ready report of `pipelines.calibration.job` (every number comes from it, so
the HTML and calibration.json cannot disagree). Per evaluated label setting: the paper's
table (data set | threshold accuracy | optimal threshold | Top-1 accuracy | difference),
a metrics table, the folds, and three figures (``FIGURES``): accuracy and UAR versus
threshold, confusion matrices, per-class F1. Figures use matplotlib's object API
(``matplotlib.figure.Figure``, Agg), so no pyplot state or display is involved.
"""
from __future__ import annotations

import numpy as np
import yaml

from pipelines.calibration.constants import SETTINGS
from pipelines.html_report import STYLE as _STYLE, draw_confusion, escape as _e, new_figure as _new_figure, png as _png
from pipelines.html_report import table as _table

# figure key -> caption title; each evaluated setting gets one figure of each, id fig-<setting>-<key>
FIGURES = {
    "sweep": "Accuracy and UAR versus threshold",
    "confusion": "Confusion matrices",
    "f1": "Per-class F1",
}
PAPER_COLUMNS = ("Data set", "Threshold accuracy", "Optimal threshold", "Top-1 accuracy", "Difference")
def sweep_figure(setting: dict) -> str:
    """Base64 PNG: accuracy and UAR (mean over test folds, +- SD) versus threshold for each
    fallback; Top-1 as a horizontal line; the fitted threshold as a dotted vertical line."""
    fig = _new_figure(10, 3.8)
    thresholds = np.asarray(setting["sweep"]["thresholds"])
    for ax, metric, title in zip(fig.subplots(1, 2), ("accuracy", "uar"), ("Accuracy", "UAR")):
        for fallback, style in zip(setting["sweep"]["by_fallback"], ("-o", "--s")):
            block = setting["sweep"]["by_fallback"][fallback]
            mean = np.asarray(block["mean_over_folds"][metric])
            sd = np.asarray(block["sd_over_folds"][metric])
            line, = ax.plot(thresholds, mean, style, markersize=3, label=f"threshold, fallback {fallback}")
            ax.fill_between(thresholds, mean - sd, mean + sd, color=line.get_color(), alpha=0.12)
        ax.axhline(setting["top1"]["mean_over_folds"][metric], color="k", lw=1.2, label="Top-1")
        ax.axvline(setting["fitted"]["threshold"], color="grey", ls=":", label="fitted threshold")
        ax.set_xlabel("threshold")
        ax.set_ylabel(f"{title} (mean over test folds)")
        ax.set_ylim(0, 1.02)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8)
    return _png(fig)


def _shown_classes(setting: dict, summaries: list[dict]) -> list[int]:
    """Indices of the classes present in the truth or any of the given confusion matrices."""
    cms = [np.asarray(s["confusion"]) for s in summaries]
    used = np.zeros(len(setting["labels"]), bool)
    for cm in cms:
        used |= (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    return list(np.flatnonzero(used))


def confusion_figure(setting: dict) -> str:
    """Base64 PNG: pooled confusion matrices of Top-1 and of the threshold method out of fold
    (each video predicted by the threshold chosen without its fold); colour = row share."""
    summaries = [setting["top1"]["pooled"], setting["cross_validated"]["pooled_out_of_fold"]]
    titles = ["Top-1", "Threshold, cross-validated (out of fold)"]
    shown = _shown_classes(setting, summaries)
    names = [setting["labels"][i] for i in shown]
    side = max(3.5, 0.45 * len(names) + 1.5)
    fig = _new_figure(2 * side, side)
    for ax, s, title in zip(fig.subplots(1, 2), summaries, titles):
        draw_confusion(ax, np.asarray(s["confusion"])[np.ix_(shown, shown)], names,
                       f"{title}: accuracy {s['accuracy']:.3f}")
    return _png(fig)


def f1_figure(setting: dict) -> str:
    """Base64 PNG: per-class F1 of Top-1 and of the cross-validated threshold method (pooled)."""
    summaries = [setting["top1"]["pooled"], setting["cross_validated"]["pooled_out_of_fold"]]
    shown = _shown_classes(setting, summaries)
    names = [setting["labels"][i] for i in shown]
    fig = _new_figure(max(5, 0.6 * len(names) + 2), 3.5)
    ax = fig.subplots()
    x = np.arange(len(names))
    for offset, s, label in zip((-0.2, 0.2), summaries, ("Top-1", "threshold (cross-validated)")):
        ax.bar(x + offset, [s["per_class_f1"][n] or 0.0 for n in names], width=0.4, label=label)
    ax.set_xticks(x, names, rotation=45 if len(names) > 8 else 0, ha="right" if len(names) > 8 else "center")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("F1")
    fig.legend(loc="outside lower center", ncol=2, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


_RENDER = {"sweep": sweep_figure, "confusion": confusion_figure, "f1": f1_figure}


def _caption(key: str, setting_name: str, setting: dict) -> str:
    detail = {
        "sweep": "for the threshold method with each fallback (mean over the test folds, band: one SD); Top-1 is "
                 "the horizontal line; the dotted line is the threshold fitted on all videos.",
        "confusion": "pooled over the folds: Top-1, and the threshold method out of fold (each fold scored with the "
                     "threshold and fallback chosen on the other folds). Counts; colour is the share of the row.",
        "f1": "pooled over the folds: Top-1 and the cross-validated threshold method.",
    }[key]
    return f"{FIGURES[key]} ({setting_name} setting, {len(setting['labels'])} labels): {detail}"


def paper_table_html(setting_name: str, setting: dict) -> str:
    """The paper's table form for one setting, with the per-fold choices in the CV row."""
    rows = []
    for r in setting["paper_table"]:
        optimal = f"{r['optimal_threshold']:.2f} ({r['fallback']})"
        if r["fold_thresholds"]:
            optimal += "; folds chose " + ", ".join(f"{t:.2f}" for t in r["fold_thresholds"])
        rows.append([r["data_set"], f"{r['threshold_accuracy']:.4f}", optimal, f"{r['top1_accuracy']:.4f}",
                     f"{r['difference']:+.4f}"])
    return _table(PAPER_COLUMNS, rows, f'class="paper-table" id="paper-table-{setting_name}"')


def _metrics_table(setting: dict) -> str:
    def cells(mean, sd):
        return [f"{mean[m]:.4f} ± {sd[m]:.4f}" for m in ("accuracy", "macro_f1", "uar")]
    cv, top1, paper = setting["cross_validated"], setting["top1"], setting["paper_style"]
    rows = [["Top-1", *cells(top1["mean_over_folds"], top1["sd_over_folds"])],
            ["Threshold, cross-validated", *cells(cv["mean_over_folds"], cv["sd_over_folds"])],
            [f"Threshold {paper['threshold']:.2f} ({paper['fallback']}), best mean over folds (optimistic)",
             *[f"{paper['mean_over_folds'][m]:.4f}" for m in ("accuracy", "macro_f1", "uar")]]]
    return _table(("Method (mean over folds ± SD)", "Accuracy", "Macro F1", "UAR"), rows, 'class="metrics"')


def _folds_table(setting: dict) -> str:
    rows = [[f["fold"], f["n"], "" if f["subjects"] is None else f["subjects"], f"{f['threshold']:.2f}", f["fallback"],
             f"{f['train_score']:.4f}", f"{f['test']['accuracy']:.4f}", f"{f['test']['uar']:.4f}",
             f"{f['top1_test']['accuracy']:.4f}"] for f in setting["folds"]]
    return _table(("Fold", "Videos", "Subjects", "Threshold (chosen on training folds)", "Fallback",
                   f"Training {setting['select_by']}", "Test accuracy", "Test UAR", "Top-1 test accuracy"),
                  rows, 'class="folds"')


def _sweep_table(setting: dict) -> str:
    by = setting["sweep"]["by_fallback"]
    headers = ["Threshold"] + [f"{m} ({fb})" for fb in by for m in ("accuracy", "UAR")]
    rows = [[f"{t:.2f}"] + [f"{by[fb]['mean_over_folds'][m][i]:.4f}" for fb in by for m in ("accuracy", "uar")]
            for i, t in enumerate(setting["sweep"]["thresholds"])]
    return ("<details><summary>Per threshold: mean over the test folds</summary>"
            + _table(headers, rows, 'class="sweep"') + "</details>")


def _counts_text(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def _setting_section(setting_name: str, setting: dict, first_figure: int) -> str:
    if not setting["evaluated"]:
        return (f'<section id="setting-{setting_name}"><h2>{_e(setting_name.capitalize())} setting</h2>'
                f"<p>Not evaluated: {_e(setting['reason'])}</p></section>")
    parts = [f'<section id="setting-{setting_name}">',
             f"<h2>{_e(setting_name.capitalize())} setting ({len(setting['labels'])} labels: "
             f"{_e(', '.join(setting['labels']))})</h2>",
             f"<p>{setting['n_videos']} videos scored; folds {_e(setting['cv_scheme'])}"
             + (f" ({setting['groups']} subjects)" if setting["groups"] else "")
             + f"; true classes: {_e(_counts_text(setting['class_counts']))}."
             + (f" Left out (label not in this setting): {_e(_counts_text(setting['left_out_labels']))}."
                if setting.get("left_out_labels") else "") + "</p>",
             paper_table_html(setting_name, setting), _metrics_table(setting)]
    for n, key in enumerate(FIGURES, start=first_figure):
        caption = f"Figure {n}. {_caption(key, setting_name, setting)}"
        png = _RENDER[key](setting)
        parts.append(f'<figure id="fig-{setting_name}-{key}"><img alt="{_e(FIGURES[key])} ({_e(setting_name)})" '
                     f'src="data:image/png;base64,{png}"><figcaption>{_e(caption)}</figcaption></figure>')
    parts += ["<h3>Folds</h3>", _folds_table(setting), _sweep_table(setting), "</section>"]
    return "\n".join(parts)


def render_html(report: dict) -> str:
    """The whole report as one HTML string (no external files)."""
    fit = report["fitted"]
    videos = report.get("videos", {})
    sections, figure = [], 1
    for name in SETTINGS:
        setting = report["settings"][name]
        sections.append(_setting_section(name, setting, figure))
        figure += len(FIGURES) if setting["evaluated"] else 0
    summary = (f"Run {_e(report.get('output', ''))}, manifest {_e(report.get('manifest', ''))}: "
               f"{_e(videos.get('labelled', ''))} labelled videos, {_e(videos.get('not_in_run', 0))} not in the run, "
               f"{_e(videos.get('without_face_frames', 0))} without a face frame. Thresholds "
               f"{report['thresholds'][0]:.2f}–{report['thresholds'][-1]:.2f} ({len(report['thresholds'])} values), "
               f"fallbacks {', '.join(report['fallbacks'])}; {report['folds']} folds (seed {report['seed']}); "
               f"selection by {_e(report['select_by'])}; ties go to the neutral fallback, then the smallest threshold.")
    return "\n".join([
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Threshold calibration: {_e(report['dataset'])}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Threshold calibration: {_e(report['dataset'])}</h1>",
        f"<p>{summary}</p>",
        f'<p class="caveat">{_e(report["caveat"])}</p>',
        *[f'<p class="caveat"><strong>Warning:</strong> {_e(w)}</p>' for w in report.get("warnings", [])],
        f"<h2>Fitted threshold</h2><p>{fit['threshold']:.2f} with fallback {_e(fit['fallback'])}, chosen on all "
        f"labelled videos in the {_e(fit['setting'])} setting; written as <code>threshold.yaml</code>:</p>",
        f"<pre>{_e(fragment_text(report))}</pre>",
        *sections,
        f"<p>Every number is in <code>calibration.json</code>; per-video predictions in "
        f"<code>predictions.parquet</code>. Created {_e(report.get('created', ''))}.</p>",
        "</body></html>",
    ])


def fragment_text(report: dict) -> str:
    """threshold.yaml: ``job: {aggregate: {threshold, fallback}}`` with its provenance as comments."""
    fit = report["fitted"]
    setting = report["settings"][fit["setting"]]
    cv = setting["cross_validated"]["mean_over_folds"]["accuracy"]
    header = [
        f"affectflow calibrate, {report.get('created', '')}: fitted on {report['dataset']} "
        f"({setting['n_videos']} videos, {fit['setting']} setting, best {report['select_by']} on all of them).",
        f"Cross-validated accuracy {cv:.4f} ({report['folds']} folds, {setting['cv_scheme']}); "
        f"Top-1 {setting['top1']['mean_over_folds']['accuracy']:.4f}.",
        "Use: affectflow run --config runner_configs/local.yaml --config threshold.yaml ...",
        "     affectflow aggregate --output OUT --config threshold.yaml",
    ]
    header += [f"WARNING: {w}" for w in report.get("warnings", [])]
    body = yaml.safe_dump({"job": {"aggregate": {"threshold": round(float(fit["threshold"]), 10),
                                                 "fallback": fit["fallback"]}}}, sort_keys=False)
    return "".join(f"# {line}\n" for line in header) + body


def format_paper_table(report: dict) -> str:
    """The paper-style tables of every evaluated setting, as text for the terminal."""
    lines = []
    for setting in SETTINGS:
        s = report["settings"][setting]
        if not s["evaluated"]:
            lines.append(f"{setting} setting: not evaluated ({s['reason']})")
            continue
        subjects = f" ({s['groups']} subjects)" if s["groups"] else ""
        lines.append(f"{setting} setting ({len(s['labels'])} labels: {', '.join(s['labels'])}): "
                     f"{s['n_videos']} videos, {report['folds']} folds {s['cv_scheme']}{subjects}")
        width = max(len(r["data_set"]) for r in s["paper_table"]) + 2
        lines.append(f"  {'data set':{width}s}{'threshold acc':>14s}  {'optimal threshold':22s}{'Top-1 acc':>10s}"
                     f"{'difference':>12s}")
        for r in s["paper_table"]:
            lines.append(f"  {r['data_set']:{width}s}{r['threshold_accuracy']:14.4f}  "
                         f"{r['optimal_threshold']:<5.2f} {r['fallback']:16s}{r['top1_accuracy']:10.4f}"
                         f"{r['difference']:+12.4f}")
        lines.append("  folds chose: " + ", ".join(f"{t:.2f}/{f}" for t, f in zip(
            s["cross_validated"]["fold_thresholds"], s["cross_validated"]["fold_fallbacks"]))
            + f"; the mean-over-folds row is optimistic by {s['optimism']['accuracy']:+.4f} accuracy")
        if s.get("left_out_labels"):
            lines.append(f"  left out (label not in this setting): {s['left_out_labels']}")
    return "\n".join(lines)
