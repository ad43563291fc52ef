"""The job's settings, declared once: types, defaults, allowed ranges and documentation.

Every stage reads these typed sections; `pipelines.config` builds them from runner YAMLs and
``--set`` overrides; the configuration reference (docs/configuration.md) is generated from the
field descriptions here. Unknown keys, wrong types and values out of range are errors that
name the dotted key (pydantic v2, strict types: ``"5"`` is not a number, ``1`` is not a bool).
Model names (``faces.detector``, ``emotion.model``) are checked against the model registry
by `pipelines.config`, which can see it.
"""
from __future__ import annotations

import re
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.features import FEATURE_SETS

DEFAULT_BROAD_MAP = {"happy": "positive", "surprise": "positive", "angry": "negative", "disgust": "negative",
                     "fear": "negative", "sad": "negative", "neutral": "neutral"}
_MEMORY = re.compile(r"\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", re.IGNORECASE)


class Section(BaseModel):
    """A settings section: unknown keys and loosely typed values are rejected."""
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=True)


class DecodeConfig(Section):
    segment_seconds: Optional[float] = Field(
        10.0, gt=0, description="Longest work unit, seconds: a video is split into equal segments of at most this "
        "length, decoded by different workers; null = one unit per video. A variable-frame-rate file stays one unit "
        "(seeking on it is not exact).")
    sample_fps: Optional[float] = Field(
        None, gt=0, description="Frames per second kept: the first frame of each 1/fps interval (a rule on the frame "
        "index, so segments sample exactly what one pass would); null = every frame.")
    chunk_frames: int = Field(
        1024, ge=1, description="Sampled frames per chunk = per frame file. Memory is bounded by one decoded frame "
        "plus one chunk of 64x64 crops (4 KB a face), whatever the video's length.")
    decoder_threads: int = Field(
        1, ge=0, description="FFmpeg decoding threads per work unit (0 = one per core). Work units already run one "
        "per core; frame threading cost 20-30% more CPU per frame on the benchmark clip. Raise it when a few long, "
        "high-resolution videos leave cores idle.")


class FacesConfig(Section):
    detector: str = Field("blazeface_short", description="Face detector: a registry name of kind face_detector "
                          "(`affectflow models list`).")
    min_score: float = Field(0.7, gt=0, le=1, description="Smallest detector score kept as a face. On the samples, "
                             "cartoon false positives scored <= 0.62 and real faces >= 0.8.")
    keep_all_faces: bool = Field(False, description="false: one row per frame for the primary face (the largest box; "
                                 "ties: higher score); true: a row per face, face_index 0 is the primary.")
    crop_margin: float = Field(0.1, ge=0, le=2, description="Emotion crop = square of side max(w, h) x (1 + margin) "
                               "around the box, grey, 64x64.")


class SmoothingConfig(Section):
    method: Literal["none", "window", "ema"] = Field(
        "none", description="smooth_<label> columns: none | window (centred moving average) | ema (exponential "
        "moving average) over the primary face's frames.")
    window: int = Field(5, ge=1, description="Frames in the centred window (odd), method window.")
    alpha: float = Field(0.3, gt=0, le=1, description="Weight of the newest frame, method ema.")

    @field_validator("window")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("must be odd (a centred window)")
        return value


class FeaturesConfig(Section):
    landmarks: bool = Field(False, description="468 face-mesh points per face, in frame pixels and normalised.")
    geometry: bool = Field(False, description="geo_* measures named after FACS action units, computed from the "
                           "landmarks (geometry, not a trained AU detector).")
    embedding: bool = Field(False, description="The emotion network's embedding (the layer before its classifier), "
                            "from the same forward pass.")
    blendshapes: bool = Field(False, description="52 MediaPipe blendshapes (bs_*) and their FACS AU view (au_*) "
                              "per face, from the face landmarker's 478-point mesh (which then also gives the "
                              "landmarks and geometry: one mesh pass per face).")
    resnet50: bool = Field(False, description="ResNet50 2048-d pooled features; needs your weights in "
                           "models.paths.resnet50.")
    geometry_baseline: bool = Field(False, description="geo_*_rel: each geo_* minus the video's median over its "
                                    "neutral-labelled frames (needs geometry).")
    baseline_min_frames: int = Field(10, ge=1, description="Fewer neutral frames than this: the _rel columns stay "
                                     "null (no baseline is invented).")
    feature_set: Literal[FEATURE_SETS] = Field(  # type: ignore[valid-type]
        "none", description="The training vector the run is configured for: none | appearance (au_* and geo_*) | "
        "deep (embedding / resnet50) | both (concatenated) | landmarks (the normalised mesh).")
    smoothing: SmoothingConfig = Field(default_factory=SmoothingConfig)

    @model_validator(mode="after")
    def _groups_needed(self) -> "FeaturesConfig":
        if self.feature_set in ("appearance", "both") and not (self.geometry or self.blendshapes):
            raise ValueError(f"feature_set={self.feature_set} needs blendshapes or geometry: true (the appearance "
                             "features)")
        if self.feature_set in ("deep", "both") and not (self.embedding or self.resnet50):
            raise ValueError(f"feature_set={self.feature_set} needs embedding or resnet50: true")
        if self.feature_set == "landmarks" and not self.landmarks:
            raise ValueError("feature_set=landmarks needs landmarks: true")
        if self.geometry_baseline and not self.geometry:
            raise ValueError("geometry_baseline needs geometry: true")
        return self

    @property
    def groups(self) -> tuple[str, ...]:
        """The frame-table feature groups the run writes (schemas.features.FEATURE_GROUPS order)."""
        return tuple(g for g in ("landmarks", "geometry", "blendshapes", "embedding", "resnet50") if getattr(self, g))

    @property
    def needs_mesh(self) -> bool:
        return self.landmarks or self.geometry or self.blendshapes

    @property
    def mesh_model(self) -> str:
        """The landmark model the run needs: the face landmarker (478 points) when blendshapes are on,
        else MediaPipe's face mesh (468)."""
        return "face_landmarker" if self.blendshapes else "face_mesh"


