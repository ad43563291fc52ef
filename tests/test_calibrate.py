"""`affectflow calibrate`: metrics, folds, the threshold sweep with cross-validation, the
report, and the fitted config fragment (pipelines.calibration, pipelines.metrics).

Synthetic runs are written in the real layout (frames/video_id=<id>/part-*.parquet with
the frame schema, videos/ with the video schema) from per-video label counts, so the
best threshold is known by construction: an emotional video shows its emotion in 3 of
10 frames (30%), a neutral video shows one noise emotion in 1 of 10 frames (10%); any
threshold in (0.10, 0.30] labels every video right, and nothing else does.
"""
from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score

from models.registry import FER2013_LABELS
from pipelines import cli
from pipelines.cli.parser import build_parser
from pipelines.calibration.thresholds import parse_thresholds
from pipelines.folds import assign_folds
from pipelines.calibration.job import calibrate_counts, setting_truth, write_calibration
from pipelines.calibration.counts import count_frame_labels, pivot_counts
from pipelines.labels import parse_label_map
from pipelines.calibration.report import FIGURES, PAPER_COLUMNS
from pipelines.config import DEFAULT_CONFIG, load_config
from pipelines.extract import aggregation_settings
from pipelines.metrics import confusion_matrices, encode, per_class_f1, scores, summary
from pipelines.output.layout import read_table
from pipelines.reaggregate import label_counts
from schemas.frames import frame_schema
from schemas.columns import prob_column
from schemas.videos import video_schema
from core.settings import DEFAULT_BROAD_MAP
from models.aggregation import AggregationSettings, apply_methods, video_labels
from transforms.parquet import partition_dir, records_table, write_parquet

LABELS = FER2013_LABELS                      # angry, disgust, fear, happy, sad, surprise, neutral
SETTINGS_7 = AggregationSettings(labels=LABELS)
THRESHOLDS = parse_thresholds("0.05:1.0:0.05")


# --- helpers ------------------------------------------------------------------------------

