"""run -> train -> predict on real frames, and every bad input of train and predict as a clear message.

The labelled videos are 1-second cuts of the reference clip: its sad part (0-6 s) and its
laughing part (10-19 s), every third frame at half size, plus the cartoon clip without a face.
One woman is in all of them, so the subject ids are pretend subjects (every third cut): they
exercise the grouping, they do not make the scores a claim about people.
"""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main
from tests.media import cut_clips, sample

FAST_TRAIN = ["train.epochs=3", "train.units=8", "train.batch_size=4"]
SPANS = [(f"sad{i}", float(i), i + 1.0) for i in range(6)] + [(f"happy{i}", 10.0 + i, 11.0 + i) for i in range(9)]


def _sets(values):
    return [a for v in values for a in ("--set", v)]


def write_manifest(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory, wolfgang):
    """(run output, labelled manifest rows) of the cuts plus a faceless clip."""
    root = tmp_path_factory.mktemp("labelled")
    cut_clips(wolfgang, root / "videos", SPANS)
    cartoon = sample("no_face.mp4", root / "videos")
    rows = [{"path": f"videos/{name}.mp4", "video_id": name, "label": name.rstrip("0123456789"),
             "subject_id": f"s{i % 3}"} for i, (name, _, _) in enumerate(SPANS)]
    rows.append({"path": str(cartoon.relative_to(root)), "video_id": "cartoon", "label": "happy", "subject_id": "s0"})
    manifest = write_manifest(root / "labels.csv", rows)
    out = root / "out"
    assert main(["run", "--input", str(manifest), "--output", str(out),
                 *_sets(["features.blendshapes=true", "features.embedding=true", "progress=false"])]) == 0
    return out, rows


def train_args(out: Path, manifest: Path, dest: Path, *extra: str) -> list[str]:
    return ["train", "--output", str(out), "--manifest", str(manifest), "--dest", str(dest), "--folds", "2",
            *extra, *_sets(FAST_TRAIN)]


