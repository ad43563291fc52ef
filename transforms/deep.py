"""ExtractDeepFeatures: ScoredChunk -> ScoredChunk with ResNet50 2048-d features, through RunInference."""
from __future__ import annotations

from typing import Optional

import apache_beam as beam

from core.elements import ScoredChunk
from models.deep import RESNET50_MAX_BATCH, ResNet50ModelHandler
from transforms.dead_letters import RunInferenceWithDeadLetters


class ExtractDeepFeatures(beam.PTransform):
    """PCollection[ScoredChunk] -> Outputs(ScoredChunk with ``resnet50`` float32[m, 2048], DeadLetter).

    The chunks must carry their 224x224 RGB crops (ExtractFaces with features.resnet50 on); the
    crops are dropped from the output. One model per worker process, ``max_batch`` faces per
    forward pass; a chunk with no face gets a [0, 2048] array; a chunk the model fails on
    becomes a dead letter (stage ``features``). The weights come from the registry entry
    ``resnet50`` (models.paths.resnet50 or AFFECTFLOW_MODEL_RESNET50); see models/deep.py for
    the files accepted.

    Example::

        deep = scored.values | ExtractDeepFeatures("/models/resnet50.weights.h5")
    """

    def __init__(self, model_path: Optional[str] = None, max_batch: int = RESNET50_MAX_BATCH,
                 model_name: str = "resnet50"):
        super().__init__()
        self.handler = ResNet50ModelHandler(model_name, model_path, max_batch)

    def expand(self, scored):
        return scored | "RunResNet50" >> RunInferenceWithDeadLetters(self.handler, ScoredChunk, "features")
