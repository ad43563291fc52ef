"""MediaPipe's face landmarker on TF Lite: 478 3D points (with iris) and 52 blendshapes per face.

The networks are Google's, inside ``face_landmarker.task`` (registry entries ``face_landmarker``
for the 478-point mesh and ``face_blendshapes``; the task's detector is ``blazeface_landmarker``,
the same network as ``blazeface_short``). No mediapipe package is needed at run time; on the same
frames this reproduces mediapipe 1.2.2's FaceLandmarker (IMAGE mode) to 0.06 px and 0.003 in
blendshape score, and fed MediaPipe's own landmarks the blendshape network gives its scores
bit for bit.

Preprocessing contract (MediaPipe's face_landmarker graphs; google-ai-edge/mediapipe, read at
commit 85c0cdc):

* region of interest: the detector's box (unclipped) scaled 1.5x in width and height about its
  centre, not squared, rotated so the eye keypoints (0 -> 1) lie level;
* mesh input: that rotated rectangle cut to 256x256 by a bilinear affine warp (border
  replicated; a non-square region is stretched), RGB in [0, 1];
* mesh output: 478 x (x, y, z) in input pixels, mapped back through the same warp (z scaled
  by the region's width / 256), and a face-presence logit;
* blendshape input: x, y in frame pixels of 146 of the 478 points (MediaPipe's
  ``kLandmarksSubsetIdxs``, iris points included) -> 52 scores in [0, 1], in
  schemas.features.BLENDSHAPE_NAMES order.

Known limits of the network (measured on the sample media): cheekSquint, noseSneer, cheekPuff,
jaw sideways/forward, mouthClose and ``_neutral`` stay near 0 on every face; a crying grimace
scores mouthSmile as high as laughter; resting levels differ between people (per-video
baselines help).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np

from models.tflite import interpreter
from schemas.features import ACTION_UNITS, BLENDSHAPE_NAMES, action_unit_column

N_POINTS = 478
MESH_INPUT = 256
ROI_SCALE = 1.5
# face_blendshapes_graph.cc: kLandmarksSubsetIdxs (146 of the 478 points, iris 468-477 included).
BLENDSHAPE_SUBSET = np.array([
    0, 1, 4, 5, 6, 7, 8, 10, 13, 14, 17, 21, 33, 37, 39, 40, 46, 52, 53, 54, 55, 58, 61, 63, 65, 66, 67, 70, 78,
    80, 81, 82, 84, 87, 88, 91, 93, 95, 103, 105, 107, 109, 127, 132, 133, 136, 144, 145, 146, 148, 149, 150, 152,
    153, 154, 155, 157, 158, 159, 160, 161, 162, 163, 168, 172, 173, 176, 178, 181, 185, 191, 195, 197, 234, 246,
    249, 251, 263, 267, 269, 270, 276, 282, 283, 284, 285, 288, 291, 293, 295, 296, 297, 300, 308, 310, 311, 312,
    314, 317, 318, 321, 323, 324, 332, 334, 336, 338, 356, 361, 362, 365, 373, 374, 375, 377, 378, 379, 380, 381,
    382, 384, 385, 386, 387, 388, 389, 390, 397, 398, 400, 402, 405, 409, 415, 454, 466, 468, 469, 470, 471, 472,
    473, 474, 475, 476, 477], np.int64)


@dataclass(frozen=True)
class Roi:
    """A rotated rectangle in frame pixels: centre, size, rotation (radians; positive turns the
    crop's x axis towards +y on screen, MediaPipe's sign)."""
    cx: float
    cy: float
    w: float
    h: float
    rotation: float = 0.0

    def to_frame(self, size: int = MESH_INPUT) -> np.ndarray:
        """2x3 affine map from crop pixels to frame pixels (MediaPipe's corner-to-corner map)."""
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        sx, sy = self.w / size, self.h / size
        return np.array([[c * sx, -s * sy, self.cx - 0.5 * self.w * c + 0.5 * self.h * s],
                         [s * sx, c * sy, self.cy - 0.5 * self.w * s - 0.5 * self.h * c]], np.float64)


def eye_rotation(eye0: Sequence[float], eye1: Sequence[float]) -> float:
    """The rotation that levels the eyes (DetectionsToRectsCalculator, target angle 0), in (-pi, pi]."""
    angle = -math.atan2(-(float(eye1[1]) - float(eye0[1])), float(eye1[0]) - float(eye0[0]))
    return angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))


def roi_from_box(box: Sequence[float], eyes: Optional[np.ndarray] = None) -> Roi:
    """The landmarker's region of interest from a detector box x, y, w, h (frame pixels, unclipped)
    and, when the detector gives them, the two eye centres."""
    x, y, w, h = (float(v) for v in box)
    rotation = 0.0 if eyes is None else eye_rotation(eyes[0], eyes[1])
    return Roi(x + w / 2, y + h / 2, w * ROI_SCALE, h * ROI_SCALE, rotation)


