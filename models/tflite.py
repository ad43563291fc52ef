"""TF Lite interpreters, made in one place.

The interpreter is LiteRT's (the ``ai-edge-litert`` package): the same TF Lite runtime that
``tf.lite.Interpreter`` wraps (deprecated in TensorFlow 2.21), without importing TensorFlow,
which costs about 2.5 s and 500 MB per process. Its outputs on the models here are the same
(tests pin them against stored and MediaPipe's values).
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def interpreter(model_path: str, num_threads: int = 1):
    """A LiteRT interpreter for ``model_path`` running on ``num_threads`` threads (not yet allocated)."""
    from ai_edge_litert.interpreter import Interpreter
    return Interpreter(model_path=model_path, num_threads=num_threads)