class EmotionConfig(Section):
    model: str = Field("fer_mini_xception", description="Emotion model: a registry name of kind emotion.")
    max_batch: int = Field(256, ge=1, description="Faces per forward pass at most.")
    runtime: Literal["tflite", "keras"] = Field(
        "tflite", description="tflite (compiled once from the Keras file and verified against it) | keras.")


class AggregateConfig(Section):
    threshold: float = Field(0.2, gt=0, le=1, description="Threshold method: m = most frequent non-neutral label, "
                             "n_m its count, n_total = frames with a classified face; the video is m if n_m >= "
                             "threshold x n_total.")
    fallback: Literal["neutral", "top1"] = Field(
        "neutral", description="When m misses the threshold: neutral (a video whose emotion never reaches the "
        "threshold stays neutral, as the paper intends) or top1.")
    neutral_label: str = Field("neutral", description="The model label that means no expression.")
    broad_map: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_BROAD_MAP),
                                      description="Model label -> broad label for the broad 3-label setting; both "
                                      "methods run on the summed counts. Replaced whole when set.")

    @field_validator("broad_map")
    @classmethod
    def _two_broad_labels(cls, value: dict[str, str]) -> dict[str, str]:
        if len(set(value.values())) < 2:
            raise ValueError(f"must map the labels to at least two broad labels, got {sorted(set(value.values()))}")
        return value


class ModelsConfig(Section):
    paths: dict[str, Union[str, dict[str, str]]] = Field(
        default_factory=dict, description="Model name -> your own file (or role -> file); see the model registry.")


class ValidationConfig(Section):
    enabled: bool = Field(True, description="Validate every run's output at its end (affectflow validate always "
                          "does).")
    after_run: Literal["changed", "all"] = Field("changed", description="What the end-of-run validation reads: "
                                                 "changed = the frame and dead-letter files of the videos the run "
                                                 "wrote, every video row and the reconciliation with the manifest; "
                                                 "all = everything, as affectflow validate does.")
    min_face_coverage_warn: Optional[float] = Field(0.5, ge=0, le=1, description="A video whose face_coverage is "
                                                    "below this: warning (null = off).")
    min_face_coverage_fail: Optional[float] = Field(None, ge=0, le=1, description="... below this: critical, the "
                                                    "output is invalid (null = off).")
    max_failed_share_warn: Optional[float] = Field(0.2, ge=0, le=1, description="Share of failed videos above this: "
                                                   "warning (null = off).")
    max_failed_share_fail: Optional[float] = Field(0.5, ge=0, le=1, description="... above this: critical (null = "
                                                   "off).")
    probability_tolerance: float = Field(0.0001, gt=0, le=0.1, description="|sum of a row's probabilities - 1| "
                                         "allowed.")
    box_tolerance_px: float = Field(1.0, ge=0, description="A face box may end this far past the frame edge.")
    memory_limit: str = Field("2GB", description="DuckDB's memory cap while validating, e.g. 512MB, 2GB; larger "
                              "work spills to disk.")

    @field_validator("memory_limit")
    @classmethod
    def _memory(cls, value: str) -> str:
        if not _MEMORY.fullmatch(value.strip()):
            raise ValueError("must be a size such as 512MB or 2GB")
        return value