def known_counts(true_labels, labels=LABELS, neutral="neutral", frames=10, rng=None):
    """int64[videos, labels]: an emotional video 3/10 its emotion + 7/10 neutral; a neutral
    video 1/10 a noise emotion (drawn by rng, else the first non-neutral label) + 9/10 neutral."""
    labels = list(labels)
    others = [i for i, l in enumerate(labels) if l != neutral]
    counts = np.zeros((len(true_labels), len(labels)), np.int64)
    for row, label in enumerate(true_labels):
        counts[row, labels.index(neutral)] = frames - (frames // 10 if label == neutral else 3 * frames // 10)
        if label == neutral:
            counts[row, others[0] if rng is None else rng.choice(others)] += frames // 10
        else:
            counts[row, labels.index(label)] += 3 * frames // 10
    return counts


def write_run(out: Path, counts: dict[str, np.ndarray], labels=LABELS, faceless: dict[str, int] | None = None,
              extra_faces: int = 0, sources: dict[str, str] | None = None, settings=None) -> None:
    """A run folder in the real layout: frames/ (primary faces per ``counts``, ``faceless``
    frames without a face, ``extra_faces`` face_index-1 rows labelled with the first label)
    and, when ``settings`` is given, videos/ rows as the pipeline writes them."""
    schema = frame_schema(labels)
    faceless = faceless or {}
    for vid in sorted(set(counts) | set(faceless)):
        frame_labels = [l for l, n in zip(labels, counts.get(vid, np.zeros(len(labels), int))) for _ in range(n)]
        rows = []
        for i, label in enumerate(frame_labels + [None] * faceless.get(vid, 0)):
            face = label is not None
            rows.append({"video_id": vid, "segment_index": 0, "frame_index": i, "timestamp_s": i / 25,
                         "frame_width": 64, "frame_height": 64, "faces_in_frame": int(face), "face_found": face,
                         "face_index": 0 if face else None, "emotion_label": label,
                         "emotion_confidence": 1.0 if face else None,
                         **{prob_column(l): (float(l == label) if face else None) for l in labels}})
        for i in range(extra_faces):
            rows.append({**rows[0], "frame_index": i, "face_index": 1, "emotion_label": labels[0]})
        write_parquet(records_table(rows, schema), str(Path(partition_dir(str(out), "frames", vid)) / "part-0.parquet"))
        if settings is not None:
            c = counts.get(vid, np.zeros(len(labels), np.int64))
            row = {"video_id": vid, "source_path": (sources or {}).get(vid, f"/archive/{vid}.mp4"),
                   "frames_decoded": len(rows), "frames_sampled": len(rows), "frames_with_face": int(c.sum()),
                   "status": "ok" if c.sum() else "no_face", "run_id": "synthetic", **video_labels(c, settings)}
            videos = video_schema(settings.labels, settings.broad_labels)
            table = records_table([{**_required_defaults(videos), **row}], videos)
            write_parquet(table, str(Path(partition_dir(str(out), "videos", vid)) / "part-00000.parquet"))
    if settings is not None:            # the run manifest the tables' readers take the label sets from
        n = len(set(counts) | set(faceless))
        (out / "run_manifest.json").write_text(json.dumps({
            "run_id": "synthetic", "labels": list(labels), "broad_labels": list(settings.broad_labels),
            "counts": {"matched": n, "ok": n, "no_face": 0, "failed": 0}, "frame_feature_groups": []}))


def _required_defaults(schema: pa.Schema) -> dict:
    """A zero value for every non-nullable column (columns other engineers add stay satisfied)."""
    def zero(t: pa.DataType):
        if pa.types.is_string(t):
            return ""
        if pa.types.is_boolean(t):
            return False
        return 0
    return {f.name: zero(f.type) for f in schema if not f.nullable}


def write_manifest(path: Path, columns: dict[str, list]) -> Path:
    import pyarrow.csv as pacsv
    pacsv.write_csv(pa.table({k: pa.array(v, pa.string()) for k, v in columns.items()}), str(path))
    return path


class ReportParser(HTMLParser):
    """Figures (id -> img src, alt, caption) and tables (id -> header, rows) of the report."""

    def __init__(self):
        super().__init__()
        self.figures, self.tables = {}, {}
        self._figure, self._table, self._cell, self._in_caption = None, None, None, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure":
            self._figure = a.get("id")
            self.figures[self._figure] = {"img": None, "alt": None, "caption": ""}
        elif tag == "img" and self._figure:
            self.figures[self._figure].update(img=a.get("src"), alt=a.get("alt"))
        elif tag == "figcaption":
            self._in_caption = True
        elif tag == "table" and a.get("id"):
            self._table = a["id"]
            self.tables[self._table] = {"header": [], "rows": []}
        elif tag == "tr" and self._table:
            self.tables[self._table]["rows"].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "figure":
            self._figure = None
        elif tag == "figcaption":
            self._in_caption = False
        elif tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._table:
            self.tables[self._table]["rows"][-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._in_caption and self._figure:
            self.figures[self._figure]["caption"] += data
        if self._cell is not None:
            self._cell += data


def parse_report(path: Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(path.read_text())
    for table in parser.tables.values():
        table["header"], table["rows"] = table["rows"][0], table["rows"][1:]
    return parser


# --- metrics ------------------------------------------------------------------------------

def test_metrics_match_scikit_learn():
    """Accuracy, macro F1, per-class F1, UAR and the confusion matrix equal scikit-learn's on
    literal labels, with a class only predicted (surprise) and one never seen (disgust)."""
    y_true = ["happy", "happy", "sad", "neutral", "neutral", "neutral", "angry", "sad", "happy", "fear"]
    y_pred = ["happy", "neutral", "sad", "neutral", "happy", "surprise", "sad", "sad", "happy", "neutral"]
    cm = confusion_matrices(encode(y_true, LABELS), encode(y_pred, LABELS), len(LABELS))[0]
    got = scores(cm)
    present = [l for l in LABELS if l in y_true or l in y_pred]
    assert got["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert got["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert got["uar"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert cm.tolist() == confusion_matrix(y_true, y_pred, labels=list(LABELS)).tolist()
    expected_f1 = f1_score(y_true, y_pred, labels=present, average=None)
    assert [per_class_f1(cm)[LABELS.index(l)] for l in present] == pytest.approx(list(expected_f1))
    s = summary(cm, LABELS)
    assert s["per_class_f1"]["disgust"] is None and s["per_class_f1"]["surprise"] == 0.0
    assert s["per_class_recall"]["surprise"] is None
    assert s["support"] == {l: y_true.count(l) for l in LABELS}


def test_metrics_vectorised_over_leading_axes():
    """Metrics of a stack of confusion matrices equal the metrics of each one; a binary case
    agrees with scikit-learn too."""
    rng = np.random.default_rng(3)
    true, pred, fold = rng.integers(0, 2, 200), rng.integers(0, 2, 200), rng.integers(0, 4, 200)
    stack = confusion_matrices(true, pred, 2, fold, 4)
    batch = scores(stack)
    for f in range(4):
        t, p = true[fold == f], pred[fold == f]
        assert batch["accuracy"][f] == pytest.approx(accuracy_score(t, p))
        assert batch["macro_f1"][f] == pytest.approx(f1_score(t, p, average="macro"))
        assert batch["uar"][f] == pytest.approx(balanced_accuracy_score(t, p))


# --- folds --------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_no_subject_in_two_folds(seed):
    """Grouped folds: every subject's videos share one fold; every fold is used; sizes stay
    near n/k; videos without a subject id are groups of their own."""
    rng = np.random.default_rng(seed)
    n_subjects = int(rng.integers(12, 40))
    sizes = rng.integers(1, 9, n_subjects)
    subjects = np.repeat([f"p{i}" for i in range(n_subjects)], sizes).astype(object)
    subjects[rng.random(len(subjects)) < 0.1] = None
    strata = rng.integers(0, 4, len(subjects))
    folds = assign_folds(strata, subjects, 5, seed)
    for subject in {s for s in subjects if s is not None}:
        assert len(set(folds[subjects == subject])) == 1, subject
    assert set(folds) == set(range(5))
    assert np.bincount(folds, minlength=5).max() <= len(subjects) / 5 + sizes.max()


def test_grouped_folds_need_enough_subjects():
    with pytest.raises(ValueError, match="3 subjects cannot fill 5 folds"):
        assign_folds(np.zeros(9, int), np.array(["a", "b", "c"] * 3, dtype=object), 5)


@pytest.mark.parametrize("seed", range(4))
def test_stratified_folds_without_subjects(seed):
    """Without subjects every class is dealt evenly: per class and in total, fold sizes differ by at most 1."""
    rng = np.random.default_rng(seed)
    strata = rng.integers(0, 5, 97)
    folds = assign_folds(strata, None, 5, seed)
    assert np.ptp(np.bincount(folds, minlength=5)) <= 1
    for c in range(5):
        assert np.ptp(np.bincount(folds[strata == c], minlength=5)) <= 1
    assert (assign_folds(strata, None, 5, seed) == folds).all()


# --- sweep and cross-validation -----------------------------------------------------------

def test_best_threshold_known_by_construction():
    """Emotion in 30% of frames, neutral videos with 10% noise: the fitted threshold, every
    fold's choice and the paper-style choice fall in (0.10, 0.30]; the threshold method is
    right on every video, Top-1 (neutral everywhere) only on the neutral ones."""
    rng = np.random.default_rng(0)
    true = np.asarray([LABELS[i] for i in rng.integers(0, 7, 140)], dtype=object)
    cal = calibrate_counts(np.arange(140).astype(str), known_counts(true, rng=rng), true, None, SETTINGS_7, THRESHOLDS)
    for name in ("specific", "broad"):
        s = cal.report["settings"][name]
        assert 0.10 < s["fitted"]["threshold"] <= 0.30
        assert 0.10 < s["paper_style"]["threshold"] <= 0.30
        assert all(0.10 < t <= 0.30 for t in s["cross_validated"]["fold_thresholds"])
        assert s["cross_validated"]["mean_over_folds"]["accuracy"] == 1.0
        assert s["cv_scheme"] == "by video, stratified by true label"
    specific = cal.report["settings"]["specific"]
    assert specific["top1"]["pooled"]["accuracy"] == pytest.approx(np.mean(true == "neutral"))
    assert cal.report["fitted"] == {"setting": "specific", "threshold": specific["fitted"]["threshold"],
                                    "fallback": "neutral"}
    by_neutral = specific["sweep"]["by_fallback"]["neutral"]["mean_over_folds"]["accuracy"]
    assert [round(t, 2) for t, a in zip(THRESHOLDS, by_neutral) if a == 1.0] == [0.15, 0.2, 0.25, 0.3]


def test_cross_validation_chooses_on_training_folds_only():
    """Recompute each fold's choice by brute force (apply_methods + scikit-learn accuracy on the
    other folds' videos) and check the out-of-fold predictions and the reported scores."""
    rng = np.random.default_rng(7)
    n = 120
    counts = rng.integers(0, 6, (n, len(LABELS)))
    counts[:, LABELS.index("neutral")] += rng.integers(0, 12, n)
    true = np.asarray([LABELS[i] for i in rng.integers(0, 7, n)], dtype=object)
    subjects = np.asarray([f"s{i % 17}" for i in range(n)], dtype=object)
    cal = calibrate_counts(np.arange(n).astype(str), counts, true, subjects, SETTINGS_7, THRESHOLDS, seed=1)
    s = cal.report["settings"]["specific"]
    pred = cal.predictions.to_pydict()
    folds = np.asarray(pred["specific_fold"])
    candidates = [(fb, t) for fb in ("neutral", "top1") for t in THRESHOLDS]
    for f, fold_report in enumerate(s["folds"]):
        train, test = folds != f, folds == f
        train_acc = [accuracy_score(true[train], apply_methods(counts[train], LABELS, "neutral", t, fb).threshold)
                     for fb, t in candidates]
        best = candidates[int(np.argmax(train_acc))]
        assert (fold_report["fallback"], fold_report["threshold"]) == (best[0], pytest.approx(best[1]))
        assert fold_report["train_score"] == pytest.approx(max(train_acc))
        oof = apply_methods(counts[test], LABELS, "neutral", best[1], best[0]).threshold
        assert list(np.asarray(pred["specific_threshold_cv"], dtype=object)[test]) == list(oof)
        assert fold_report["test"]["accuracy"] == pytest.approx(accuracy_score(true[test], oof))
    per_threshold = s["sweep"]["by_fallback"]["neutral"]["per_fold"]["accuracy"]
    assert s["paper_style"]["mean_over_folds"]["accuracy"] >= max(np.mean(per_threshold, axis=0)) - 1e-6
    assert s["optimism"]["accuracy"] == pytest.approx(
        s["paper_style"]["mean_over_folds"]["accuracy"] - s["cross_validated"]["mean_over_folds"]["accuracy"], abs=1e-6)
    for subject in set(subjects):
        assert len(set(folds[subjects == subject])) == 1


def test_parse_thresholds_and_label_map(tmp_path):
    assert parse_thresholds("0.05:1.0:0.05").tolist()[:3] == [0.05, 0.1, 0.15]
    assert len(parse_thresholds("0.05:1.0:0.05")) == 20 and parse_thresholds("0.05:1.0:0.05")[-1] == 1.0
    assert parse_thresholds("0.3,0.1").tolist() == [0.1, 0.3]
    with pytest.raises(ValueError):
        parse_thresholds("0:1:0.5")
    (tmp_path / "map.yaml").write_text("happiness: happy\nsadness: sad\n")
    assert parse_label_map([str(tmp_path / "map.yaml"), "anger=angry, sadness=sad"]) == {
        "happiness": "happy", "sadness": "sad", "anger": "angry"}


def test_setting_truth_maps_and_leaves_out_labels():
    """Specific: model labels only. Broad: a model label through broad_map, a broad label as it
    is; a label in neither (pride) is left out of both."""
    labels = np.asarray(["happy", "positive", "pride", "neutral", "sad"], dtype=object)
    specific, reason = setting_truth("specific", labels, SETTINGS_7)
    assert reason is None and specific.tolist() == [3, -1, -1, 6, 4]
    broad, reason = setting_truth("broad", labels, SETTINGS_7)
    assert SETTINGS_7.broad_labels == ("negative", "positive", "neutral")
    assert reason is None and broad.tolist() == [1, 1, -1, 2, 0]
    _, reason = setting_truth("specific", np.asarray(["positive", "negative"], dtype=object), SETTINGS_7)
    assert "broad labels" in reason


# --- count table --------------------------------------------------------------------------

def test_count_table_engines_agree_and_match_reaggregate(tmp_path):
    """DuckDB and the batched pyarrow scan give the same counts as `affectflow aggregate`'s
    label_counts; numeric-looking ids stay strings; face_index 1 rows are ignored; frames
    without a face are counted apart."""
    counts = {"007": np.array([1, 0, 0, 3, 0, 0, 6]), "b": np.array([0, 2, 0, 0, 0, 0, 0])}
    write_run(tmp_path, counts, faceless={"007": 2, "nf": 4}, extra_faces=2)
    tables = [count_frame_labels(str(tmp_path), LABELS, engine) for engine in ("duckdb", "pyarrow")]
    for t in tables:
        assert t.video_ids.tolist() == ["007", "b", "nf"]
        assert t.counts.tolist() == [counts["007"].tolist(), counts["b"].tolist(), [0] * 7]
        assert t.faceless_frames.tolist() == [2, 0, 4]
    reference = label_counts(str(tmp_path), LABELS)
    assert {k: v.tolist() for k, v in reference.items()} == {k: v.tolist() for k, v in counts.items()}


def test_unknown_frame_label_is_an_error():
    long = pa.table({"video_id": ["a"], "emotion_label": ["contempt"], "frames": pa.array([3], pa.int64())})
    with pytest.raises(ValueError, match="contempt"):
        pivot_counts(long, LABELS)


# --- command line, report, fragment --------------------------------------------------------

def test_calibrate_cli_report_and_fragment_round_trip(tmp_path, capsys):
    """7 labels, a path-only manifest with subjects and other spellings (mapped by a YAML label
    map), one video without faces and one not in the run: the CLI prints the paper-style
    tables, the report names every figure, and threshold.yaml feeds `run` and `aggregate`."""
    rng = np.random.default_rng(5)
    true = [LABELS[i] for i in rng.integers(0, 7, 48)]
    ids = [f"v{i:02d}" for i in range(48)]
    counts = dict(zip(ids, known_counts(true, rng=rng)))
    sources = {vid: f"/archive/{vid}.mp4" for vid in ids + ["nf"]}
    out = tmp_path / "run"
    write_run(out, counts, faceless={"nf": 5}, sources=sources, settings=SETTINGS_7)
    spelled = {"happy": "happiness", "sad": "sadness"}
    manifest = write_manifest(tmp_path / "labels.csv", {
        "path": [sources[v] for v in ids] + [sources["nf"], "/archive/missing.mp4", "/archive/unlabelled.mp4"],
        "label": [spelled.get(l, l) for l in true] + ["happy", "sad", None],
        "subject_id": [f"s{i % 12}" for i in range(48)] + ["s0", "s1", "s2"]})
    (tmp_path / "map.yaml").write_text("happiness: happy\nsadness: sad\n")
    report_dir = tmp_path / "cal"
    code = cli.main(["calibrate", "--output", str(out), "--manifest", str(manifest), "--report", str(report_dir),
                     "--label-map", str(tmp_path / "map.yaml"), "--name", "synthetic"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "synthetic (cross-validated)" in printed and "mean over folds" in printed
    report = json.loads((report_dir / "calibration.json").read_text())
    assert report["videos"]["not_in_run"] == 1 and report["videos"]["without_face_frames"] == 1
    assert report["videos"]["unlabelled"] == 1 and report["videos"]["labelled"] == 50
    assert report["label_map"] == {"happiness": "happy", "sadness": "sad"}
    specific = report["settings"]["specific"]
    assert specific["n_videos"] == 48 and specific["cv_scheme"] == "grouped by subject_id, stratified by true label"
    assert specific["groups"] == 12
    assert specific["cross_validated"]["mean_over_folds"]["accuracy"] == 1.0
    threshold, fallback = report["fitted"]["threshold"], report["fitted"]["fallback"]
    assert 0.10 < threshold <= 0.30

    # The report: every figure embedded with its caption, and the paper-style tables.
    html = parse_report(report_dir / "report.html")
    expected = {f"fig-{s}-{k}" for s in ("specific", "broad") for k in FIGURES}
    assert set(html.figures) == expected
    for fig_id, fig in html.figures.items():
        setting, key = fig_id.split("-")[1:]
        assert fig["img"].startswith("data:image/png;base64,")
        assert base64.b64decode(fig["img"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
        assert FIGURES[key] in fig["caption"] and f"{setting} setting" in fig["caption"]
    for setting in ("specific", "broad"):
        table = html.tables[f"paper-table-{setting}"]
        assert table["header"] == list(PAPER_COLUMNS)
        assert [r[0] for r in table["rows"]] == ["synthetic (cross-validated)",
                                                 "synthetic (mean over folds, as the paper: optimistic)"]
        rows = report["settings"][setting]["paper_table"]
        assert [float(r[1]) for r in table["rows"]] == pytest.approx([r["threshold_accuracy"] for r in rows], abs=1e-4)
        assert [float(r[3]) for r in table["rows"]] == pytest.approx([r["top1_accuracy"] for r in rows], abs=1e-4)

    # The fragment: `run` layers it over local.yaml, `aggregate` relabels the videos with it.
    fragment = report_dir / "threshold.yaml"
    fitted = {"job": {"aggregate": {"threshold": threshold, "fallback": fallback}}}
    assert yaml.safe_load(fragment.read_text()) == fitted
    args = build_parser("").parse_args(["run", "--input", "x.csv", "--output", str(out),
                                     "--config", str(DEFAULT_CONFIG), "--config", str(fragment)])
    config = load_config(args.config, {"input": args.input, "output": args.output}, args.set)
    assert (config.job.aggregate.threshold, config.job.aggregate.fallback) == (threshold, fallback)
    assert config.job.aggregate.broad_map == DEFAULT_BROAD_MAP and config.job.decode == load_config().job.decode
    assert cli.main(["aggregate", "--output", str(out), "--config", str(fragment)]) == 0
    videos = read_table(str(out), "videos").to_pylist()
    assert {v["threshold"] for v in videos} == {threshold} and {v["fallback"] for v in videos} == {fallback}
    by_id = {v["video_id"]: v for v in videos}
    assert [by_id[v]["threshold_label"] for v in ids] == true


def test_sixteen_class_vocabulary_end_to_end(tmp_path):
    """A 16-class model (labels read from the run's prob_* columns) with a config fragment for
    its neutral label and broad map: both settings are scored over 16 and 3 labels."""
    labels = ("amusement", "anger", "anxiety", "awe", "boredom", "calm", "contempt", "despair", "disgust",
              "elation", "fear", "interest", "pride", "relief", "sadness", "neutral")
    positive = {"amusement", "awe", "calm", "elation", "interest", "pride", "relief"}
    broad_map = {l: "neutral" if l == "neutral" else ("positive" if l in positive else "negative") for l in labels}
    rng = np.random.default_rng(16)
    true = [labels[i] for i in np.tile(np.arange(16), 4)]
    ids = [f"c{i:03d}" for i in range(len(true))]
    write_run(tmp_path / "run", dict(zip(ids, known_counts(true, labels, rng=rng))), labels=labels)
    config = tmp_path / "model16.yaml"
    config.write_text(yaml.safe_dump({"job": {"aggregate": {"neutral_label": "neutral", "broad_map": broad_map}}}))
    manifest = write_manifest(tmp_path / "m.csv", {"video_id": ids, "label": true})
    assert cli.main(["calibrate", "--output", str(tmp_path / "run"), "--manifest", str(manifest),
                     "--config", str(config), "--thresholds", "0.1:0.5:0.1"]) == 0
    report = json.loads((tmp_path / "run" / "calibration" / "calibration.json").read_text())
    specific, broad = report["settings"]["specific"], report["settings"]["broad"]
    assert specific["labels"] == list(labels) and len(specific["classes_seen"]) == 16
    assert len(specific["top1"]["pooled"]["confusion"]) == 16
    assert broad["labels"] == ["positive", "negative", "neutral"]
    assert specific["cross_validated"]["mean_over_folds"]["accuracy"] == 1.0
    assert 0.10 < report["fitted"]["threshold"] <= 0.30
    assert set(parse_report(tmp_path / "run" / "calibration" / "report.html").figures) == {
        f"fig-{s}-{k}" for s in ("specific", "broad") for k in FIGURES}


def test_binary_positive_negative_end_to_end(tmp_path):
    """A positive-vs-negative study (labels spelled pos/neg, mapped on the command line): the
    specific setting is skipped with its reason, the broad one is scored and fitted."""
    rng = np.random.default_rng(2)
    true = [("happy", "surprise")[i % 2] if i < 20 else ("sad", "angry", "fear")[i % 3] for i in range(40)]
    ids = [f"b{i:02d}" for i in range(40)]
    counts = known_counts(true, rng=rng)
    write_run(tmp_path / "run", dict(zip(ids, counts)))
    manifest = write_manifest(tmp_path / "m.csv",
                              {"video_id": ids, "label": ["pos" if i < 20 else "neg" for i in range(40)]})
    assert cli.main(["calibrate", "--output", str(tmp_path / "run"), "--manifest", str(manifest),
                     "--label-map", "pos=positive,neg=negative", "--report", str(tmp_path / "cal")]) == 0
    report = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert report["settings"]["specific"]["evaluated"] is False
    assert "broad labels" in report["settings"]["specific"]["reason"]
    broad = report["settings"]["broad"]
    assert broad["class_counts"] == {"negative": 20, "positive": 20}
    assert broad["cross_validated"]["pooled_out_of_fold"]["uar"] == 1.0
    # No neutral video: every threshold up to 0.30 is right everywhere; ties go to the smallest.
    assert report["fitted"] == {"setting": "broad", "threshold": 0.05, "fallback": "neutral"}
    html = parse_report(tmp_path / "cal" / "report.html")
    assert set(html.figures) == {f"fig-broad-{k}" for k in FIGURES} and "paper-table-specific" not in html.tables


def test_fragment_round_trips_through_load_config_and_reaggregate(tmp_path):
    """A fragment written from a calibration changes only threshold and fallback, and
    reaggregate() under it gives the same labels as apply_methods at that setting."""
    true = np.asarray(["happy", "neutral", "sad", "neutral", "fear"] * 4, dtype=object)
    counts = known_counts(true)
    cal = calibrate_counts(np.arange(20).astype(str), counts, true, None, SETTINGS_7, parse_thresholds("0.25,0.5"),
                           n_folds=2)
    cal.report["settings"]["specific"]["fitted"].update(threshold=0.5, fallback="top1")
    cal.report["fitted"].update(threshold=0.5, fallback="top1")
    paths = write_calibration(cal, str(tmp_path / "cal"))
    config = load_config([DEFAULT_CONFIG, paths["fragment"]])
    assert dataclasses_equal_except(config, load_config(), {"threshold": 0.5, "fallback": "top1"})
    settings = aggregation_settings(config)
    ids = [f"r{i}" for i in range(20)]
    write_run(tmp_path / "run", dict(zip(ids, counts)), settings=SETTINGS_7)
    from pipelines.reaggregate import reaggregate
    table = reaggregate(str(tmp_path / "run"), config.with_job(validation={"enabled": False}))
    expected = apply_methods(counts, LABELS, "neutral", 0.5, "top1").threshold
    by_id = dict(zip(table.column("video_id").to_pylist(), table.column("threshold_label").to_pylist()))
    assert [by_id[v] for v in ids] == list(expected)
    assert set(table.column("threshold").to_pylist()) == {0.5}


def dataclasses_equal_except(a, b, aggregate_changes: dict) -> bool:
    """a's config equals b's except for the given job.aggregate keys."""
    da, db = a.as_dict(), b.as_dict()
    db["job"]["aggregate"].update(aggregate_changes)
    return da == db
