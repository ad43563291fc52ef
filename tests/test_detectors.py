"""Face detectors: anchor generation, weighted NMS, every registry detector on a real frame, crops."""
from __future__ import annotations

import numpy as np
import pytest

from models.face_detectors import Detections, build_detector, ssd_anchors, weighted_nms
from models.registry import REGISTRY, resolve
from tests import media
from transforms.crops import crop_face

DETECTORS = sorted(name for name, spec in REGISTRY.items() if spec.kind == "face_detector")


def iou(a, b) -> float:
    """IoU of two x, y, w, h boxes."""
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


@pytest.fixture(scope="module")
def detectors():
    """Every registry face detector, loaded once for the module."""
    return {name: build_detector(resolve(name), min_score=0.7) for name in DETECTORS}


@pytest.fixture(scope="module")
def face_frame(single_face) -> np.ndarray:
    (frame,) = media.read_frames(single_face, 1)
    return frame


@pytest.fixture(scope="module")
def gradient_frame() -> np.ndarray:
    (frame,) = media.faceless_frames(1, (360, 640))
    return frame


# --- anchors and NMS ------------------------------------------------------------------------

def test_registry_has_the_documented_detectors():
    assert {"blazeface_short", "blazeface_full", "ssd_res10", "haar_frontalface"} <= set(DETECTORS)


def test_ssd_anchors_short_range():
    anchors = ssd_anchors(128, (8, 16, 16, 16), True)
    assert anchors.shape == (896, 2) and anchors.dtype == np.float32
    # stride 8: 16x16 cells, 2 anchors each; strides 16 (x3, merged): 8x8 cells, 6 anchors each.
    np.testing.assert_allclose(anchors[0], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(anchors[1], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(anchors[2], [1.5 / 16, 0.5 / 16])            # x varies fastest
    np.testing.assert_allclose(anchors[32], [0.5 / 16, 1.5 / 16])
    np.testing.assert_allclose(anchors[512:518], [[0.5 / 8, 0.5 / 8]] * 6)
    np.testing.assert_allclose(anchors[-1], [7.5 / 8, 7.5 / 8])
    assert anchors.min() > 0 and anchors.max() < 1


def test_ssd_anchors_full_range():
    anchors = ssd_anchors(192, (4,), False)
    assert anchors.shape == (2304, 2)                                      # 48 x 48, one anchor each
    np.testing.assert_allclose(anchors[0], [0.5 / 48, 0.5 / 48])
    np.testing.assert_allclose(anchors[1], [1.5 / 48, 0.5 / 48])
    np.testing.assert_allclose(anchors[-1], [47.5 / 48, 47.5 / 48])


def test_weighted_nms_merges_overlapping_boxes_by_score():
    boxes = np.array([[1, 1, 11, 11],          # overlaps the first box: IoU 81 / 119 = 0.68
                      [50, 50, 60, 60],        # far away
                      [0, 0, 10, 10]], np.float32)
    scores = np.array([0.6, 0.8, 0.9], np.float32)
    merged, merged_scores = weighted_nms(boxes, scores, iou_threshold=0.3)
    # (0.9 * [0, 0, 10, 10] + 0.6 * [1, 1, 11, 11]) / 1.5 = [0.4, 0.4, 10.4, 10.4]
    np.testing.assert_allclose(merged, [[0.4, 0.4, 10.4, 10.4], [50, 50, 60, 60]], atol=1e-5)
    np.testing.assert_allclose(merged_scores, [0.9, 0.8])


def test_weighted_nms_keeps_boxes_below_the_iou_threshold_apart():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], np.float32)       # IoU 50 / 150 = 0.33
    merged, scores = weighted_nms(boxes, np.array([0.9, 0.8], np.float32), iou_threshold=0.5)
    np.testing.assert_allclose(merged, boxes)
    np.testing.assert_allclose(scores, [0.9, 0.8])
    merged, scores = weighted_nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.3)
    assert merged.shape == (0, 4) and scores.shape == (0,)


def test_ordered_by_size_puts_largest_box_first():
    detections = Detections(np.array([[0, 0, 10, 10], [5, 5, 30, 20], [40, 40, 20, 30], [0, 0, 5, 5]], np.float32),
                            np.array([0.99, 0.7, 0.8, 0.95], np.float32))
    ordered = detections.ordered_by_size()
    # Areas 100, 600, 600, 25: the two 600s by score, then 100, then 25.
    np.testing.assert_array_equal(ordered.boxes, [[40, 40, 20, 30], [5, 5, 30, 20], [0, 0, 10, 10], [0, 0, 5, 5]])
    np.testing.assert_allclose(ordered.scores, [0.8, 0.7, 0.99, 0.95])
    assert len(ordered) == 4


# --- the registry's detectors on real frames ------------------------------------------------

@pytest.mark.parametrize("name", DETECTORS)
def test_detector_finds_the_one_face(detectors, face_frame, name):
    found = detectors[name].detect(face_frame)
    assert len(found) == 1
    assert found.boxes.shape == (1, 4) and found.boxes.dtype == np.float32
    x, y, w, h = (float(v) for v in found.boxes[0])
    assert 0 <= x and 0 <= y and w > 40 and h > 40 and x + w <= 640 and y + h <= 360
    assert 0.7 <= float(found.scores[0]) <= 1.0
    reference = detectors["blazeface_short"].detect(face_frame).boxes[0]
    assert iou(found.boxes[0], reference) > 0.3


@pytest.mark.parametrize("name", DETECTORS)
def test_detector_finds_no_face_on_a_gradient(detectors, gradient_frame, name):
    found = detectors[name].detect(gradient_frame)
    assert len(found) == 0
    assert found.boxes.shape == (0, 4) and found.scores.shape == (0,)


def test_build_detector_rejects_an_emotion_model():
    with pytest.raises(ValueError, match="not a face detector"):
        build_detector(resolve("fer_mini_xception"))


# --- crops -----------------------------------------------------------------------------------

def test_crop_face_at_the_frame_edge_replicates_the_border():
    frame = np.zeros((360, 640, 3), np.uint8)
    frame[:, -1] = 255                          # a white last column
    # side 66, centred on x = 630: 23 of its 66 columns lie beyond the right edge.
    crop = crop_face(frame, np.float32([600, 100, 60, 60]), margin=0.1)
    assert crop.shape == (64, 64) and crop.dtype == np.uint8
    assert np.all(crop[:, -20:] == 255)         # replicated edge, not black padding
    assert np.all(crop[:, :35] == 0)            # the face keeps its scale (not stretched)


@pytest.mark.parametrize("box", [[0, 0, 50, 50], [600, 320, 40, 40], [0, 300, 640, 60]])
def test_crop_face_boxes_touching_edges_give_square_crops(face_frame, box):
    crop = crop_face(face_frame, np.float32(box), margin=0.1)
    assert crop.shape == (64, 64) and crop.dtype == np.uint8


def test_crop_face_of_a_detected_face(detectors, face_frame):
    box = detectors["blazeface_short"].detect(face_frame).boxes[0]
    crop = crop_face(face_frame, box, margin=0.1)
    assert crop.shape == (64, 64) and crop.dtype == np.uint8
    assert crop.std() > 10                      # a real face, not a flat patch
