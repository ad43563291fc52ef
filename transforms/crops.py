"""Face crops cut from the full frame: the emotion model's grey 64x64 and ResNet50's RGB 224x224."""
from __future__ import annotations

import cv2
import numpy as np

from models.deep import RESNET50_SIZE
from models.emotion import CROP_SIZE


def _square_patch(frame_bgr: np.ndarray, box: np.ndarray, margin: float) -> np.ndarray:
    """The BGR square centred on ``box`` (x, y, w, h), side max(w, h) * (1 + margin).

    Parts of the square outside the frame are filled by replicating the border, so a face
    at the edge keeps its scale instead of being stretched.
    """
    x, y, w, h = (float(v) for v in box)
    side = max(w, h) * (1.0 + margin)
    cx, cy = x + w / 2, y + h / 2
    x1, y1 = int(round(cx - side / 2)), int(round(cy - side / 2))
    x2, y2 = x1 + max(int(round(side)), 1), y1 + max(int(round(side)), 1)
    fh, fw = frame_bgr.shape[:2]
    pad = (max(0, -y1), max(0, y2 - fh), max(0, -x1), max(0, x2 - fw))
    patch = frame_bgr[max(y1, 0):min(y2, fh), max(x1, 0):min(x2, fw)]
    if any(pad):
        patch = cv2.copyMakeBorder(patch, *pad, cv2.BORDER_REPLICATE)
    return patch


def _resize(patch: np.ndarray, size: int) -> np.ndarray:
    interpolation = cv2.INTER_AREA if patch.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(patch, (size, size), interpolation=interpolation)


def crop_face(frame_bgr: np.ndarray, box: np.ndarray, margin: float, size: int = CROP_SIZE) -> np.ndarray:
    """uint8[size, size] grey crop of the square around ``box`` (see _square_patch): the emotion model's input."""
    return _resize(cv2.cvtColor(_square_patch(frame_bgr, box, margin), cv2.COLOR_BGR2GRAY), size)


def crop_face_rgb(frame_bgr: np.ndarray, box: np.ndarray, margin: float, size: int = RESNET50_SIZE) -> np.ndarray:
    """uint8[size, size, 3] RGB crop of the same square as crop_face: ResNet50's input."""
    return _resize(cv2.cvtColor(_square_patch(frame_bgr, box, margin), cv2.COLOR_BGR2RGB), size)
