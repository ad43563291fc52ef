"""The semantic emotion space: the encoder, back-translation, the metrics on constructed cases, and
models that learn to place videos near their (bilingual) annotations."""
from __future__ import annotations

import numpy as np
import pytest

from core.elements import VideoSequence
from core.settings import TrainConfig
from models.emotion_words import default_words
from pipelines.folds import assign_folds
from pipelines.training.semantic import (cross_validate_semantic, mean_annotation_baseline, read_annotations,
                                         semantic_scores)
from pipelines.training.store import SequenceStore

SAD = ["She looks sad and downcast.", "Sie wirkt traurig und niedergeschlagen.", "A sorrowful, unhappy face.",
       "Er ist bedrückt und den Tränen nahe."]
HAPPY = ["She is laughing with joy.", "Sie lacht fröhlich.", "A happy, cheerful smile.", "Er strahlt vor Glück."]


@pytest.fixture(scope="module")
def encoder():
    from models.sentence_encoder import SentenceEncoder
    return SentenceEncoder()


@pytest.fixture(scope="module")
def vocabulary(encoder):
    from models.sentence_encoder import Vocabulary
    return Vocabulary.embed(default_words(), encoder)


def test_encoder_files_are_the_pinned_ones_and_vectors_are_unit_length(encoder):
    from models.registry import get_spec
    spec = get_spec("use_multilingual")
    assert dict(encoder.resolved.sha256) == {role: f.sha256 for role, f in spec.files.items()}
    vectors = encoder.encode(["Er ist wütend und frustriert.", "He is angry and frustrated.", "A calm afternoon."])
    assert vectors.shape == (3, 512) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > 0.85 > vectors[0] @ vectors[2]          # a paraphrase across languages


def test_back_translation_is_exact_on_vocabulary_words(vocabulary):
    index, cosine = vocabulary.back_translate(vocabulary.vectors, 2)
    np.testing.assert_array_equal(index[:, 0], np.arange(len(vocabulary.words)))
    np.testing.assert_allclose(cosine[:, 0], 1.0, atol=1e-5)
    assert (cosine[:, 1] < cosine[:, 0]).all()


def test_z_score_and_top_k_on_constructed_points(vocabulary):
    distinct = np.eye(3, 512, dtype=np.float32)                # three orthogonal annotations
    truth = distinct[[0, 1]]
    predicted = np.stack([distinct[0], distinct[0] + distinct[1] + distinct[2]])
    scores = semantic_scores(predicted, truth, distinct, vocabulary, ks=(1,))
    # item 0: cosines to A = [1, 0, 0]: mean 1/3, SD sqrt(2)/3 -> z = (1 - 1/3) / (sqrt(2)/3) = sqrt(2)
    np.testing.assert_allclose(scores["cosine"], [1.0, 1 / np.sqrt(3)], atol=1e-6)
    assert scores["z"][0] == pytest.approx(np.sqrt(2), abs=1e-5)
    assert np.isnan(scores["z"][1])                            # equally near every annotation: SD 0, undefined
    words = vocabulary.vectors[[3, 7]]
    hits = semantic_scores(words, words, words, vocabulary, ks=(1,))["top1"]
    assert hits.tolist() == [True, True]


def test_annotations_with_windows_are_read_per_row(tmp_path):
    (tmp_path / "a.csv").write_text("video_id,annotation,start_s,end_s,subject_id\n"
                                    "v1,Sie lacht.,0,2.5,s1\nv1,She frowns.,2.5,,s1\nv2,,,,s2\nv3,Calm.,,,s2\n")
    annotations = read_annotations(str(tmp_path / "a.csv"))
    assert annotations.video_ids.tolist() == ["v1", "v1", "v3"] and annotations.rows == 4
    assert annotations.starts == [0.0, 2.5, None] and annotations.ends == [2.5, None, None]
    sequence = VideoSequence("v1", np.arange(10, dtype=np.float32)[:, None], np.ones(10, bool), "",
                             np.arange(10) * 0.5)
    assert sequence.window(0.0, 2.5).features[:, 0].tolist() == [0, 1, 2, 3, 4]
    (tmp_path / "b.csv").write_text("video_id,annotation,start_s,end_s\nv1,x,3,1\n")
    with pytest.raises(ValueError, match="end_s <= start_s"):
        read_annotations(str(tmp_path / "b.csv"))


def test_models_place_videos_near_their_bilingual_annotations(tmp_path, encoder, vocabulary):
    """Sad videos have one feature low, happy ones high; each video's annotation is a random English or
    German paraphrase of its emotion. A model that reads the frames beats the mean annotation."""
    rng = np.random.default_rng(0)
    n_subjects, per_subject = 8, 6
    sequences, texts, groups = [], [], []
    for s in range(n_subjects):
        for i in range(per_subject):
            happy = i % 2 == 0
            frames = rng.normal(size=(20, 4)).astype(np.float32)
            frames[:, 0] += 1.5 if happy else -1.5
            sequences.append(VideoSequence(f"s{s}v{i}", frames, np.ones(20, bool)))
            texts.append(rng.choice(HAPPY if happy else SAD))
            groups.append(f"subject{s}")
    groups = np.asarray(groups, dtype=object)
    targets = encoder.encode(texts)
    distinct = encoder.encode(sorted(set(texts)))
    store = SequenceStore.write(tmp_path, iter(sequences), len(sequences), 20, 4)
    reference = vocabulary.back_translate(targets, 1)[0][:, 0]
    folds = assign_folds(reference, groups, 2, seed=0)
    train = TrainConfig(units=16, epochs=40, patience=40, learning_rate=0.01, dropout=0.0, batch_size=8)
    model = cross_validate_semantic("semantic-dense", store, np.arange(len(texts)), targets, groups, folds,
                                    "appearance", train, progress=lambda _: None)
    baseline = mean_annotation_baseline(targets, folds, "appearance")
    learned = model.metrics(targets, distinct, vocabulary)["pooled"]
    chance = baseline.metrics(targets, distinct, vocabulary)["pooled"]
    assert learned["z"] > 0.5 and learned["z"] > chance["z"] + 0.5, (learned, chance)
    assert learned["top3"] >= chance["top3"], (learned, chance)
    sad_words = vocabulary.back_translate(model.predicted[1::2], 3)[0]          # odd videos are sad
    assert np.mean([any(vocabulary.words[j] in ("sadness", "Traurigkeit", "grief", "Trauer", "despair",
                                                "Verzweiflung", "loneliness", "Einsamkeit", "helplessness",
                                                "Hilflosigkeit") for j in row) for row in sad_words]) > 0.5


def test_leave_one_subject_out_and_the_landmarks_feature_set():
    from core.errors import ConfigError
    from pipelines.config import load_config
    from pipelines.folds import make_folds
    from schemas.features import feature_set_columns
    groups = np.asarray(["b", "a", "b", "c", "a"], dtype=object)
    assert make_folds(np.zeros(5), groups, "loso").tolist() == [0, 1, 0, 2, 1]
    with pytest.raises(ValueError, match="at least two"):
        make_folds(np.zeros(2), np.asarray(["a", "a"], dtype=object), "loso")
    assert feature_set_columns("landmarks", ("landmarks", "geometry")) == ["landmarks_norm"]
    with pytest.raises(ValueError, match="needs the landmarks group"):
        feature_set_columns("landmarks", ("geometry",))
    with pytest.raises(ConfigError, match="landmarks: true"):
        load_config(None, None, ["features.feature_set=landmarks"])
