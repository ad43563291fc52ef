"""`affectflow ingest`: OpenFace 2.0 and py-feat CSVs -> affectflow's frame, video and dead-letter tables.

The CSVs are written here in each tool's documented layout: OpenFace 2.0's FeatureExtraction
header (wiki "Output Format", with the space OpenFace writes after every comma) and py-feat's
``Fex.to_csv`` of ``detect_video`` (index = frame, FaceRect*, landmarks, Pitch/Roll/Yaw, 20 AUs,
7 emotions, input, frame, approx_time). Neither tool is run or imported.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from models.registry import FER2013_LABELS, REGISTRY
from pipelines.cli import main
from pipelines.config import load_config
from pipelines.ingest.job import EMFACS_MODEL, execute_ingest
from models.emfacs import emfacs_probabilities
from pipelines.ingest.frames import frame_rows, label_index
from transforms.parquet import PLAIN_MAX_ROWS
from pipelines.ingest.pyfeat import pyfeat_rows
from pipelines.output.layout import read_table
from pipelines.reaggregate import reaggregate
from pipelines.validation.job import validate_output
from schemas.external import OPENFACE_INTENSITY_AUS, OPENFACE_PRESENCE_AUS, PYFEAT_AUS, PYFEAT_EMOTIONS
from schemas.columns import PARTITION_COLUMN, prob_column
from schemas.features import feature_set_columns
from schemas.frames import frame_schema

# --- OpenFace 2.0 ------------------------------------------------------------------------------

OPENFACE_HEADER = (
    ["frame", "face_id", "timestamp", "confidence", "success"]
    + [f"gaze_{e}_{a}" for e in "01" for a in "xyz"] + ["gaze_angle_x", "gaze_angle_y"]
    + [f"eye_lmk_{c}_{i}" for c in ("x", "y", "X", "Y", "Z") for i in range(56)]
    + ["pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz"]
    + [f"{c}_{i}" for c in ("x", "y", "X", "Y", "Z") for i in range(68)]
    + ["p_scale", "p_rx", "p_ry", "p_rz", "p_tx", "p_ty"] + [f"p_{i}" for i in range(34)]
    + [f"AU{au}_r" for au in OPENFACE_INTENSITY_AUS] + [f"AU{au}_c" for au in OPENFACE_PRESENCE_AUS])

HAPPY = {"06": 4.0, "12": 4.0}
SAD = {"01": 3.0, "04": 3.0, "15": 3.0}


def openface_row(frame: int, face_id: int, timestamp: float, success: int, aus: dict, confidence: float = 0.98,
                 box=(100.0, 120.0, 300.0, 360.0), pose_tz: float = 550.0) -> dict:
    """One OpenFace row; the 68 2D landmarks span ``box`` (x0, y0, x1, y1); AUs present where intensity >= 1."""
    row = {c: 0.0 for c in OPENFACE_HEADER}
    row.update(frame=frame, face_id=face_id, timestamp=timestamp, confidence=confidence, success=success,
               pose_Tz=pose_tz, gaze_angle_x=0.12)
    xs, ys = np.linspace(box[0], box[2], 68), np.linspace(box[1], box[3], 68)
    row.update({f"x_{i}": xs[i] for i in range(68)})
    row.update({f"y_{i}": ys[i] for i in range(68)})
    for au, value in aus.items():
        row[f"AU{au}_r"] = value
        row[f"AU{au}_c"] = 1.0 if value >= 1 else 0.0
    return row


def write_openface(path: Path, rows: list[dict], header=OPENFACE_HEADER) -> Path:
    """As OpenFace writes it: ", " between fields, header included."""
    lines = [", ".join(header)] + [", ".join(f"{r[c]:g}" for c in header) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def openface_inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("openface_csvs")
    write_openface(folder / "happy.csv", [
        openface_row(1, 0, 0.0, 1, HAPPY),
        openface_row(2, 0, 0.04, 1, HAPPY),
        openface_row(3, 0, 0.08, 0, {}, confidence=0.15),           # tracking failed
        openface_row(4, 0, 0.12, 1, HAPPY)])
    write_openface(folder / "two_faces.csv", [                      # FaceLandmarkVidMulti: a row per face
        openface_row(1, 0, 0.0, 1, {}),
        openface_row(1, 1, 0.0, 1, HAPPY, box=(400.0, 100.0, 500.0, 220.0)),
        openface_row(2, 0, 0.04, 0, {}, confidence=0.1),
        openface_row(2, 1, 0.04, 1, SAD, box=(-20.0, 100.0, 80.0, 220.0)),   # landmarks past the left edge
        openface_row(3, 0, 0.08, 0, {}, confidence=0.05),
        openface_row(3, 1, 0.08, 0, {}, confidence=0.02)])
    write_openface(folder / "no_face.csv", [openface_row(1, 0, 0.0, 0, {}, confidence=0.0),
                                            openface_row(2, 0, 0.04, 0, {}, confidence=0.0)])
    good = write_openface(folder / "malformed.csv", [openface_row(1, 0, 0.0, 1, HAPPY)]).read_text()
    (folder / "malformed.csv").write_text(good + "2, 0, 0.04, 0.9, 1, 7, 7, 7\n" + "3" + ", 1" * 800 + "\n")
    return folder


def _config(input_path, output, *sets):
    return load_config(None, {"input": str(input_path), "output": str(output)},
                       ["progress=false", "validation.enabled=false", *sets])


@pytest.fixture(scope="module")
def openface_out(openface_inputs, tmp_path_factory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("openface_out")
    manifest = execute_ingest(_config(openface_inputs, output), "openface", frame_size=(640, 480))
    return output, manifest


def _ids(output: Path) -> dict[str, str]:
    videos = read_table(str(output), "videos", columns=[PARTITION_COLUMN, "source_path"]).to_pylist()
    return {Path(r["source_path"]).name: r[PARTITION_COLUMN] for r in videos}


def _frames(output: Path, name: str) -> list[dict]:
    table = read_table(str(output), "frames", [_ids(output)[name]])
    return table.sort_by([("frame_index", "ascending"), ("face_index", "ascending")]).to_pylist()


def _video(output: Path, name: str) -> dict:
    return read_table(str(output), "videos", [_ids(output)[name]]).to_pylist()[0]


# --- the EMFACS rule -------------------------------------------------------------------------

def _intensities(aus: dict) -> np.ndarray:
    return np.array([[aus.get(au, 0.0) for au in OPENFACE_INTENSITY_AUS]])


def test_emfacs_rule_happy_neutral_and_mixed():
    labels = list(FER2013_LABELS)
    happy = emfacs_probabilities(_intensities(HAPPY))[0]
    assert happy.tolist() == [0, 0, 0, 1, 0, 0, 0]                # happy 0.8, neutral max(0, 1 - 1.6) = 0
    assert emfacs_probabilities(_intensities({}))[0].tolist() == [0, 0, 0, 0, 0, 0, 1]
    weak = emfacs_probabilities(_intensities({"06": 2.0, "12": 2.0}))[0]   # happy 0.4, neutral 0.2
    assert weak[labels.index("happy")] == pytest.approx(2 / 3) and weak[labels.index("neutral")] == pytest.approx(1 / 3)
    sad = emfacs_probabilities(_intensities(SAD))[0]
    assert labels[int(sad.argmax())] == "sad"
    # sad 0.6, angry 3/4/5 = 0.15, fear 6/7/5, disgust 0 (mean 0.3, capped by AU9 = 0), surprise 0.15,
    # happy 0, neutral 0
    raw = np.array([0.15, 0.0, 6 / 35, 0.0, 0.6, 0.15, 0.0])
    np.testing.assert_allclose(sad, raw / raw.sum(), rtol=1e-6)
    rows = emfacs_probabilities(np.random.default_rng(0).uniform(-1, 7, (50, 17)))
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, rtol=1e-6)
    assert (rows >= 0).all()


def test_emfacs_rule_needs_au9_for_disgust_au12_for_happy_and_ties_go_to_neutral():
    labels = list(FER2013_LABELS)
    # AU15 alone at 5: disgust capped by AU9 = 0; sad (0 + 0 + 5) / 3 / 5 = 1/3 = neutral 1 - 2/3: a tie.
    lip_corners = emfacs_probabilities(_intensities({"15": 5.0}))
    assert lip_corners[0, labels.index("disgust")] == 0.0
    assert lip_corners[0, labels.index("sad")] == pytest.approx(lip_corners[0, labels.index("neutral")])
    assert labels[label_index(lip_corners, labels)[0]] == "neutral"
    # AU6 alone (a squint) is not happiness; AU9 + AU15 is disgust.
    squint = emfacs_probabilities(_intensities({"06": 5.0}))[0]
    assert squint[labels.index("happy")] == 0.0 and labels[int(squint.argmax())] == "neutral"
    disgust = emfacs_probabilities(_intensities({"09": 4.0, "15": 4.0}))[0]
    assert labels[int(disgust.argmax())] == "disgust"
    # Without a tie the larger score wins whatever the label order.
    probs = np.array([[0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1], [0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2]])
    assert [labels[i] for i in label_index(probs, labels)] == ["neutral", "angry"]


def test_pyfeat_faces_of_equal_area_rank_left_to_right():
    rows = [pyfeat_row(0, (300, 100, 50, 50, 0.9), {"happiness": 1.0}),
            pyfeat_row(0, (20, 100, 50, 50, 0.9), {"anger": 1.0}),
            pyfeat_row(0, (20, 10, 50, 50, 0.9), {"sadness": 1.0})]
    mapped = pyfeat_rows(pd.DataFrame(rows, columns=PYFEAT_COLUMNS), 640, 480, 25.0, FER2013_LABELS)
    table = frame_rows(mapped, "v", 640, 480, FER2013_LABELS, ["pyfeat"]).to_pylist()
    assert [(r["face_index"], r["box_x"], r["box_y"], r["emotion_label"]) for r in table] == [
        (0, 20.0, 10.0, "sad"), (1, 20.0, 100.0, "angry"), (2, 300.0, 100.0, "happy")]


def test_emfacs_rule_is_registered_as_a_rule_without_files(capsys):
    spec = REGISTRY[EMFACS_MODEL]
    assert (spec.kind, dict(spec.files), spec.labels) == ("rule", {}, FER2013_LABELS)
    assert main(["models", "list"]) == 0
    listed = capsys.readouterr().out
    assert "emfacs_rules" in listed and "no files" in listed and "not a trained model" in listed
    assert main(["models", "fetch", "emfacs_rules"]) == 0            # nothing to download
    assert capsys.readouterr().out.strip() == "emfacs_rules: builtin"


# --- OpenFace ingest -----------------------------------------------------------------------------

def test_openface_values_land_in_their_columns(openface_out):
    output, _ = openface_out
    rows = _frames(output, "happy.csv")
    assert [r["frame_index"] for r in rows] == [0, 1, 2, 3]                     # OpenFace frame 1 -> 0
    assert [r["timestamp_s"] for r in rows] == [0.0, 0.04, 0.08, 0.12]
    assert [r["face_found"] for r in rows] == [True, True, False, True]       # success 0 -> no face
    assert [r["faces_in_frame"] for r in rows] == [1, 1, 0, 1]
    first, failed = rows[0], rows[2]
    assert (first["au06_r"], first["au12_r"], first["au01_r"]) == (4.0, 4.0, 0.0)
    assert (first["au06_c"], first["au12_c"], first["au28_c"]) == (True, True, False)
    assert first["pose_tz"] == 550.0 and first["gaze_angle_x"] == pytest.approx(0.12)
    assert (first["box_x"], first["box_y"], first["box_w"], first["box_h"]) == (100.0, 120.0, 200.0, 240.0)
    assert (first["frame_width"], first["frame_height"], first["face_index"], first["of_face_id"]) == (640, 480, 0, 0)
    assert first["detector_score"] == pytest.approx(0.98) and first["of_success"] is True
    assert first["emotion_label"] == "happy" and first["prob_happy"] == 1.0
    assert sum(first[prob_column(l)] for l in FER2013_LABELS) == pytest.approx(1.0)
    # a failed frame: every face column null, OpenFace's own confidence and success kept
    assert failed["of_confidence"] == pytest.approx(0.15) and failed["of_success"] is False
    assert all(failed[c] is None for c in ("face_index", "box_x", "detector_score", "prob_happy", "emotion_label",
                                           "au06_r", "au06_c", "pose_tz", "of_face_id"))


def test_openface_two_faces_rank_by_face_id(openface_out):
    output, _ = openface_out
    rows = _frames(output, "two_faces.csv")
    got = [(r["frame_index"], r["face_index"], r["of_face_id"], r["faces_in_frame"], r["emotion_label"]) for r in rows]
    assert got == [(0, 0, 0, 2, "neutral"), (0, 1, 1, 2, "happy"),
                   (1, 0, 1, 1, "sad"),              # face_id 0 lost: face_id 1 is this frame's primary face
                   (2, None, None, 0, None)]         # nobody tracked: one faceless row
    assert rows[1]["au12_r"] == 4.0 and rows[0]["au12_r"] == 0.0
    assert (rows[2]["box_x"], rows[2]["box_w"]) == (0.0, 80.0)                # clipped to the frame
    assert rows[3]["of_confidence"] == pytest.approx(0.05)                     # the lowest face_id's attempt


def test_openface_video_rows_and_dead_letter(openface_out):
    output, manifest = openface_out
    happy, two, none, bad = (_video(output, n) for n in ("happy.csv", "two_faces.csv", "no_face.csv", "malformed.csv"))
    assert (happy["status"], happy["top1_label"], happy["threshold_label"]) == ("ok", "happy", "happy")
    assert (happy["frames_sampled"], happy["frames_with_face"], happy["count_happy"]) == (4, 3, 3)
    assert (happy["width"], happy["height"], happy["fps"]) == (640, 480, pytest.approx(25.0))
    assert happy["duration_s"] == pytest.approx(0.16)
    # two faces: primary labels neutral, sad; tie -> sad comes first in the label order
    assert (two["count_neutral"], two["count_sad"], two["top1_label"], two["threshold_label"]) == (1, 1, "sad", "sad")
    assert (none["status"], none["frames_sampled"], none["frames_with_face"]) == ("no_face", 2, 0)
    assert bad["status"] == "failed" and bad["error"].startswith("ingest: IngestError: not a readable CSV")
    assert bad["content_sha256"] and bad["top1_label"] is None
    dead = read_table(str(output), "dead_letters").to_pylist()
    assert [(d[PARTITION_COLUMN], d["stage"], d["error_type"]) for d in dead] == \
        [(_ids(output)["malformed.csv"], "ingest", "IngestError")]
    assert json.loads(happy["models"])[0]["name"] == EMFACS_MODEL
    c = manifest["counts"]
    assert (c["matched"], c["processed"], c["ok"], c["no_face"], c["failed"], c["accounted"]) == (4, 4, 2, 1, 1, True)
    assert (c["frames_sampled"], c["frames_with_face"]) == (4 + 3 + 2, 3 + 2 + 0)
    assert manifest["source"] == "openface" and manifest["frame_feature_groups"] == ["openface"]
    assert manifest["models"][0]["kind"] == "rule" and "not a trained model" in manifest["models"][0]["note"]
    on_disk = json.loads((output / "run_manifest.json").read_text())
    assert on_disk["run_id"] == manifest["run_id"] and on_disk["labels"] == list(FER2013_LABELS)


def test_openface_output_layout_and_schema(openface_out):
    output, _ = openface_out
    vid = _ids(output)["happy.csv"]
    files = sorted(p.relative_to(output).as_posix() for p in output.rglob("*.parquet"))
    assert f"frames/video_id={vid}/part-00000-00000.parquet" in files
    assert f"videos/video_id={vid}/part-00000.parquet" in files
    assert not (output / "_staging").exists()
    stored = pq.ParquetFile(output / f"frames/video_id={vid}/part-00000-00000.parquet")
    # zstd, except a file of a few rows (nothing to compress): this tool output has 4 frames.
    assert stored.metadata.num_rows <= PLAIN_MAX_ROWS
    assert stored.metadata.row_group(0).column(0).compression == "UNCOMPRESSED"
    assert stored.schema_arrow.names == frame_schema(FER2013_LABELS, ["openface"]).names[1:]   # video_id in the path
    assert feature_set_columns("appearance", ["openface"]) == [f"au{au}_r" for au in OPENFACE_INTENSITY_AUS]


def test_openface_ingest_validates(openface_out):
    output, _ = openface_out
    report = validate_output(output)
    assert report.valid, report.summary()
    assert not any(f.severity == "critical" for f in report.failed)


def test_reaggregate_after_ingest(openface_out, tmp_path):
    output, _ = openface_out
    strict = load_config(None, None, ["aggregate.threshold=0.9", "aggregate.fallback=neutral"])
    table = reaggregate(str(output), strict, str(tmp_path))
    labels = {Path(r["source_path"]).name: (r["top1_label"], r["threshold_label"]) for r in table.to_pylist()}
    assert labels == {"happy.csv": ("happy", "happy"),           # 3 of 3 face frames happy >= 0.9
                      "two_faces.csv": ("sad", "neutral"),       # sad 1 of 2 < 0.9 -> fallback neutral
                      "no_face.csv": (None, None), "malformed.csv": (None, None)}


def test_rerun_skips_unchanged_csvs(openface_inputs, tmp_path):
    config = _config(openface_inputs, tmp_path)
    first = execute_ingest(config, "openface", frame_size=(640, 480))
    second = execute_ingest(config, "openface", frame_size=(640, 480))
    assert (first["counts"]["processed"], second["counts"]["processed"], second["counts"]["skipped"]) == (4, 0, 4)
    third = execute_ingest(config, "openface", frame_size=(800, 600))      # a setting that shapes rows changed
    assert third["counts"]["processed"] == 4
    assert _frames(tmp_path, "happy.csv")[0]["frame_width"] == 800


def test_manifest_input_gives_ids_labels_and_frame_size(openface_inputs, tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,video_id,label,subject_id,frame_width,frame_height,fps,site\n"
                        f"{openface_inputs / 'happy.csv'},clip-happy,happy,s1,1280,720,30,A\n"
                        f"{openface_inputs / 'two_faces.csv'},clip-two,sad,s2,1280,720,30,B\n")
    out = tmp_path / "out"
    execute_ingest(_config(manifest, out), "openface")
    videos = {r[PARTITION_COLUMN]: r for r in read_table(str(out), "videos").to_pylist()}
    assert sorted(videos) == ["clip-happy", "clip-two"]
    v = videos["clip-happy"]
    assert (v["true_label"], v["subject_id"], v["site"], v["width"], v["height"], v["fps"]) == \
        ("happy", "s1", "A", 1280, 720, 30.0)
    assert "frame_width" not in v                     # ingest settings are not carried to the video table
    assert _frames(out, "happy.csv")[0]["frame_width"] == 1280


def test_cli_ingest_exit_codes(openface_inputs, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["ingest", "openface", str(openface_inputs), "--output", str(out), "--frame-size", "640x480",
                 "--set", "validation.enabled=false", "--set", "progress=false"])
    assert code == 1                                  # malformed.csv failed; the others are in the output
    assert "ok 2, no_face 1, failed 1" in capsys.readouterr().out
    assert main(["ingest", "openface", str(openface_inputs), "--output", str(tmp_path / "o2"),
                 "--set", "validation.enabled=false"]) == 2
    assert "have no frame size: give --frame-size WxH" in capsys.readouterr().err
    assert main(["ingest", "openface", str(tmp_path / "nothing"), "--output", str(tmp_path / "o3"),
                 "--frame-size", "640x480"]) == 2
    assert "no .csv files matched" in capsys.readouterr().err


# --- py-feat ---------------------------------------------------------------------------------

PYFEAT_COLUMNS = (["FaceRectX", "FaceRectY", "FaceRectWidth", "FaceRectHeight", "FaceScore"]
                  + [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]
                  + ["Pitch", "Roll", "Yaw"] + [f"AU{au}" for au in PYFEAT_AUS] + list(PYFEAT_EMOTIONS)
                  + ["input", "frame", "approx_time"])


def pyfeat_row(frame: int, rect, emotions: dict, aus: dict = None, pose=(1.5, -2.0, 10.0)) -> dict:
    """One py-feat Fex row; ``rect`` None = the all-NaN row py-feat writes for a frame without a face."""
    row = {c: math.nan for c in PYFEAT_COLUMNS}
    row.update(input="clip.mp4", frame=frame, approx_time=f"00:{frame // 25:02d}")
    if rect is not None:
        row.update(dict(zip(PYFEAT_FACE := ["FaceRectX", "FaceRectY", "FaceRectWidth", "FaceRectHeight", "FaceScore"],
                            rect)))
        row.update({f"x_{i}": rect[0] + i for i in range(68)})
        row.update({f"y_{i}": rect[1] + i for i in range(68)})
        row.update(dict(zip(["Pitch", "Roll", "Yaw"], pose)))
        row.update({f"AU{au}": (aus or {}).get(au, 0.05) for au in PYFEAT_AUS})
        row.update({e: emotions.get(e, 0.0) for e in PYFEAT_EMOTIONS})
    return row


@pytest.fixture(scope="module")
def pyfeat_out(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pyfeat_csvs")
    rows = [
        pyfeat_row(0, (300, 100, 40, 50, 0.99), {"happiness": 0.9, "neutral": 0.1}),            # small face
        pyfeat_row(0, (-10, 60, 100, 120, 0.95), {"anger": 0.8, "neutral": 0.2}, {"04": 0.85}),  # larger: primary
        pyfeat_row(1, None, {}),
        pyfeat_row(2, (50, 60, 100, 120, 0.97), {"happiness": 1.0, "neutral": 0.6, "sadness": 0.4},
                   {"06": 0.7, "12": 0.92}),
    ]
    # Fex.to_csv of detect_video's output: the frame index is written as the first column too.
    pd.DataFrame(rows, columns=PYFEAT_COLUMNS).set_index("frame", drop=False).to_csv(folder / "clip.csv")
    pd.DataFrame([{"frame": 0, "FaceRectX": 1.0}]).to_csv(folder / "not_pyfeat.csv", index=False)
    output = tmp_path_factory.mktemp("pyfeat_out")
    execute_ingest(_config(folder, output), "pyfeat", frame_size=(640, 480), fps=25.0)
    return output


def test_pyfeat_columns_map_to_frame_rows(pyfeat_out):
    rows = _frames(pyfeat_out, "clip.csv")
    got = [(r["frame_index"], r["face_index"], r["faces_in_frame"], r["face_found"], r["emotion_label"]) for r in rows]
    assert got == [(0, 0, 2, True, "angry"), (0, 1, 2, True, "happy"), (1, None, 0, False, None),
                   (2, 0, 1, True, "happy")]
    assert [r["timestamp_s"] for r in rows] == [0.0, 0.0, 0.04, 0.08]          # frame / fps
    big, small, empty, last = rows
    assert (big["box_x"], big["box_y"], big["box_w"], big["box_h"]) == (0.0, 60.0, 90.0, 120.0)   # clipped
    assert big["detector_score"] == pytest.approx(0.95) and big["pyfeat_au04"] == pytest.approx(0.85)
    assert (big["pyfeat_pitch"], big["pyfeat_roll"], big["pyfeat_yaw"]) == (1.5, -2.0, 10.0)
    assert big["prob_angry"] == pytest.approx(0.8) and big["pyfeat_anger"] == pytest.approx(0.8)
    # raw scores summing to 2 are kept as written and renormalised in prob_*
    assert last["pyfeat_happiness"] == 1.0 and last["prob_happy"] == pytest.approx(0.5)
    assert last["prob_neutral"] == pytest.approx(0.3) and last["prob_sad"] == pytest.approx(0.2)
    assert last["pyfeat_au12"] == pytest.approx(0.92) and last["pyfeat_au43"] == pytest.approx(0.05)
    assert all(empty[c] is None for c in ("box_x", "detector_score", "prob_happy", "pyfeat_au12", "pyfeat_anger"))


def test_pyfeat_video_rows_and_validation(pyfeat_out):
    clip, bad = _video(pyfeat_out, "clip.csv"), _video(pyfeat_out, "not_pyfeat.csv")
    assert (clip["status"], clip["frames_sampled"], clip["frames_with_face"]) == ("ok", 3, 2)
    assert (clip["count_angry"], clip["count_happy"], clip["fps"], clip["duration_s"]) == (1, 1, 25.0, pytest.approx(0.12))
    assert bad["status"] == "failed" and "missing column(s)" in bad["error"]
    manifest = json.loads((pyfeat_out / "run_manifest.json").read_text())
    assert manifest["source"] == "pyfeat" and manifest["frame_feature_groups"] == ["pyfeat"]
    assert manifest["models"][0]["name"] == "pyfeat"
    report = validate_output(pyfeat_out)
    assert report.valid, report.summary()


def test_pyfeat_needs_fps(tmp_path):
    pd.DataFrame([pyfeat_row(0, (1, 1, 10, 10, 0.9), {"neutral": 1.0})], columns=PYFEAT_COLUMNS).to_csv(
        tmp_path / "c.csv", index=False)
    with pytest.raises(ValueError, match="no frame size and fps"):
        execute_ingest(_config(tmp_path / "c.csv", tmp_path / "out"), "pyfeat", frame_size=(64, 64))


def test_openface_without_2d_landmarks_has_no_box_and_validates(tmp_path):
    header = [c for c in OPENFACE_HEADER if not c.startswith(("x_", "y_"))]     # run without -2Dfp
    write_openface(tmp_path / "pose_only.csv", [openface_row(1, 0, 0.0, 1, HAPPY), openface_row(2, 0, 0.05, 0, {})],
                   header)
    out = tmp_path / "out"
    execute_ingest(_config(tmp_path / "pose_only.csv", out), "openface", frame_size=(640, 480))
    face, failed = _frames(out, "pose_only.csv")
    assert face["face_found"] and face["box_x"] is None and face["box_w"] is None
    assert face["emotion_label"] == "happy" and face["detector_score"] == pytest.approx(0.98)
    assert not failed["face_found"] and failed["of_success"] is False
    report = validate_output(out)
    assert report.valid, report.summary()


def test_calibrate_on_an_ingested_output(tmp_path, capsys):
    """Labelled OpenFace CSVs: 2 expressive frames of 5 (the rest neutral), happy or sad by video."""
    rows = []
    for i in range(6):
        aus, label = (HAPPY, "happy") if i % 2 else (SAD, "sad")
        write_openface(tmp_path / f"c{i}.csv",
                       [openface_row(f, 0, (f - 1) * 0.04, 1, aus if f < 3 else {}) for f in range(1, 6)])
        rows.append(f"c{i}.csv,{label},s{i}")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label,subject_id\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert main(["ingest", "openface", str(labels), "--output", str(out), "--frame-size", "64x48",
                 "--set", "validation.enabled=false"]) == 0
    assert main(["calibrate", "--output", str(out), "--manifest", str(labels), "--folds", "2"]) == 0
    fragment = (out / "calibration" / "threshold.yaml").read_text()
    # Top-1 says neutral (3 of 5 frames) for every video; a low threshold recovers every label
    assert "Cross-validated accuracy 1.0000" in fragment and "Top-1 0.0000" in fragment
    assert "threshold: 0.05" in fragment and "fallback: neutral" in fragment