def test_run_train_predict_end_to_end(labelled_run, tmp_path, capsys):
    from models.registry import resolve
    from models.video_classifier import load_classifier
    from transforms.sequences import read_video_sequence
    out, rows = labelled_run
    manifest = write_manifest(tmp_path / "labels.csv", rows)
    dest = tmp_path / "models"
    assert main(train_args(out, manifest, dest, "--model", "rnn-attention", "--task", "all")) == 0
    report = json.loads((dest / "cv.json").read_text())
    names = {r["name"] for r in report["results"]}
    assert {"rnn-attention.appearance.multiclass", "mean-std-logreg.appearance.multiclass", "top1.multiclass",
            "threshold.multiclass", "rnn-attention.appearance.binary"} <= names
    assert report["videos"]["matched"] == 16
    assert report["tasks"]["multiclass"]["class_counts"] == {"happy": 10, "sad": 6}
    top1 = next(r for r in report["results"] if r["name"] == "top1.multiclass")
    assert top1["videos"] == 16 and top1["pooled"]["n"] == 16          # the cartoon counts: no label is wrong
    model = next(r for r in report["results"] if r["name"] == "rnn-attention.appearance.multiclass")
    assert model["videos"] == 15 and len(model["folds"]) == 2 and len(model["histories"]) == 2
    assert 0 <= model["mean"]["uar"] <= 1
    oof = pq.read_table(dest / "oof_predictions.parquet").to_pylist()
    assert {r["video_id"] for r in oof if r["method"] == "rnn-attention" and r["task"] == "multiclass"} == {
        name for name, _, _ in SPANS}
    assert all(abs(sum(r["probabilities"]) - 1) < 1e-5 for r in oof if r["probabilities"])
    assert "<table" in (dest / "report.html").read_text() and not list(tmp_path.glob("models.partial-*"))

    folder = dest / "rnn-attention.appearance.multiclass"
    card = json.loads((folder / "model_card.json").read_text())
    assert card["columns"][0] == "au01_inner_brow_raiser" and card["labels"] == ["happy", "sad"]
    assert card["training"]["videos"] == 15 and card["training"]["subjects"] == 3
    assert card["training"]["manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert card["training"]["run_ids"] and card["versions"]["keras"] and card["sequence_length"] >= 8
    assert len(card["scaler"]["mean"]) == 17 and card["metrics"]["cross_validated"]["folds"] == 2

    capsys.readouterr()
    assert main(["predict", "--output", str(out), "--model", str(folder), "--set", "progress=false"]) == 0
    assert "predicted 16 video(s)" in capsys.readouterr().out
    table = pq.read_table(out / "predictions").to_pandas()          # both partition columns come back
    assert len(table) == 16 and set(table["model"]) == {"rnn-attention.appearance.multiclass"}
    by_id = table.set_index("video_id")
    assert by_id.loc["cartoon", "status"] == "no_face" and np.isnan(by_id.loc["cartoon", "prob_happy"])
    ok = by_id[by_id.status == "ok"]
    assert len(ok) == 15 and set(ok.predicted_label) <= {"happy", "sad"}
    np.testing.assert_allclose(ok.prob_happy + ok.prob_sad, 1.0, atol=1e-5)
    results = json.loads((out / "validation" / "predictions" / folder.name / "results.json").read_text())
    assert results["valid"] and results["expectations"]["evaluated"] >= 15

    classifier = load_classifier(resolve("video_classifier", str(folder)))    # reloaded: the same predictions
    sequences = [read_video_sequence(str(out), v, classifier.card.columns, classifier.card.column_sizes)
                 for v in ok.index]
    np.testing.assert_allclose(classifier.predict(sequences, batch_size=1)[:, 0], ok.prob_happy, atol=1e-6)

    capsys.readouterr()
    assert main(["predict", "--output", str(out), "--model", str(dest), "--set", "progress=false"]) == 2
    assert "holds 2 models" in capsys.readouterr().err                       # multiclass and binary
    assert main(["predict", "--output", str(out), "--model", str(folder), "--set", "progress=false"]) == 0
    assert "predicted 0 video(s)" in capsys.readouterr().out                  # unchanged frames and model: kept
    assert main(["validate", str(out)]) == 0                                  # the output's suites and this model's
    assert capsys.readouterr().out.count("VALID") == 2

    damaged = tmp_path / "damaged"                                            # a video whose frames cannot be read
    shutil.copytree(out, damaged)
    next((damaged / "frames" / "video_id=happy0").glob("*.parquet")).write_bytes(b"not parquet")
    assert main(["predict", "--output", str(damaged), "--model", str(folder), "--force"]) == 1
    rows = pq.read_table(damaged / "predictions").to_pandas().set_index("video_id")
    assert rows.loc["happy0", "status"] == "failed" and "features: " in rows.loc["happy0", "error"]
    assert (rows.drop(index="happy0").status != "failed").all()


def test_a_run_applies_its_classifier_and_keeps_it_on_a_rerun(labelled_run, tmp_path):
    out, rows = labelled_run
    dest = tmp_path / "models"
    sad_happy = write_manifest(tmp_path / "labels.csv", rows[:-1])
    assert main(train_args(out, sad_happy, dest, "--model", "rnn-average")) == 0
    folder = dest / "rnn-average.appearance.multiclass"
    inputs = write_manifest(tmp_path / "inputs.csv", [{"path": str(out.parent / r["path"]), "video_id": r["video_id"]}
                                                      for r in rows[:4]])
    second = tmp_path / "second"
    sets = _sets(["features.blendshapes=true", "features.embedding=true", "progress=false",
                  f"classifier.model={folder}"])
    assert main(["run", "--input", str(inputs), "--output", str(second), *sets]) == 0
    table = pq.read_table(second / "predictions").to_pandas()
    assert sorted(table.video_id) == ["sad0", "sad1", "sad2", "sad3"] and (table.status == "ok").all()
    manifest = json.loads((second / "predictions" / f"model={folder.name}" / "_predict_manifest.json").read_text())
    assert manifest["predicted"] == 4 and manifest["validation"]["valid"]
    assert main(["run", "--input", str(inputs), "--output", str(second), *sets]) == 0
    manifest = json.loads((second / "predictions" / f"model={folder.name}" / "_predict_manifest.json").read_text())
    assert manifest["predicted"] == 0 and manifest["kept"] == 4
    other = _sets(["features.blendshapes=false", "features.geometry=true", "progress=false",
                   f"classifier.model={folder}"])           # a run whose columns the model cannot read
    assert main(["run", "--input", str(inputs), "--output", str(tmp_path / "third"), *other]) == 2
    assert not (tmp_path / "third").exists()


@pytest.mark.parametrize("case", ["none in the run", "one class", "no subjects", "bad task"])
def test_train_refuses_bad_input_with_a_clear_message_and_writes_nothing(labelled_run, tmp_path, capsys, case):
    out, rows = labelled_run
    manifest_rows = {
        "none in the run": [{**r, "video_id": f"ghost{i}", "path": f"nowhere/{i}.mp4"} for i, r in enumerate(rows)],
        "one class": [r for r in rows if r["label"] == "sad"],
        "no subjects": [{k: v for k, v in r.items() if k != "subject_id"} for r in rows],
        "bad task": rows,
    }[case]
    manifest = write_manifest(tmp_path / "labels.csv", manifest_rows)
    extra = ["--task", "binary", "--binary-map", "happy=positive"] if case == "bad task" else []
    capsys.readouterr()
    assert main(train_args(out, manifest, tmp_path / "models", *extra)) == 2
    message = capsys.readouterr().err
    assert {"none in the run": "none of the 16 labelled videos", "one class": "at least two classes",
            "no subjects": "--allow-no-subjects", "bad task": "gives no class to the labels ['sad']"}[case] in message
    assert not (tmp_path / "models").exists() and not list(tmp_path.glob("models.partial-*"))


def test_left_out_videos_are_reported(labelled_run, tmp_path):
    out, rows = labelled_run
    ghosts = [{"path": "nowhere/x.mp4", "video_id": "ghost", "label": "sad", "subject_id": "s1"}]
    manifest = write_manifest(tmp_path / "labels.csv", [{k: v for k, v in r.items() if k != "subject_id"}
                                                        for r in rows + ghosts])
    dest = tmp_path / "models"
    assert main(train_args(out, manifest, dest, "--model", "frame-average", "--allow-no-subjects")) == 0
    report = json.loads((dest / "cv.json").read_text())
    assert report["videos"]["left_out"]["not in the run"]["examples"] == ["ghost"]
    assert report["grouped_by"].startswith("video")
    model = next(r for r in report["results"] if r["method"] == "frame-average")
    assert model["videos"] == 15                                       # the cartoon has no face frame
    assert main(train_args(out, manifest, dest, "--model", "frame-average", "--allow-no-subjects")) == 2
    assert main(train_args(out, manifest, dest, "--model", "frame-average", "--allow-no-subjects",
                           "--overwrite")) == 0


def test_predict_refuses_a_model_trained_on_other_features(labelled_run, tmp_path, capsys):
    from core.settings import TrainConfig
    from models.sequence import build_model
    from models.video_classifier import ModelCard, save_classifier
    out, _ = labelled_run
    card = ModelCard(name="rnn-conv.appearance.binary", kind="rnn-conv", task="binary", feature_set="appearance",
                     columns=("geo_au01_inner_brow_raise",), column_sizes=(1,), labels=("negative", "positive"),
                     sequence_length=4, scaler={"mean": [0.0], "std": [1.0], "count": 1})
    save_classifier(tmp_path / "geo", card, build_model("rnn-conv", 1, 2, 4, TrainConfig(units=4)))
    capsys.readouterr()
    assert main(["predict", "--output", str(out), "--model", str(tmp_path / "geo")]) == 2
    assert "was trained on the appearance features ['geo_au01_inner_brow_raise']" in capsys.readouterr().err
    assert not (out / "predictions" / "model=rnn-conv.appearance.binary").exists()


SAD_TEXTS = ["She looks sad and downcast.", "Sie wirkt traurig und niedergeschlagen.", "A sorrowful face."]
HAPPY_TEXTS = ["She is laughing with joy.", "Sie lacht fröhlich.", "A happy, cheerful smile."]


def test_semantic_target_train_and_predict_per_window(labelled_run, tmp_path, capsys):
    out, rows = labelled_run
    annotations = [{"video_id": r["video_id"], "subject_id": r["subject_id"],
                    "annotation": (SAD_TEXTS if r["label"] == "sad" else HAPPY_TEXTS)[i % 3]}
                   for i, r in enumerate(rows[:-1])]
    annotations.append({"video_id": "happy3", "subject_id": "s0", "annotation": "Sie kichert."})
    manifest = write_manifest(tmp_path / "annotations.csv", annotations)
    dest = tmp_path / "semantic"
    assert main(["train", "--target", "semantic", "--output", str(out), "--manifest", str(manifest), "--dest",
                 str(dest), "--folds", "loso", "--model", "semantic-dense", *_sets(FAST_TRAIN)]) == 0
    report = json.loads((dest / "cv.json").read_text())
    assert [r["method"] for r in report["results"]] == ["mean-annotation", "semantic-dense"]
    assert report["items"] == {"manifest_rows": 16, "annotated": 16, "distinct_annotations": 7, "videos": 15}
    assert all(r["items"] == 16 and set(r["mean"]) == {"cosine", "z", "top1", "top3", "top5"}
               and len(r["folds"]["cosine"]) == 3 for r in report["results"])          # one fold per subject
    folder = dest / "semantic-dense.appearance.semantic"
    card = json.loads((folder / "model_card.json").read_text())
    assert card["task"] == "semantic" and card["target"]["encoder"] == "use_multilingual"
    assert "Traurigkeit" in card["labels"] and len(card["target"]["vocabulary_sha256"]) == 64
    assert pq.read_table(dest / "oof_predictions.parquet").num_rows == 32

    capsys.readouterr()
    sets = _sets(["classifier.window_seconds=0.5", "classifier.top_words=3"])
    assert main(["predict", "--output", str(out), "--model", str(folder), *sets]) == 0
    table = pq.read_table(out / "predictions" / f"model={folder.name}").to_pandas()
    ok = table[table.status == "ok"]
    assert len(ok) == 30 and set(ok.window_index) == {0, 1}                # 15 one-second cuts x 2 windows
    assert (table[table.video_id == "cartoon"].status == "no_face").all()
    assert all(len(w) == 3 and w[0] == n for w, n in zip(ok.top_words, ok.nearest_word))
    np.testing.assert_allclose([np.linalg.norm(e) for e in ok.embedding], 1.0, atol=1e-5)
    page = (out / "reports" / "semantic" / f"{folder.name}.html").read_text()
    assert page.count("<img") == 15 and "http" not in page
    assert main(["validate", str(out)]) == 0
    assert main(["predict", "--output", str(out), "--model", str(folder), *sets]) == 0
    assert "predicted 0 video(s)" in capsys.readouterr().out
    assert main(["predict", "--output", str(out), "--model", str(folder)]) == 0    # whole videos now: all again
    assert "predicted 16 video(s)" in capsys.readouterr().out
