"""ExtractFaces: work units -> chunks of face crops (decode, detect, crop in one DoFn).

Decoding and detection share one DoFn on purpose: a decoded frame (about 0.7 MB at
640x360, 2.7 MB at 720p) never crosses a stage boundary. Through a shuffle frames move at
about 125/s on two cores (measured with Beam 2.77), and the DaskRunner materialises every stage's
output per partition, so only the crops the models need (64x64 grey, about 4 KB a face)
leave this stage. The detector is a registry model, loaded once per process in setup().
With landmarks, geometry or blendshapes on, a face mesh runs here too, for the same reason (it
reads a crop of the full-resolution frame): MediaPipe's face mesh (468 points, 5.6 KB a face),
or with blendshapes the face landmarker (478 points and 52 blendshapes: one mesh pass gives all).
With resnet50 on, a 224x224 RGB crop of the same square box is made here too (147 KB a
face) and chunks are capped at DEEP_CHUNK_FRAMES sampled frames to bound that memory.

Output: `FaceChunk`s (up to `chunk_frames` sampled frames each, the unit's last chunk
flagged, an empty last chunk for a unit with no sampled frame) and, when the unit fails, one
`DeadLetter` (the frames decoded before the failure are kept). Frames with no face stay in
the chunk with `faces_in_frame == 0`.
"""
from __future__ import annotations

from typing import Iterator, Mapping, Optional, Union

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from core.elements import DeadLetter, FaceChunk, WorkUnit
from core.settings import DecodeConfig, FacesConfig, FeaturesConfig
from schemas.features import BLENDSHAPE_NAMES
from models.deep import RESNET50_SIZE
from models.emotion import CROP_SIZE
from models.face_detectors import Detections, build_detector
from models.face_landmarker import N_POINTS, FaceLandmarker
from models.landmarks import N_LANDMARKS, FaceMesh, MeshResult
from models.registry import resolve
from transforms.crops import crop_face, crop_face_rgb
from transforms.dead_letters import DEAD_LETTERS, ParDoWithDeadLetters
from transforms.decode import iter_frames, local_file


# With resnet50 on, a chunk carries 224x224x3 crops: 147 KB a face, so the default 1024-frame
# chunk would hold 150 MB per chunk in flight (more with keep_all_faces). 256 frames keep it
# at 38.5 MB (one face a frame); chunks only set the frame-file size, never the rows.
DEEP_CHUNK_FRAMES = 256


class _ChunkBuilder:
    """Accumulates sampled frames and their faces; emits FaceChunks of at most chunk_frames."""

    def __init__(self, unit: WorkUnit, chunk_frames: int, with_mesh: bool = False, with_rgb: bool = False,
                 mesh_points: int = N_LANDMARKS, with_blendshapes: bool = False):
        self.unit = unit
        self.chunk_frames = chunk_frames
        self.with_mesh = with_mesh
        self.with_rgb = with_rgb
        self.mesh_points = mesh_points
        self.with_blendshapes = with_blendshapes
        self.chunk_index = 0
        self._reset()

    def _reset(self):
        self.frame_index, self.timestamps, self.faces_in_frame = [], [], []
        self.face_frame, self.face_index, self.boxes, self.scores, self.crops = [], [], [], [], []
        self.landmarks, self.presence, self.rgb, self.blendshapes = [], [], [], []
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
            if mesh.blendshapes is not None:
                self.blendshapes.append(mesh.blendshapes)
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
            landmarks=(np.asarray(self.landmarks, np.float32).reshape(-1, self.mesh_points, 3)
                       if self.with_mesh else None),
            mesh_presence=np.asarray(self.presence, np.float32) if self.with_mesh else None,
            blendshapes=(np.asarray(self.blendshapes, np.float32).reshape(-1, len(BLENDSHAPE_NAMES))
                         if self.with_blendshapes else None),
            face_rgb=(np.asarray(self.rgb, np.uint8).reshape(-1, RESNET50_SIZE, RESNET50_SIZE, 3)
                      if self.with_rgb else None),
        )
        self.chunk_index += 1
        self._reset()
        return chunk


