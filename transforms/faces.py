"""ExtractFaces: work units -> chunks of face crops (decode, detect, crop in one DoFn).

Decoding and detection share one DoFn on purpose: a decoded frame (about 0.7 MB at
640x360, 2.7 MB at 720p) never crosses a stage boundary. Through a shuffle frames move at
about 125/s on two cores (FACTS.md), and the DaskRunner materialises every stage's
output per partition, so only the crops the models need (64x64 grey, about 4 KB a face)
leave this stage. The detector is a registry model, loaded once per process in setup().
With landmarks on, the face mesh runs here too, for the same reason (it reads a 192x192
crop of the full-resolution frame); its 468 points (5.6 KB a face) travel with the chunk.
With resnet50 on, a 224x224 RGB crop of the same square box is made here too (147 KB a
face) and chunks are capped at DEEP_CHUNK_FRAMES sampled frames to bound that memory.

Output: `FaceChunk`s (up to `chunk_frames` sampled frames each, the unit's last chunk
flagged, an empty last chunk for a unit with no sampled frame) or one `DeadLetter` when
the unit fails. Frames with no face stay in the chunk with `faces_in_frame == 0`.
"""
from __future__ import annotations

from typing import Iterator, Optional, Union

import apache_beam as beam
import cv2
import numpy as np
from apache_beam.metrics import Metrics

from models.deep import RESNET50_SIZE
from models.emotion import CROP_SIZE
from models.face_detectors import Detections, build_detector
from models.landmarks import N_LANDMARKS, FaceMesh, MeshResult
from models.registry import resolve
from transforms.decode import iter_frames, local_file
from transforms.elements import DeadLetter, FaceChunk, WorkUnit


# With resnet50 on, a chunk carries 224x224x3 crops: 147 KB a face, so the default 1024-frame
# chunk would hold 150 MB per chunk in flight (more with keep_all_faces). 256 frames keep it
# at 38.5 MB (one face a frame); chunks only set the frame-file size, never the rows.
DEEP_CHUNK_FRAMES = 256


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


class _ChunkBuilder:
    """Accumulates sampled frames and their faces; emits FaceChunks of at most chunk_frames."""

    def __init__(self, unit: WorkUnit, chunk_frames: int, with_mesh: bool = False, with_rgb: bool = False):
        self.unit = unit
        self.chunk_frames = chunk_frames
        self.with_mesh = with_mesh
        self.with_rgb = with_rgb
        self.chunk_index = 0
        self._reset()

    def _reset(self):
        self.frame_index, self.timestamps, self.faces_in_frame = [], [], []
        self.face_frame, self.face_index, self.boxes, self.scores, self.crops = [], [], [], [], []
        self.landmarks, self.presence, self.rgb = [], [], []
        self.frames_decoded = 0
        self.size = (0, 0)

    def add(self, frame_index: int, timestamp: float, faces_found: int, detections: Detections,
            crops: list[np.ndarray], frame_shape: tuple[int, int], meshes: Optional[list[MeshResult]] = None,
            rgb_crops: Optional[list[np.ndarray]] = None):
        """``faces_found``: faces detected; ``detections``/``crops``/``meshes``/``rgb_crops``: the faces kept
        (primary first)."""
        self.rgb.extend(rgb_crops or [])
        for mesh in meshes or []:
            self.landmarks.append(mesh.points)
            self.presence.append(mesh.presence)
        pos = len(self.frame_index)
        self.frame_index.append(frame_index)
        self.timestamps.append(timestamp)
        self.faces_in_frame.append(faces_found)
        self.size = frame_shape
        for i, crop in enumerate(crops):
            self.face_frame.append(pos)
            self.face_index.append(i)
            self.boxes.append(detections.boxes[i])
            self.scores.append(detections.scores[i])
            self.crops.append(crop)

    @property
    def full(self) -> bool:
        return len(self.frame_index) >= self.chunk_frames

    def emit(self, last: bool) -> FaceChunk:
        height, width = self.size
        chunk = FaceChunk(
            video_id=self.unit.video.video_id, segment_index=self.unit.segment_index,
            chunk_index=self.chunk_index, last=last,
            frame_width=width or self.unit.video.width, frame_height=height or self.unit.video.height,
            frames_decoded=self.frames_decoded,
            frame_index=np.asarray(self.frame_index, np.int64),
            timestamp_s=np.asarray(self.timestamps, np.float64),
            faces_in_frame=np.asarray(self.faces_in_frame, np.int16),
            face_frame=np.asarray(self.face_frame, np.int32),
            face_index=np.asarray(self.face_index, np.int16),
            boxes=np.asarray(self.boxes, np.float32).reshape(-1, 4),
            scores=np.asarray(self.scores, np.float32),
            crops=np.asarray(self.crops, np.uint8).reshape(-1, CROP_SIZE, CROP_SIZE),
            landmarks=np.asarray(self.landmarks, np.float32).reshape(-1, N_LANDMARKS, 3) if self.with_mesh else None,
            mesh_presence=np.asarray(self.presence, np.float32) if self.with_mesh else None,
            face_rgb=(np.asarray(self.rgb, np.uint8).reshape(-1, RESNET50_SIZE, RESNET50_SIZE, 3)
                      if self.with_rgb else None),
        )
        self.chunk_index += 1
        self._reset()
        return chunk


