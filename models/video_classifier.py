"""A trained video classifier as a folder (model.keras + model_card.json), and its RunInference handler.

The card says everything needed to apply the model to another run and to trust it: the frame
columns and the expanded feature names in input order, the scaler's statistics (fitted on the
training videos only), the label order, the sequence length, the training manifest's hash, the
runs the data came from, the package versions and the cross-validated metrics. It also holds
the SHA-256 of model.keras, checked on load, so a card never describes other weights.

    card, classifier = load_classifier(resolve("video_classifier", "models/attention-au"))
    probs = classifier.predict([sequence])            # float32[1, classes]
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from core.elements import VideoPrediction, VideoSequence
from models.registry import ResolvedModel, resolve
from models.sentence_encoder import unit_rows
from models.sequence_data import SEMANTIC_KINDS, SEQUENCE_KINDS, Standardizer, fixed_length
from models.store import sha256_of
from schemas.predictions import SEMANTIC_TASK, TASKS, probability_column

MODEL_FILE = "model.keras"
CARD_FILE = "model_card.json"
CARD_VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_model_name(name: str) -> str:
    """``name`` when it can be a folder and partition value; ValueError otherwise."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"model name {name!r} must match {_NAME.pattern}")
    return name


@dataclass(frozen=True)
class ModelCard:
    """What a video classifier is, what it expects and how well it did (model_card.json)."""
    name: str                                  # e.g. rnn-attention.appearance.multiclass
    kind: str                                  # models.sequence_data.SEQUENCE_KINDS
    task: str                                  # multiclass | binary
    feature_set: str                           # appearance | deep | both
    columns: tuple[str, ...]                   # frame-table columns, in input order
    column_sizes: tuple[int, ...]              # values each column gives (1, or a list column's length)
    labels: tuple[str, ...]                    # class order of the probabilities
    sequence_length: int
    scaler: dict                               # models.sequence_data.Standardizer.to_dict()
    model_sha256: str = ""
    training: dict = field(default_factory=dict)    # manifest, its sha256, runs, videos, classes, settings
    metrics: dict = field(default_factory=dict)     # cross-validated figures (pipelines.training)
    target: dict = field(default_factory=dict)      # semantic models: the encoder, its files' SHA-256, the vocabulary's
    versions: dict = field(default_factory=dict)
    card_version: int = CARD_VERSION

    def __post_init__(self):
        check_model_name(self.name)
        kinds = SEMANTIC_KINDS if self.semantic else SEQUENCE_KINDS
        if self.kind not in kinds or self.task not in (*TASKS, SEMANTIC_TASK):
            raise ValueError(f"model card: kind {self.kind!r} / task {self.task!r} unknown; kinds {kinds}, "
                             f"tasks {(*TASKS, SEMANTIC_TASK)}")
        if len(self.columns) != len(self.column_sizes):
            raise ValueError("model card: columns and column_sizes differ in length")
        columns = [probability_column(l) for l in self.labels]
        if not self.semantic and len(set(columns)) != len(columns):
            raise ValueError(f"model card: labels {list(self.labels)} give clashing probability columns {columns}")

    @property
    def semantic(self) -> bool:
        """A semantic model: its output is a point of the sentence encoder's space, its labels the
        vocabulary that names such points."""
        return self.task == SEMANTIC_TASK

    @property
    def n_features(self) -> int:
        return int(sum(self.column_sizes))

    @property
    def feature_names(self) -> list[str]:
        """One name per input value: a column, or ``column[i]`` for a list column's values."""
        return [c if n == 1 else f"{c}[{i}]" for c, n in zip(self.columns, self.column_sizes) for i in range(n)]

    @property
    def probability_columns(self) -> list[str]:
        return [probability_column(l) for l in self.labels]

    def to_json(self) -> str:
        data = asdict(self)
        data.update(columns=list(self.columns), column_sizes=list(self.column_sizes), labels=list(self.labels),
                    feature_names=self.feature_names, probability_columns=self.probability_columns)
        return json.dumps(data, indent=1, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "ModelCard":
        data = json.loads(text)
        if data.get("card_version") != CARD_VERSION:
            raise ValueError(f"model card version {data.get('card_version')} is not {CARD_VERSION}: retrain the "
                             "model with this affectflow")
        known = set(cls.__dataclass_fields__)
        data = {k: v for k, v in data.items() if k in known}
        return cls(**{**data, "columns": tuple(data["columns"]), "column_sizes": tuple(data["column_sizes"]),
                      "labels": tuple(data["labels"])})

    def check_columns(self, columns: Sequence[str], where: str) -> None:
        """ValueError unless ``columns`` (what a run's feature set gives) are the card's, in order."""
        if tuple(columns) != self.columns:
            raise ValueError(f"model {self.name} was trained on the {self.feature_set} features "
                             f"{list(self.columns)}; {where} gives {list(columns)}. Apply it to a run with the same "
                             "feature groups, or train a model on this run's features")


class VideoClassifier:
    """A loaded classifier: sequences in the card's feature order -> class probabilities (a semantic
    model: points of the space, named by its ``vocabulary``)."""

    def __init__(self, card: ModelCard, model, vocabulary=None):
        self.card = card
        self.model = model
        self.scaler = Standardizer.from_dict(card.scaler)
        self.vocabulary = vocabulary

    def predict(self, sequences: Sequence[VideoSequence], batch_size: int = 64) -> np.ndarray:
        """float32[len(sequences), classes], rows summing to 1 (a semantic model: [n, 512] unit
        vectors); raises ValueError on a sequence whose width is not the card's."""
        width = self.model.output_shape[-1]
        out = np.zeros((len(sequences), width), np.float32)
        for start in range(0, len(sequences), batch_size):
            part = sequences[start:start + batch_size]
            shaped = [fixed_length(s.features, s.valid, self.card.sequence_length) for s in part]
            for s in part:
                if s.features.shape[1:] != (self.card.n_features,):
                    raise ValueError(f"video {s.video_id}: {s.features.shape[1:]} features per frame, the model "
                                     f"{self.card.name} takes {self.card.n_features}")
            x, mask = np.stack([a for a, _ in shaped]), np.stack([m for _, m in shaped])
            raw = np.asarray(self.model.predict_on_batch({"x": self.scaler.transform(x, mask), "mask": mask}),
                             np.float32)
            out[start:start + len(part)] = unit_rows(raw) if self.card.semantic else raw / raw.sum(axis=1,
                                                                                                 keepdims=True)
        return out


def save_classifier(folder: str | Path, card: ModelCard, model) -> ModelCard:
    """Write model.keras and model_card.json (with model.keras's SHA-256) into ``folder``; return the card."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / MODEL_FILE)
    card = ModelCard(**{**asdict(card), "model_sha256": sha256_of(folder / MODEL_FILE)})
    (folder / CARD_FILE).write_text(card.to_json())
    return card


def read_card(resolved: ResolvedModel) -> ModelCard:
    """The card of a resolved video_classifier, checked against its model file's checksum."""
    card = ModelCard.from_json(Path(resolved.paths["card"]).read_text())
    if card.model_sha256 and card.model_sha256 != resolved.sha256["model"]:
        raise ValueError(f"{resolved.paths['model']} is not the model its card describes (SHA-256 "
                         f"{resolved.sha256['model'][:12]}..., the card says {card.model_sha256[:12]}...)")
    return card


def load_classifier(resolved: ResolvedModel) -> VideoClassifier:
    """Load a resolved video_classifier (imports Keras and the registered layers)."""
    import models.semantic  # noqa: F401 - registers the semantic models' layers
    from models.sequence import load_sequence_model
    card = read_card(resolved)
    return VideoClassifier(card, load_sequence_model(resolved.paths["model"]),
                           semantic_vocabulary(card) if card.semantic else None)


def semantic_vocabulary(card: ModelCard):
    """The card's vocabulary embedded by the registry's encoder; ValueError when the vectors are not
    the ones the model was trained with (another encoder)."""
    from models.sentence_encoder import SentenceEncoder, Vocabulary
    encoder = SentenceEncoder(resolve(card.target.get("encoder", "use_multilingual")))
    vocabulary = Vocabulary.embed(card.labels, encoder)
    expected = card.target.get("vocabulary_sha256")
    if expected and vocabulary.digest() != expected:
        raise ValueError(f"model {card.name}: the sentence encoder gives other vocabulary vectors than when the "
                         "model was trained (another encoder version?)")
    return vocabulary


def classify(classifier: VideoClassifier, sequences: Sequence[VideoSequence], top_words: int = 5
             ) -> list[VideoPrediction]:
    """One prediction per sequence; one without a valid frame is ``no_face`` (no probabilities). A
    semantic model's prediction also names the ``top_words`` vocabulary words nearest to its point."""
    scored = [i for i, s in enumerate(sequences) if s.frames_valid]
    outputs = dict(zip(scored, classifier.predict([sequences[i] for i in scored]))) if scored else {}
    words = {}
    if classifier.vocabulary is not None and outputs:
        index, cosine = classifier.vocabulary.back_translate(np.stack(list(outputs.values())), top_words)
        words = {i: tuple((classifier.vocabulary.words[j], float(c)) for j, c in zip(row, cos))
                 for i, row, cos in zip(outputs, index, cosine)}
    return [VideoPrediction(s.video_id, "ok" if i in outputs else "no_face",
                            tuple(float(p) for p in outputs[i]) if i in outputs else None,
                            len(s.valid), s.frames_valid, s.source, s.span, words.get(i))
            for i, s in enumerate(sequences)]


class VideoClassifierHandler(ModelHandler[VideoSequence, VideoPrediction, VideoClassifier]):
    """RunInference handler: VideoSequence -> VideoPrediction with a trained classifier folder.

    The folder resolves through the model registry (``video_classifier``, any Beam filesystem
    path, copied to the local cache when remote); its card is read and checked when the handler
    is made, so a wrong folder fails before any worker starts.
    """

    def __init__(self, model_dir: str, top_words: int = 5):
        self._model_dir = model_dir
        self._top_words = top_words
        self.resolved = resolve("video_classifier", model_dir)
        self.card = read_card(self.resolved)

    def load_model(self) -> VideoClassifier:
        return load_classifier(resolve("video_classifier", self._model_dir))

    def run_inference(self, batch: Sequence[VideoSequence], model: VideoClassifier,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[VideoPrediction]:
        return classify(model, list(batch), self._top_words)

    def should_skip_batching(self) -> bool:
        return True         # one video per call (transforms.dead_letters: no batching across elements)

    def get_num_bytes(self, batch: Sequence[VideoSequence]) -> int:
        return int(sum(s.features.nbytes for s in batch))

    def get_metrics_namespace(self) -> str:
        return "affectflow_video_classifier"
