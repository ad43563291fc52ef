"""TF Lite interpreters, made in one place.

TensorFlow 2.21 deprecates ``tf.lite.Interpreter`` in favour of the ``ai-edge-litert`` package
and warns on every construction. TensorFlow is pinned and the interpreter works (its results
are tested); the warning tells a user of affectflow nothing they can act on, so it is silenced
here, for this one message, while an interpreter is made.
"""
from __future__ import annotations

import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def interpreter(model_path: str, num_threads: int = 1):
    """A ``tf.lite.Interpreter`` for ``model_path`` running on ``num_threads`` threads (not yet allocated)."""
    import tensorflow as tf
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated", category=UserWarning)
        return tf.lite.Interpreter(model_path=model_path, num_threads=num_threads)
