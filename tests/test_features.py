"""Feature groups: face-mesh landmarks and the geometric FACS-named measures, on real faces."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from models.face_detectors import build_detector
from models.landmarks import OUTER_EYE_CORNERS, FaceMesh, normalise_landmarks, roi_transform
from models.registry import resolve
from pipelines.config import load_config
from pipelines.extract import execute
from pipelines.featureset import feature_matrix
from pipelines.output.layout import read_table
from pipelines.samples import fetch_samples
from schemas.features import FEATURE_GROUPS, N_LANDMARK_VALUES, feature_columns
from models.geometry import FEATURE_NAMES, geometric_features


@pytest.fixture(scope="module")
def mesh_and_detector():
    return FaceMesh(resolve("face_mesh").paths["weights"]), build_detector(resolve("blazeface_full"))


@pytest.fixture(scope="module")
def posed(tmp_path_factory, mesh_and_detector):
    """Geometric features of the four posed stills, by expression."""
    mesh, detector = mesh_and_detector
    files = fetch_samples(tmp_path_factory.mktemp("stills"), stills=True)
    out = {}
    for path in files:
        if path.suffix != ".jpg" or not path.name.endswith("-ph.jpg"):       # the posed stills
            continue
        image = cv2.imread(str(path))
        det = detector.detect(image)
        assert len(det) >= 1, path.name
        points = mesh.landmarks(image, det.roi_box(0), det.eyes(0)).points
        out[path.stem.split("-")[2]] = {k: float(v[0]) for k, v in geometric_features(normalise_landmarks(points[None])).items()}
    return out


def test_smile_pulls_lip_corners_more_than_anger(posed):
    assert posed["hao"]["geo_au12_lip_corner_pull"] > posed["anc"]["geo_au12_lip_corner_pull"] + 0.03
    assert posed["hao"]["geo_au15_lip_corner_depress"] < posed["anc"]["geo_au15_lip_corner_depress"]


def test_open_mouths_part_lips_and_drop_jaw_more_than_closed_anger(posed):
    for open_mouth in ("hao", "su"):
        assert posed[open_mouth]["geo_au25_lips_part"] > posed["anc"]["geo_au25_lips_part"] + 0.05
    assert posed["su"]["geo_au26_jaw_drop"] > posed["anc"]["geo_au26_jaw_drop"]


def test_surprise_raises_brows_more_than_anger(posed):
    assert posed["su"]["geo_au01_02_brow_raise"] > posed["anc"]["geo_au01_02_brow_raise"] + 0.02


def test_mesh_points_sit_on_the_face(mesh_and_detector, single_face):
    mesh, detector = mesh_and_detector
    cap = cv2.VideoCapture(str(single_face))
    ok, frame = cap.read()
    det = detector.detect(frame)
    result = mesh.landmarks(frame, det.boxes[0], det.eyes(0))
    x, y, w, h = det.boxes[0]
    inside = ((result.points[:, 0] > x - 0.25 * w) & (result.points[:, 0] < x + 1.25 * w)
              & (result.points[:, 1] > y - 0.25 * h) & (result.points[:, 1] < y + 1.25 * h))
    assert result.presence > 0.9 and inside.mean() > 0.98
    a, b = OUTER_EYE_CORNERS
    norm = normalise_landmarks(result.points)
    assert np.linalg.norm(norm[b, :2] - norm[a, :2]) == pytest.approx(1.0, abs=1e-5)
    assert abs(norm[b, 1] - norm[a, 1]) < 1e-5                    # eye line level
    np.testing.assert_allclose(norm.mean(axis=0), 0, atol=1e-5)


def test_roi_transform_maps_crop_centre_to_box_centre_and_follows_roll():
    m = roi_transform(np.array([100, 50, 40, 40]), np.array([[110, 60], [130, 80]]))
    centre = m[:, :2] @ np.array([96, 96]) + m[:, 2]
    np.testing.assert_allclose(centre, [120, 70], atol=1e-9)
    assert np.degrees(np.arctan2(m[1, 0], m[0, 0])) == pytest.approx(45.0)


def test_feature_columns_are_declared_for_every_measure():
    names = [c.name for c in feature_columns(["landmarks", "geometry"])]
    assert names[:3] == ["landmarks", "landmarks_norm", "mesh_presence"]
    assert tuple(names[3:]) == FEATURE_NAMES
    with pytest.raises(ValueError, match="unknown feature groups"):
        feature_columns(["bogus"])


def test_pipeline_writes_feature_groups(tmp_path, single_face, samples_dir):
    from tests import media
    shutil.copy(single_face, tmp_path / "s.mp4")
    media.face_appears_disappears_video(tmp_path / "appears.mp4", single_face, 3, 6, 3)
    config = load_config(None, {"input": str(tmp_path), "output": str(tmp_path / "out")},
                         ["progress=false", "features.landmarks=true", "features.geometry=true",
                          "features.feature_set=appearance"])
    manifest = execute(config)
    assert "face_mesh" in {m["name"] for m in manifest["models"]}
    frames = read_table(str(tmp_path / "out"), "frames").to_pandas()
    faces, faceless = frames[frames.face_found], frames[~frames.face_found]
    assert len(faces) == 72 + 6 and len(faceless) == 6
    assert all(len(v) == N_LANDMARK_VALUES for v in faces.landmarks)
    assert faceless.landmarks.isna().all() and faceless[list(FEATURE_NAMES)].isna().all().all()
    assert faces[list(FEATURE_NAMES)].notna().all().all()
    assert (faces.mesh_presence > 0.5).all()
    pts = np.stack(faces.landmarks.to_numpy()).reshape(-1, 468, 3)
    assert (pts[..., 0] >= -5).all() and (pts[..., 0] <= faces.frame_width.to_numpy()[:, None] + 5).all()
    # The configured training set: recorded in the manifest, loaded as a matrix of the face rows.
    assert manifest["feature_set"] == {"name": "appearance", "columns": list(FEATURE_NAMES)}
    keys, x, names = feature_matrix(tmp_path / "out")
    assert names == list(FEATURE_NAMES) and x.shape == (len(faces), len(FEATURE_NAMES))
    expected = faces.sort_values(["video_id", "frame_index"])
    np.testing.assert_array_equal(keys.frame_index, expected.frame_index)
    np.testing.assert_allclose(x, expected[list(FEATURE_NAMES)].to_numpy(np.float32))
    # The output validates; a landmark vector that lost its last point is caught.
    assert manifest["validation"]["valid"] is True, manifest["validation"]
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pipelines.validation.job import validate_output
    path = sorted((tmp_path / "out" / "frames").glob("video_id=s-*/*.parquet"))[0]
    table = pq.read_table(path)
    points = table.column("landmarks").to_pylist()
    points[0] = points[0][:-3]
    i = table.schema.get_field_index("landmarks")
    pq.write_table(table.set_column(i, table.schema.field(i), pa.array(points, table.schema.field(i).type)), path)
    report = validate_output(tmp_path / "out")
    assert [(f.column, f.rule) for f in report.failed] == [("landmarks", "every vector has 1404 values")], report.summary()