class TrainConfig(Section):
    """How `affectflow train` builds and fits the video-level sequence models."""
    max_frames: int = Field(
        300, ge=2, le=10000, description="Longest sequence a model sees: a video with more frames is resampled "
        "evenly over its whole length (first and last frame kept, nothing cut off); shorter ones are padded and "
        "masked. The models' length is the longest video's, up to this.")
    rnn: Literal["gru", "lstm"] = Field("gru", description="Recurrent cell of the bidirectional RNN.")
    units: int = Field(64, ge=2, le=4096, description="Units of the RNN per direction (and of the attention "
                       "scorer and the convolution's filters).")
    conv_kernel: int = Field(5, ge=1, le=99, description="Frames the RNN-conv model's 1-D convolution spans.")
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout before the softmax layer.")
    learning_rate: float = Field(0.001, gt=0, le=1, description="Adam's learning rate.")
    batch_size: int = Field(32, ge=1, description="Videos per training step.")
    epochs: int = Field(100, ge=1, description="Most epochs per fit; early stopping on the inner validation loss "
                        "usually ends it sooner (the best epoch's weights are kept).")
    patience: int = Field(10, ge=1, description="Epochs without a lower validation loss before a fit stops.")
    validation_share: float = Field(0.2, gt=0, lt=1, description="Share of each training fold (whole subjects) "
                                    "held out for early stopping; never the test fold.")
    seed: int = Field(0, ge=0, description="Seed of the folds, the inner split, the weights and the shuffling: "
                      "the same data and seed give the same models on the same machine.")
    min_face_frames: int = Field(1, ge=1, description="A labelled video with fewer frames whose face and "
                                 "features are present is left out of training (and reported).")
    frames_per_video: int = Field(60, ge=1, description="landmark_ensemble: frames of each video it learns from, "
                                  "evenly spaced over the video (bounds memory; every frame is still predicted).")
    frame_smoothing: Literal["none", "window", "ema"] = Field(
        "ema", description="landmark_ensemble: how its per-frame probabilities are smoothed over adjacent frames "
        "before the video's label is taken (their mean's argmax).")
    smoothing_alpha: float = Field(0.3, gt=0, le=1, description="Weight of the newest frame, frame_smoothing ema.")
    smoothing_window: int = Field(5, ge=1, description="Frames in the centred window, frame_smoothing window (odd).")

    @field_validator("smoothing_window")
    @classmethod
    def _odd_window(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("must be odd (a centred window)")
        return value


class SpaceConfig(Section):
    """`affectflow space fit`: the supervised UMAP space of a landmark ensemble's learned features."""
    dimensions: Literal[2, 3] = Field(2, description="Dimensions of the space.")
    neighbours: int = Field(15, ge=2, description="UMAP's n_neighbors: the size of the neighbourhoods it keeps.")
    min_dist: float = Field(0.1, ge=0, le=1, description="UMAP's min_dist: how tightly points may pack.")
    label_weight: float = Field(0.5, ge=0, le=1, description="UMAP's target_weight: 0 = the features alone, "
                                "1 = the labels dominate the layout.")
    min_cluster_size: int = Field(20, ge=2, description="HDBSCAN's min_cluster_size: the smallest group of frames "
                                  "called a cluster.")
    max_frames: int = Field(20000, ge=100, description="Frames the space is fitted on at most (a class-balanced, "
                            "seeded sample); every frame is projected.")
    seed: int = Field(0, ge=0, description="UMAP's random_state: the same frames and seed give the same space.")


class ClassifierConfig(Section):
    """A trained video classifier applied at the end of `affectflow run`."""
    model: Optional[str] = Field(None, description="Model folder written by `affectflow train` (model_card.json "
                                 "and model.keras; any Beam filesystem path); null = none. The run then writes "
                                 "predictions/ for its videos.")
    window_seconds: Optional[float] = Field(None, gt=0, description="A semantic model predicts each window of this "
                                            "many seconds (a row per window); null = one row for the whole video. "
                                            "Classifiers always predict whole videos.")
    top_words: int = Field(5, ge=1, le=50, description="A semantic model's prediction names this many vocabulary "
                           "words nearest to its point.")


class JobConfig(Section):
    input: Optional[str] = Field(None, description="Glob, folder or manifest (.csv / .parquet); --input.")
    output: Optional[str] = Field(None, description="Output folder (any Beam filesystem path); --output.")
    archive_root: Optional[str] = Field(
        None, description="Folder that generated video ids are relative to (stem + hash of the path below it). "
        "null: the root the output's first run recorded, else the input folder. Set it to your archive's top "
        "folder on the first run; when the whole archive moves, point it at the new place and the ids stay.")
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    faces: FacesConfig = Field(default_factory=FacesConfig)
    emotion: EmotionConfig = Field(default_factory=EmotionConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    aggregate: AggregateConfig = Field(default_factory=AggregateConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    progress: bool = Field(True, description="Show progress while a run goes on.")
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    space: SpaceConfig = Field(default_factory=SpaceConfig)
