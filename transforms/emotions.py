"""ScoreEmotions: FaceChunk -> ScoredChunk through Beam's RunInference (a failed chunk is a dead letter)."""
from __future__ import annotations

from typing import Optional

import apache_beam as beam

from core.elements import ScoredChunk
from core.settings import EmotionConfig
from models.emotion import EmotionModelHandler
from transforms.dead_letters import RunInferenceWithDeadLetters


class ScoreEmotions(beam.PTransform):
    """PCollection[FaceChunk] -> Outputs(ScoredChunk, DeadLetter): the model's probabilities per face.

    One model per worker process (RunInference's shared handle); each chunk's crops go through
    the network in sub-batches of ``emotion.max_batch``. Chunks with no face pass with an empty
    probability array. ``embedding``: the same forward pass also gives each face's embedding
    (``ScoredChunk.embedding``, 128-d for the Mini-Xception; defined in models/emotion.py). A
    chunk the model fails on becomes a dead letter (stage ``emotion``) that fails its video.

    Example::

        scored = chunks | ScoreEmotions(EmotionConfig())
        probabilities, failures = scored.values, scored.dead_letters
    """

    def __init__(self, emotion: EmotionConfig, model_path: Optional[str] = None, embedding: bool = False):
        super().__init__()
        self.handler = EmotionModelHandler(emotion.model, model_path, emotion.max_batch, emotion.runtime, embedding)

    def expand(self, chunks):
        return chunks | "RunEmotionModel" >> RunInferenceWithDeadLetters(self.handler, ScoredChunk, "emotion")