class ExtractFacesFn(beam.DoFn):
    """WorkUnit -> FaceChunk* (+ TaggedOutput(DEAD_LETTERS, DeadLetter) when the unit fails). See the
    module docstring."""

    def __init__(self, decode: DecodeConfig, faces: FacesConfig, features: FeaturesConfig,
                 model_paths: Mapping[str, str]):
        self._decode = decode
        self._faces = faces
        self._landmarks = features.needs_mesh
        self._blendshapes = features.blendshapes
        self._resnet50 = features.resnet50
        self._detector_path = model_paths.get(faces.detector)
        self._model_paths = dict(model_paths)
        self._chunk_frames = min(decode.chunk_frames, DEEP_CHUNK_FRAMES) if features.resnet50 else decode.chunk_frames
        self._detector = None
        self._mesh = None
        self.frames_decoded = Metrics.counter("affectflow", "frames_decoded")
        self.frames_sampled = Metrics.counter("affectflow", "frames_sampled")
        self.frames_with_face = Metrics.counter("affectflow", "frames_with_face")
        self.failed_units = Metrics.counter("affectflow", "failed_work_units")

    def setup(self):
        # One interpreter per DoFn instance: TF Lite interpreters are not thread-safe.
        self._detector = build_detector(resolve(self._faces.detector, self._detector_path), self._faces.min_score)
        if self._blendshapes:
            self._mesh = _Landmarker(FaceLandmarker(
                resolve("face_landmarker", self._model_paths.get("face_landmarker")).paths["weights"],
                resolve("face_blendshapes", self._model_paths.get("face_blendshapes")).paths["weights"]))
        elif self._landmarks:
            self._mesh = FaceMesh(resolve("face_mesh", self._model_paths.get("face_mesh")).paths["weights"])

    def process(self, unit: WorkUnit) -> Iterator[Union[FaceChunk, TaggedOutput]]:
        builder = _ChunkBuilder(unit, self._chunk_frames, with_mesh=self._mesh is not None, with_rgb=self._resnet50,
                                mesh_points=N_POINTS if self._blendshapes else N_LANDMARKS,
                                with_blendshapes=self._blendshapes)
        stage = "decode"
        try:
            with local_file(unit.video.input.path) as path:
                for frame in iter_frames(path, unit.start_frame, unit.end_frame, unit.video.fps,
                                         self._decode.sample_fps, self._decode.decoder_threads):
                    builder.frames_decoded += 1
                    if frame.image is None:
                        continue
                    stage = "detect"
                    found, detections, crops, rgb_crops = self._detect_and_crop(frame.image)
                    stage = "landmarks"
                    meshes = self._meshes(frame.image, detections)
                    builder.add(frame.index, frame.timestamp_s, found, detections, crops, frame.image.shape[:2],
                                meshes, rgb_crops)
                    stage = "decode"
                    if builder.full:
                        yield self._count(builder.emit(last=False))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a dead letter
            self.failed_units.inc()
            # Frames already decoded are kept (and accounted for); the video is marked failed.
            yield self._count(builder.emit(last=True))
            yield TaggedOutput(DEAD_LETTERS, DeadLetter.from_exception(
                unit.video.video_id, unit.video.input.path, stage, exc, unit.segment_index))
            return
        yield self._count(builder.emit(last=True))

    def _detect_and_crop(self, image: np.ndarray):
        """(faces found, the kept detections (primary first), their grey crops, their RGB crops or None)."""
        detections = self._detector.detect(image)
        found = len(detections)
        if not self._faces.keep_all_faces:
            detections = detections.take(slice(0, 1))
        margin = self._faces.crop_margin
        crops = [crop_face(image, box, margin) for box in detections.boxes]
        rgb_crops = [crop_face_rgb(image, box, margin) for box in detections.boxes] if self._resnet50 else None
        return found, detections, crops, rgb_crops

    def _meshes(self, image: np.ndarray, detections: Detections) -> Optional[list[MeshResult]]:
        """The face mesh of every kept face, or None when the mesh is off."""
        if self._mesh is None:
            return None
        return [self._mesh.landmarks(image, detections.roi_box(i), detections.eyes(i)) for i in range(len(detections))]

    def _count(self, chunk: FaceChunk) -> FaceChunk:
        self.frames_decoded.inc(chunk.frames_decoded)
        self.frames_sampled.inc(len(chunk.frame_index))
        self.frames_with_face.inc(int(np.count_nonzero(chunk.faces_in_frame)))
        return chunk


class _Landmarker:
    """The face landmarker behind the face mesh's interface: MeshResult with the blendshapes filled."""

    def __init__(self, landmarker: FaceLandmarker):
        self._landmarker = landmarker

    def landmarks(self, image: np.ndarray, box: np.ndarray, eyes: Optional[np.ndarray]) -> MeshResult:
        result = self._landmarker.process(image, box, eyes)
        return MeshResult(result.points, result.presence, result.blendshapes)


class ExtractFaces(beam.PTransform):
    """PCollection[WorkUnit] -> Outputs(FaceChunk, DeadLetter): decode, detect, crop (and mesh).

    Settings: the job's ``decode`` (sampling, chunk size, decoder threads), ``faces`` (detector,
    score, primary face or all, crop margin) and ``features`` (``landmarks``/``geometry`` run the
    face mesh here; ``resnet50`` adds each face's 224x224 RGB crop and caps chunks at
    DEEP_CHUNK_FRAMES frames) sections; ``model_paths``: the job's ``models.paths``.

    Example::

        faces = units | ExtractFaces(DecodeConfig(), FacesConfig(), FeaturesConfig())
        chunks, failures = faces.values, faces.dead_letters
    """

    def __init__(self, decode: DecodeConfig, faces: FacesConfig, features: FeaturesConfig,
                 model_paths: Optional[Mapping[str, str]] = None):
        super().__init__()
        self._fn = ExtractFacesFn(decode, faces, features, dict(model_paths or {}))

    def expand(self, units):
        return units | "DecodeDetectCrop" >> ParDoWithDeadLetters(self._fn, FaceChunk)