@dataclass
class LandmarkerResult:
    points: np.ndarray          # float32[478, 3]: x, y frame pixels; z on the same scale (smaller = nearer)
    presence: float             # the mesh network's face-presence probability
    blendshapes: np.ndarray     # float32[52] in BLENDSHAPE_NAMES order, each in [0, 1]


class FaceLandmarker:
    """The 478-point mesh and the blendshape network; one instance per DoFn (interpreters are not
    thread-safe), made in ``setup``."""

    def __init__(self, mesh_path: str, blendshapes_path: str, num_threads: int = 1):
        self._mesh = interpreter(mesh_path, num_threads)
        self._mesh.allocate_tensors()
        self._mesh_in = self._mesh.get_input_details()[0]["index"]
        outputs = self._mesh.get_output_details()
        by_size = {int(np.prod(d["shape"])): d["index"] for d in outputs}
        self._points = by_size[N_POINTS * 3]
        # Output 1 is the presence logit; output 2 (tongue_out) is not used by MediaPipe's graph.
        self._presence = next(d["index"] for d in outputs if d["name"] == "Identity_1")
        self._bs = interpreter(blendshapes_path, num_threads)
        self._bs.allocate_tensors()
        self._bs_in = self._bs.get_input_details()[0]["index"]
        self._bs_out = self._bs.get_output_details()[0]["index"]
        if int(np.prod(self._bs.get_output_details()[0]["shape"])) != len(BLENDSHAPE_NAMES):
            raise ValueError(f"{blendshapes_path}: not a {len(BLENDSHAPE_NAMES)}-blendshape network")

    def crop(self, frame_bgr: np.ndarray, roi: Roi) -> np.ndarray:
        """The 1x256x256x3 RGB float tensor in [0, 1] the mesh network reads."""
        patch = cv2.warpAffine(frame_bgr, roi.to_frame(), (MESH_INPUT, MESH_INPUT),
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
        return (cv2.cvtColor(patch, cv2.COLOR_BGR2RGB).astype(np.float32) * np.float32(1.0 / 255.0))[None]

    def landmarks(self, frame_bgr: np.ndarray, roi: Roi) -> tuple[np.ndarray, float]:
        """(float32[478, 3] frame-pixel points, presence probability) for one region of interest."""
        self._mesh.set_tensor(self._mesh_in, self.crop(frame_bgr, roi))
        self._mesh.invoke()
        raw = self._mesh.get_tensor(self._points).reshape(N_POINTS, 3).astype(np.float64)
        logit = float(self._mesh.get_tensor(self._presence).reshape(-1)[0])
        m = roi.to_frame()
        xy = raw[:, :2] @ m[:, :2].T + m[:, 2]
        z = raw[:, 2:3] * (roi.w / MESH_INPUT)
        presence = 1.0 / (1.0 + math.exp(-min(max(logit, -80.0), 80.0)))
        return np.concatenate([xy, z], axis=1).astype(np.float32), presence

    def blendshapes(self, points: np.ndarray) -> np.ndarray:
        """float32[52] scores from frame-pixel landmarks (x, y of the 146-point subset)."""
        subset = np.ascontiguousarray(np.asarray(points, np.float32)[BLENDSHAPE_SUBSET, :2][None])
        self._bs.set_tensor(self._bs_in, subset)
        self._bs.invoke()
        return self._bs.get_tensor(self._bs_out).reshape(-1).astype(np.float32).copy()

    def process(self, frame_bgr: np.ndarray, box: Sequence[float], eyes: Optional[np.ndarray] = None
                ) -> LandmarkerResult:
        """Points, presence and blendshapes of the face in ``box`` (unclipped, + its eye keypoints)."""
        points, presence = self.landmarks(frame_bgr, roi_from_box(box, eyes))
        return LandmarkerResult(points, presence, self.blendshapes(points))


def action_units(blendshapes: np.ndarray) -> dict[str, np.ndarray]:
    """The AU view of float[m, 52] blendshape scores: column -> float32[m], each AU the mean of its
    blendshapes (schemas.features.ACTION_UNITS: the published correspondence)."""
    index = {name: i for i, name in enumerate(BLENDSHAPE_NAMES)}
    scores = np.asarray(blendshapes, np.float32).reshape(-1, len(BLENDSHAPE_NAMES))
    return {action_unit_column(au): scores[:, [index[b] for b in au.blendshapes]].mean(axis=1).astype(np.float32)
            for au in ACTION_UNITS}
