"""A supervised UMAP emotion space over a landmark ensemble's learned features, with HDBSCAN clusters.

    space = EmotionSpace.fit(learned, codes, SpaceConfig())
    coords, clusters, strength = space.project(new_learned)

The learned features (models.landmark_ensemble: base learners' probabilities and the meta
model's hidden layer) are standardised, then UMAP (umap-learn) lays them out in 2 or 3
dimensions, pulled towards the labels by ``label_weight`` (supervised UMAP). HDBSCAN (the
hdbscan package, with prediction data) finds the clusters of that layout; a projected point
gets the cluster ``approximate_predict`` assigns (-1: none) and its membership strength.
With a fixed seed UMAP runs single-threaded and the same frames give the same space; a saved
space reloads and projects identically (tested).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.settings import SpaceConfig
from models.store import sha256_of

SPACE_CARD = "space_card.json"
SPACE_FILE = "space.joblib"


@dataclass(frozen=True)
class SpaceCard:
    """What a saved space was fitted on (space_card.json)."""
    name: str
    dimensions: int
    labels: tuple[str, ...]
    settings: dict
    ensemble: dict = field(default_factory=dict)      # the ensemble whose learned features it lays out
    training: dict = field(default_factory=dict)      # frames per class, videos, subjects
    clusters: dict = field(default_factory=dict)      # cluster id -> frames per label
    versions: dict = field(default_factory=dict)
    space_sha256: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "SpaceCard":
        data = json.loads(text)
        data["labels"] = tuple(data["labels"])
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class EmotionSpace:
    """A fitted scaler + supervised UMAP and the HDBSCAN clusterer of its layout."""

    def __init__(self, layout, clusterer, embedding: np.ndarray):
        self.layout, self.clusterer, self.embedding = layout, clusterer, embedding

    @classmethod
    def fit(cls, learned: np.ndarray, codes: np.ndarray, settings: SpaceConfig) -> "EmotionSpace":
        """Lay out ``learned`` (float[n, w]) supervised by ``codes`` (int[n]); cluster the layout."""
        import hdbscan
        import umap
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        layout = make_pipeline(StandardScaler(), umap.UMAP(
            n_components=settings.dimensions, n_neighbors=min(settings.neighbours, len(learned) - 1),
            min_dist=settings.min_dist, target_weight=settings.label_weight, random_state=settings.seed))
        with warnings.catch_warnings():     # a seed makes UMAP single-threaded: wanted, so the notice is noise
            warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
            embedding = np.asarray(layout.fit_transform(np.asarray(learned, np.float32), np.asarray(codes)),
                                   np.float32)
        clusterer = hdbscan.HDBSCAN(min_cluster_size=settings.min_cluster_size, prediction_data=True).fit(embedding)
        return cls(layout, clusterer, embedding)

    @property
    def clusters(self) -> np.ndarray:
        """int[n]: the fitted frames' clusters (-1: noise)."""
        return np.asarray(self.clusterer.labels_)

    def project(self, learned: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(float32[n, dims] coordinates, int[n] cluster or -1, float32[n] membership strength)."""
        import hdbscan
        if not len(learned):
            dims = self.embedding.shape[1]
            return np.zeros((0, dims), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32)
        coords = np.asarray(self.layout.transform(np.asarray(learned, np.float32)), np.float32)
        clusters, strength = hdbscan.approximate_predict(self.clusterer, coords)
        return coords, np.asarray(clusters, np.int64), np.asarray(strength, np.float32)

    def save(self, folder: str | Path, card: SpaceCard) -> SpaceCard:
        import joblib
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        joblib.dump({"layout": self.layout, "clusterer": self.clusterer, "embedding": self.embedding},
                    folder / SPACE_FILE)
        card = SpaceCard(**{**asdict(card), "space_sha256": sha256_of(folder / SPACE_FILE)})
        (folder / SPACE_CARD).write_text(card.to_json())
        return card

    @classmethod
    def load(cls, folder: str | Path) -> tuple["EmotionSpace", SpaceCard]:
        import joblib
        folder = Path(folder)
        card = SpaceCard.from_json((folder / SPACE_CARD).read_text())
        if card.space_sha256 and sha256_of(folder / SPACE_FILE) != card.space_sha256:
            raise ValueError(f"{folder / SPACE_FILE} is not the space its card describes (SHA-256 differs)")
        parts = joblib.load(folder / SPACE_FILE)
        return cls(parts["layout"], parts["clusterer"], parts["embedding"]), card


def cluster_composition(clusters: np.ndarray, codes: np.ndarray, labels) -> dict[str, dict[str, int]]:
    """{cluster id: {label: frames}} of the fitted frames (noise as "-1")."""
    out: dict[str, dict[str, int]] = {}
    for cluster in np.unique(clusters):
        counts = np.bincount(np.asarray(codes)[clusters == cluster], minlength=len(labels))
        out[str(int(cluster))] = {label: int(n) for label, n in zip(labels, counts) if n}
    return out
