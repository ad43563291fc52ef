"""ScoreEmotions: FaceChunk -> ScoredChunk (or DeadLetter) through Beam's RunInference."""
from __future__ import annotations

from typing import Optional

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from models.emotion import EmotionModelHandler


class ScoreEmotions(beam.PTransform):
    """PCollection[FaceChunk] -> PCollection[ScoredChunk | DeadLetter]: 7 probabilities per face.

    A chunk the model fails on comes out as a DeadLetter (stage ``emotion``), not an exception
    (models.emotion.EmotionModelHandler.run_inference); `split_errors` separates them. Handled
    in the handler, not with RunInference's tagged failure output: the DaskRunner merges tagged
    outputs.

    One model per worker process (RunInference's shared handle); each chunk's crops go
    through the network in sub-batches of ``max_batch``. Chunks with no face pass with
    an empty probability array. ``embedding``: the same forward pass also gives each face's
    embedding (``ScoredChunk.embedding``, 128-d for the Mini-Xception; defined in models/emotion.py).

    Example::

        scored = chunks | ScoreEmotions("fer_mini_xception")
    """

    def __init__(self, model_name: str = "fer_mini_xception", model_path: Optional[str] = None,
                 max_batch: int = 256, runtime: str = "tflite", embedding: bool = False):
        super().__init__()
        self.handler = EmotionModelHandler(model_name, model_path, max_batch, runtime, embedding)

    def expand(self, chunks):
        return chunks | "RunEmotionModel" >> RunInference(self.handler)
