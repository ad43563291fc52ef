"""Typed elements that flow between the stages.

Only small descriptors cross a shuffle (PlannedVideo, VideoInfo, WorkUnit, summaries);
frames never leave the DoFn that decodes them, and what flows from face extraction to the
emotion model is a chunk of 64x64 crops (about 4 KB a face); with features.resnet50 on, also
224x224 RGB crops (147 KB a face), dropped once ResNet50 has read them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from core.errors import is_transient


@dataclass(frozen=True)
class VideoInput:
    """One matched input file."""
    video_id: str
    path: str
    true_label: Optional[str] = None
    subject_id: Optional[str] = None
    extra: tuple[tuple[str, Any], ...] = ()     # other manifest columns, carried to the video table


@dataclass(frozen=True)
class RowFingerprint:
    """What identifies the work behind a video's row in the output: its bytes and its settings."""
    content_sha256: str
    settings_fingerprint: str


@dataclass(frozen=True)
class PlannedVideo:
    """A matched input and, when the output holds a row a rerun may keep, that row's fingerprint."""
    input: VideoInput
    previous: Optional[RowFingerprint] = None

    @property
    def video_id(self) -> str:
        return self.input.video_id


@dataclass(frozen=True)
class VideoInfo:
    """What probing the container found; the input of segmentation and of the video row."""
    input: VideoInput
    content_sha256: str
    size_bytes: int
    codec: Optional[str]
    width: int
    height: int
    fps: Optional[float]
    frame_count_header: Optional[int]
    segment_frames: int          # frames per work unit (the last unit runs to the end of the file)
    segments: int

    @property
    def video_id(self) -> str:
        return self.input.video_id


@dataclass(frozen=True)
class WorkUnit:
    """A time segment of one video: frames [start_frame, end_frame); end None = to end of file."""
    video: VideoInfo
    segment_index: int
    start_frame: int
    end_frame: Optional[int]


@dataclass
class FaceChunk:
    """Up to `chunk_frames` consecutive sampled frames of one work unit and their faces.

    Frame arrays have one entry per sampled frame (n); face arrays one entry per face
    (m): `face_frame` says which frame (0..n-1) a face belongs to. `crops` are the
    emotion model's input, 64x64 uint8 grey. `last` marks the final chunk of a unit;
    `frames_decoded` counts every decoded frame of this chunk, sampled or not.
    """
    video_id: str
    segment_index: int
    chunk_index: int
    last: bool
    frame_width: int
    frame_height: int
    frames_decoded: int
    frame_index: np.ndarray            # int64[n]
    timestamp_s: np.ndarray            # float64[n]
    faces_in_frame: np.ndarray         # int16[n], faces detected (before keep_all_faces filtering)
    face_frame: np.ndarray             # int32[m]
    face_index: np.ndarray             # int16[m], 0 = primary
    boxes: np.ndarray                  # float32[m, 4] x, y, w, h pixels
    scores: np.ndarray                 # float32[m]
    crops: np.ndarray                  # uint8[m, 64, 64]
    landmarks: Optional[np.ndarray] = None   # float32[m, 468 or 478, 3] frame pixels, when a mesh runs
    mesh_presence: Optional[np.ndarray] = None  # float32[m], the mesh network's face probability
    blendshapes: Optional[np.ndarray] = None  # float32[m, 52] MediaPipe blendshapes, with features.blendshapes
    # uint8[m, 224, 224, 3] RGB, same square box as `crops`, when features.resnet50 is on:
    # 147 KB a face, so 256 frames of one face = 38.5 MB per chunk (see faces.DEEP_CHUNK_FRAMES)
    face_rgb: Optional[np.ndarray] = None

    @property
    def faces(self) -> int:
        return len(self.crops)


@dataclass
class ScoredChunk:
    """A FaceChunk with the emotion model's probabilities, float32[m, n_labels], and the
    optional deep features, one row per face (None when their feature group is off)."""
    chunk: FaceChunk
    probs: np.ndarray
    labels: tuple[str, ...]
    embedding: Optional[np.ndarray] = None   # float32[m, 128] emotion network embedding (features.embedding)
    resnet50: Optional[np.ndarray] = None    # float32[m, 2048] >= 0, ResNet50 pooled features (features.resnet50)


@dataclass(frozen=True)
class ChunkSummary:
    """What writing one chunk's frame rows produced; summed per video by aggregation."""
    video_id: str
    segment_index: int
    chunk_index: int
    last: bool                         # the final chunk of its segment
    frames_decoded: int
    frames_sampled: int
    frames_with_face: int
    label_counts: tuple[int, ...]      # primary-face frames per label, in the model's label order
    last_timestamp_s: Optional[float]
    rows_written: int


@dataclass(frozen=True)
class ContentHash:
    """The bytes of a video whose container could not be probed (so a rerun can tell if it changed)."""
    video_id: str
    content_sha256: str
    size_bytes: int