class ExtractFacesFn(beam.DoFn):
    """WorkUnit -> FaceChunk* | DeadLetter. See the module docstring."""

    def __init__(self, detector: str, detector_path: Optional[str], min_score: float, keep_all_faces: bool,
                 crop_margin: float, chunk_frames: int, sample_fps: Optional[float], landmarks: bool = False,
                 mesh_path: Optional[str] = None, resnet50: bool = False, decoder_threads: int = 1):
        self._landmarks = landmarks
        self._decoder_threads = decoder_threads
        self._resnet50 = resnet50
        self._mesh_path = mesh_path
        self._mesh = None
        self._detector_name = detector
        self._detector_path = detector_path
        self._min_score = min_score
        self._keep_all_faces = keep_all_faces
        self._crop_margin = crop_margin
        self._chunk_frames = min(chunk_frames, DEEP_CHUNK_FRAMES) if resnet50 else chunk_frames
        self._sample_fps = sample_fps
        self._detector = None
        self.frames_decoded = Metrics.counter("affectflow", "frames_decoded")
        self.frames_sampled = Metrics.counter("affectflow", "frames_sampled")
        self.frames_with_face = Metrics.counter("affectflow", "frames_with_face")
        self.failed_units = Metrics.counter("affectflow", "failed_work_units")

    def setup(self):
        # One interpreter per DoFn instance: TF Lite interpreters are not thread-safe.
        self._detector = build_detector(resolve(self._detector_name, self._detector_path), self._min_score)
        if self._landmarks:
            self._mesh = FaceMesh(resolve("face_mesh", self._mesh_path).paths["weights"])

    def process(self, unit: WorkUnit) -> Iterator[Union[FaceChunk, DeadLetter]]:
        builder = _ChunkBuilder(unit, self._chunk_frames, with_mesh=self._mesh is not None, with_rgb=self._resnet50)
        stage = "decode"
        try:
            with local_file(unit.video.input.path) as path:
                for frame in iter_frames(path, unit.start_frame, unit.end_frame, unit.video.fps, self._sample_fps,
                                         self._decoder_threads):
                    builder.frames_decoded += 1
                    if frame.image is None:
                        continue
                    stage = "detect"
                    detections = self._detector.detect(frame.image)
                    found = len(detections)
                    if not self._keep_all_faces:
                        detections = detections.take(slice(0, 1))
                    crops = [crop_face(frame.image, box, self._crop_margin) for box in detections.boxes]
                    rgb_crops = ([crop_face_rgb(frame.image, box, self._crop_margin) for box in detections.boxes]
                                 if self._resnet50 else None)
                    meshes = None
                    if self._mesh is not None:
                        stage = "landmarks"
                        meshes = [self._mesh.landmarks(frame.image, box, detections.eyes(i))
                                  for i, box in enumerate(detections.boxes)]
                    builder.add(frame.index, frame.timestamp_s, found, detections, crops, frame.image.shape[:2],
                                meshes, rgb_crops)
                    stage = "decode"
                    if builder.full:
                        yield self._count(builder.emit(last=False))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a dead letter
            self.failed_units.inc()
            # Frames already decoded are kept (and accounted for); the video is marked failed.
            yield self._count(builder.emit(last=True))
            yield DeadLetter.from_exception(unit.video.video_id, unit.video.input.path, stage, exc,
                                            unit.segment_index)
            return
        yield self._count(builder.emit(last=True))

    def _count(self, chunk: FaceChunk) -> FaceChunk:
        self.frames_decoded.inc(chunk.frames_decoded)
        self.frames_sampled.inc(len(chunk.frame_index))
        self.frames_with_face.inc(int(np.count_nonzero(chunk.faces_in_frame)))
        return chunk


class ExtractFaces(beam.PTransform):
    """PCollection[WorkUnit] -> PCollection[FaceChunk | DeadLetter].

    ``resnet50``: also carry each face's 224x224 RGB crop (``FaceChunk.face_rgb``) for
    ExtractDeepFeatures; chunks are then capped at DEEP_CHUNK_FRAMES frames.
    ``decoder_threads``: FFmpeg threads per work unit (0: one per core; see iter_frames).

    Example::

        chunks = units | ExtractFaces(detector="blazeface_short", chunk_frames=1024)
    """

    def __init__(self, detector: str = "blazeface_short", detector_path: Optional[str] = None,
                 min_score: float = 0.7, keep_all_faces: bool = False, crop_margin: float = 0.1,
                 chunk_frames: int = 1024, sample_fps: Optional[float] = None, landmarks: bool = False,
                 mesh_path: Optional[str] = None, resnet50: bool = False, decoder_threads: int = 1):
        super().__init__()
        self._fn = ExtractFacesFn(detector, detector_path, min_score, keep_all_faces, crop_margin,
                                  chunk_frames, sample_fps, landmarks, mesh_path, resnet50, decoder_threads)

    def expand(self, units):
        return units | "DecodeDetectCrop" >> beam.ParDo(self._fn)