@dataclass(frozen=True)
class Unchanged:
    """A video whose bytes, models and settings match its row in the output: not processed again."""
    video_id: str
    content_sha256: str


@dataclass(frozen=True)
class DeadLetter:
    """A failure, recorded as data: one per failed probe, segment, chunk or write.

    ``retryable``: the failure may pass on its own (core.errors.is_transient: out of memory,
    disk or network errors, timeouts), so the next run processes the video again even when
    its bytes and settings are unchanged; a lasting failure (a damaged file, a crop or model
    error on these bytes) is not retried until something changes.
    """
    video_id: str
    source_path: str
    stage: str
    error_type: str
    error_message: str
    segment_index: Optional[int] = None
    retryable: bool = False

    @classmethod
    def from_exception(cls, video_id: str, source_path: str, stage: str, exc: BaseException,
                       segment_index: Optional[int] = None) -> "DeadLetter":
        return cls(video_id, source_path, stage, type(exc).__name__, str(exc)[:2000], segment_index,
                   is_transient(exc))


@dataclass(frozen=True)
class VideoOutcome:
    """What the run reports per video (the row itself is on disk)."""
    video_id: str
    status: str                        # ok | no_face | failed | skipped
    frames_sampled: int
    frames_with_face: int


@dataclass(frozen=True)
class VideoResults:
    """Everything one run learned about one matched input, gathered by video id: the input of the
    per-video stages (series columns, the video row)."""
    input: VideoInput
    info: Optional[VideoInfo] = None           # None: never probed (failed, or unchanged)
    content_hash: Optional[ContentHash] = None  # bytes of a file that could not be probed
    unchanged: bool = False                     # skipped: its row and files stay as they are
    summaries: tuple[ChunkSummary, ...] = ()
    failures: tuple[DeadLetter, ...] = ()

    @property
    def video_id(self) -> str:
        return self.input.video_id

    @property
    def rows_written(self) -> int:
        return sum(s.rows_written for s in self.summaries)


@dataclass
class VideoSequence:
    """One video's primary-face frame features in time order: the input of a video classifier.

    ``features`` float32[n, d] in the model card's feature order (NaN where a feature is
    missing), ``valid`` bool[n] (a face was found and every feature is present). ``source``
    identifies the frame rows it was read from (their bytes and settings), so a rerun can tell
    whether a stored prediction still holds.
    """
    video_id: str
    features: np.ndarray
    valid: np.ndarray
    source: str = ""
    timestamps: Optional[np.ndarray] = None     # float64[n] seconds, when read from a frame table
    span: tuple[int, Optional[float], Optional[float]] = (0, None, None)   # window index, start_s, end_s (None: open)
    frame_indices: Optional[np.ndarray] = None  # int64[n], when read from a frame table

    @property
    def frames_valid(self) -> int:
        return int(np.count_nonzero(self.valid))

    def window(self, start_s: Optional[float], end_s: Optional[float]) -> "VideoSequence":
        """The frames with ``start_s <= timestamp < end_s`` (None: open end); needs timestamps."""
        if start_s is None and end_s is None:
            return self
        if self.timestamps is None:
            raise ValueError(f"video {self.video_id}: a time window needs the frames' timestamps")
        keep = np.ones(len(self.timestamps), bool)
        if start_s is not None:
            keep &= self.timestamps >= start_s
        if end_s is not None:
            keep &= self.timestamps < end_s
        return VideoSequence(self.video_id, self.features[keep], self.valid[keep], self.source, self.timestamps[keep],
                             self.span, None if self.frame_indices is None else self.frame_indices[keep])

    def windows(self, seconds: Optional[float]) -> list["VideoSequence"]:
        """The video cut into consecutive windows of ``seconds`` from 0 (None: the whole video), each
        carrying its (index, start_s, end_s)."""
        if seconds is None:
            return [self]
        last = float(self.timestamps.max()) if self.timestamps is not None and len(self.timestamps) else 0.0
        count = int(last // seconds) + 1
        return [dataclasses.replace(self.window(i * seconds, (i + 1) * seconds), span=(i, i * seconds,
                                                                                     (i + 1) * seconds))
                for i in range(count)]


@dataclass(frozen=True)
class VideoPrediction:
    """A video classifier's verdict on one video (or window of it): the class probabilities in the
    card's label order, or for a semantic model its point of the space and the vocabulary words
    nearest to it; None when the video has no valid frame (status ``no_face``)."""
    video_id: str
    status: str                         # ok | no_face
    probabilities: Optional[tuple[float, ...]]          # or a semantic model's unit vector
    frames_total: int
    frames_valid: int
    source: str = ""
    span: tuple[int, Optional[float], Optional[float]] = (0, None, None)     # the window predicted
    words: Optional[tuple[tuple[str, float], ...]] = None     # semantic: nearest words and their cosines
