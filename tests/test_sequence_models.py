"""The video-level sequence models: sequences, masking, the scaler, reload, and proof that they see time."""
from __future__ import annotations

import json

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that

from core.elements import VideoSequence
from core.settings import TrainConfig
from models.sequence_data import SEQUENCE_KINDS, Standardizer, fixed_length, mean_std_features, resample_indices
from pipelines.folds import assign_folds, inner_validation
from pipelines.training.crossval import cross_validate_baseline, cross_validate_sequence, video_statistics
from pipelines.training.data import make_task
from pipelines.training.store import SequenceStore
from tests.beam_options import local_pipeline
from tests.synthetic import order_dataset

RNG = np.random.default_rng(0)
SMALL = TrainConfig(units=8, epochs=2, batch_size=8, dropout=0.0)


@pytest.mark.parametrize("n,length", [(1000, 300), (301, 300), (7, 3), (5, 2)])
def test_long_videos_are_resampled_over_their_whole_length(n, length):
    idx = resample_indices(n, length)
    assert len(idx) == length and idx[0] == 0 and idx[-1] == n - 1        # the end is never cut off
    gaps = np.diff(idx)
    assert gaps.min() >= 1 and gaps.max() - gaps.min() <= 1               # even spacing, no repeats
    x, mask = fixed_length(np.arange(n, dtype=np.float32)[:, None], np.ones(n, bool), length)
    assert x[0, 0] == 0 and x[-1, 0] == n - 1 and mask.all()


def test_padding_and_frames_without_a_face_or_a_feature_are_masked_and_zero():
    features = RNG.normal(size=(10, 3)).astype(np.float32)
    valid = np.ones(10, bool)
    valid[2] = False
    features[5, 1] = np.nan                         # a missing feature masks its frame too
    x, mask = fixed_length(features, valid, 14)
    assert mask.tolist() == [True, True, False, True, True, False] + [True] * 4 + [False] * 4
    assert np.isfinite(x).all() and (x[~mask] == 0).all()
    np.testing.assert_array_equal(x[mask], features[[0, 1, 3, 4, 6, 7, 8, 9]])


def test_scaler_ignores_masked_frames_and_streams_exactly():
    x = RNG.normal(3.0, 2.0, size=(20, 15, 4)).astype(np.float32)
    mask = RNG.random((20, 15)) > 0.3
    x[~mask] = 1e6                                  # masked values must not count
    whole = Standardizer().partial_fit(x, mask)
    np.testing.assert_allclose(whole.mean, x[mask].astype(np.float64).mean(0), rtol=1e-10)
    np.testing.assert_allclose(whole.std, x[mask].astype(np.float64).std(0), rtol=1e-10)
    streamed = Standardizer()
    for start in range(0, 20, 3):
        streamed.partial_fit(x[start:start + 3], mask[start:start + 3])
    np.testing.assert_allclose(streamed.mean, whole.mean, rtol=1e-10)
    np.testing.assert_allclose(streamed.std, whole.std, rtol=1e-10)
    z = whole.transform(x, mask)
    assert (z[~mask] == 0).all()
    np.testing.assert_allclose(z[mask].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z[mask].std(0), 1, atol=1e-5)
    again = Standardizer.from_dict(json.loads(json.dumps(whole.to_dict())))
    np.testing.assert_array_equal(again.transform(x, mask), z)


def test_mean_std_statistics_are_per_video_over_valid_frames():
    x = np.asarray([[[1.0], [3.0], [100.0]], [[2.0], [2.0], [2.0]]], np.float32)
    mask = np.asarray([[True, True, False], [True, True, True]])
    np.testing.assert_allclose(mean_std_features(x, mask), [[2.0, 1.0], [2.0, 0.0]])


def test_store_reads_back_what_it_wrote(tmp_path):
    sequences, _, _ = order_dataset(n_groups=4, n_features=3)
    store = SequenceStore.write(tmp_path, iter(sequences), len(sequences), 24, 3)
    x, mask = store.read(np.asarray([5, 0, 7]))
    for row, i in enumerate([5, 0, 7]):
        ex, em = fixed_length(sequences[i].features, sequences[i].valid, 24)
        np.testing.assert_array_equal(x[row], ex)
        np.testing.assert_array_equal(mask[row], em)
    assert store.valid_frames.tolist() == [s.frames_valid for s in sequences]


@pytest.mark.parametrize("kind", SEQUENCE_KINDS)
def test_padding_and_masked_garbage_never_change_a_prediction(kind):
    from models.sequence import build_model
    model = build_model(kind, 4, 3, None, SMALL)
    features = RNG.normal(size=(30, 4)).astype(np.float32)
    valid = np.ones(30, bool)
    valid[[0, 9, 10, 17]] = False                    # faceless frames at the start and in the middle
    probs = []
    for length, garbage in ((40, 0.0), (90, 0.0), (40, 1e3), (90, np.nan)):
        x, mask = fixed_length(features, valid, length)
        x[~mask] = garbage
        probs.append(np.asarray(model.predict_on_batch({"x": x[None], "mask": mask[None]})))
    for other in probs[1:]:
        np.testing.assert_allclose(other, probs[0], atol=1e-6)
    x, mask = fixed_length(features, valid, 40)     # the check can fail: unmasked garbage changes the result
    unmasked = np.where(mask[:, None], x, 1e3)
    changed = np.asarray(model.predict_on_batch({"x": unmasked[None], "mask": np.ones((1, 40), bool)}))
    assert np.abs(changed - probs[0]).max() > 1e-3


def test_saved_model_reloads_with_the_same_predictions(tmp_path):
    from models.registry import resolve
    from models.sequence import build_model
    from models.video_classifier import ModelCard, load_classifier, save_classifier
    model = build_model("rnn-conv", 3, 2, 16, SMALL)
    sequences, _, _ = order_dataset(n_groups=3, n_features=3, lengths=(10, 20))
    scaler = Standardizer()
    for s in sequences:
        scaler.partial_fit(s.features, s.valid & np.isfinite(s.features).all(axis=1))
    card = ModelCard(name="rnn-conv.appearance.binary", kind="rnn-conv", task="binary", feature_set="appearance",
                     columns=("a", "b", "c"), column_sizes=(1, 1, 1), labels=("ascending", "descending"),
                     sequence_length=16, scaler=scaler.to_dict())
    saved = save_classifier(tmp_path / "m", card, model)
    assert len(saved.model_sha256) == 64
    loaded = load_classifier(resolve("video_classifier", str(tmp_path / "m")))
    x = np.stack([fixed_length(s.features, s.valid, 16)[0] for s in sequences])
    mask = np.stack([fixed_length(s.features, s.valid, 16)[1] for s in sequences])
    expected = np.asarray(model.predict_on_batch({"x": scaler.transform(x, mask), "mask": mask}))
    np.testing.assert_allclose(loaded.predict(sequences, batch_size=len(sequences)), expected, atol=1e-6)
    assert loaded.card.feature_names == ["a", "b", "c"] and loaded.card.probability_columns == [
        "prob_ascending", "prob_descending"]
    (tmp_path / "m" / "model.keras").write_bytes((tmp_path / "m" / "model.keras").read_bytes() + b"x")
    with pytest.raises(ValueError, match="not the model its card describes"):
        load_classifier(resolve("video_classifier", str(tmp_path / "m")))


def test_classify_videos_stage_gives_one_prediction_per_video(tmp_path):
    from models.sequence import build_model
    from models.video_classifier import ModelCard, save_classifier
    from transforms.classify import ClassifyVideos
    card = ModelCard(name="frame-average.appearance.multiclass", kind="frame-average", task="multiclass",
                     feature_set="appearance", columns=("a", "b"), column_sizes=(1, 1), labels=("x", "y", "z"),
                     sequence_length=8, scaler={"mean": [0.0, 0.0], "std": [1.0, 1.0], "count": 1})
    save_classifier(tmp_path / "m", card, build_model("frame-average", 2, 3, 8, SMALL))
    videos = [VideoSequence("v1", RNG.normal(size=(5, 2)).astype(np.float32), np.ones(5, bool), "s1"),
              VideoSequence("v2", np.full((3, 2), np.nan, np.float32), np.zeros(3, bool), "s2")]

    def check(predictions):
        by_id = {p.video_id: p for p in predictions}
        assert sorted(by_id) == ["v1", "v2"]
        assert by_id["v1"].status == "ok" and abs(sum(by_id["v1"].probabilities) - 1) < 1e-6
        assert by_id["v1"].frames_valid == 5 and by_id["v1"].source == "s1"
        assert by_id["v2"].status == "no_face" and by_id["v2"].probabilities is None

    with local_pipeline() as p:
        out = p | beam.Create(videos) | ClassifyVideos(str(tmp_path / "m"))
        assert_that(out.values, check)
        assert_that(out.dead_letters, lambda letters: (len(list(letters)) == 0) or pytest.fail(str(letters)),
                    label="NoFailures")


def test_inner_validation_holds_out_whole_subjects():
    groups = np.asarray([f"s{i // 3}" for i in range(30)], dtype=object)
    codes = np.asarray([i % 2 for i in range(30)])
    held = inner_validation(codes, groups, 0.2, seed=1)
    assert 0 < held.sum() < 30
    assert not set(groups[held]) & set(groups[~held])


def test_sequence_models_see_the_order_of_frames(tmp_path):
    """Classes differ only in frame order (same frames per subject): the mean/SD baseline and the
    order-blind frame-average control stay at chance; RNN-attention and RNN-conv reach it. RNN-average
    averages recurrent states, each summarising the frames before and after it, so it sees order too."""
    sequences, labels, groups = order_dataset(n_groups=40, seed=3)
    store = SequenceStore.write(tmp_path, iter(sequences), len(sequences), 36, 6)
    task = make_task("multiclass", labels)
    positions = np.arange(len(labels))
    folds = assign_folds(task.codes, groups, 2, seed=0)
    assert all(not set(groups[folds == f]) & set(groups[folds != f]) for f in (0, 1))
    baseline = cross_validate_baseline(video_statistics(store, positions), task, task.codes, folds, labels,
                                       "appearance", 0)
    train = TrainConfig(units=16, epochs=25, patience=25, learning_rate=0.003, dropout=0.0, batch_size=16)
    uar = {"baseline": baseline.metrics()["pooled"]["uar"]}
    for kind in SEQUENCE_KINDS:
        result = cross_validate_sequence(kind, store, positions, task, task.codes, groups, folds, labels,
                                         "appearance", train, progress=lambda _: None)
        uar[kind] = result.metrics()["pooled"]["uar"]
    assert uar["baseline"] <= 0.6 and uar["frame-average"] <= 0.6, uar
    for kind in ("rnn-attention", "rnn-conv", "rnn-average"):
        assert uar[kind] >= 0.9 and uar[kind] - uar["baseline"] >= 0.3, uar


def test_scaler_and_early_stopping_never_see_the_test_fold(tmp_path, monkeypatch):
    import models.sequence as sequence
    sequences, labels, groups = order_dataset(n_groups=6, seed=5)
    store = SequenceStore.write(tmp_path, iter(sequences), len(sequences), 36, 6)
    task = make_task("multiclass", labels)
    folds = assign_folds(task.codes, groups, 3, seed=0)
    seen = []
    real_fit = sequence.fit_sequence_model

    def spy(kind, read, train_pos, train_codes, val_pos, val_codes, *args, **kwargs):
        seen.append((set(train_pos), set(val_pos)))
        fit = real_fit(kind, read, train_pos, train_codes, val_pos, val_codes, *args, **kwargs)
        assert fit.scaler.count == store.valid_frames[train_pos].sum()       # scaled on those videos alone
        return fit

    monkeypatch.setattr(sequence, "fit_sequence_model", spy)
    cross_validate_sequence("rnn-average", store, np.arange(len(labels)), task, task.codes, groups, folds, labels,
                            "appearance", SMALL, progress=lambda _: None)
    assert len(seen) == 3
    for fold, (fit_on, stop_on) in enumerate(seen):
        test = set(np.flatnonzero(folds == fold))
        assert not (fit_on | stop_on) & test                                  # the test fold is never read
        assert not set(groups[list(fit_on)]) & set(groups[list(stop_on)])    # nor a subject on both sides


def test_sixteen_classes_train_and_score(tmp_path):
    """Label sets come from the data: 16 emotions give 16 classes, 16 probabilities and 16 recalls."""
    emotions = [f"emotion{i:02d}" for i in range(16)]
    sequences, _, _ = order_dataset(n_groups=32, n_classes=2, seed=11)
    labels = np.asarray([emotions[i % 16] for i in range(len(sequences))], dtype=object)
    groups = np.asarray([f"s{i % 8}" for i in range(len(sequences))], dtype=object)
    store = SequenceStore.write(tmp_path, iter(sequences), len(sequences), 36, 6)
    task = make_task("multiclass", labels)
    assert task.classes == tuple(emotions) and task.class_counts() == {e: 4 for e in emotions}
    folds = assign_folds(task.codes, groups, 2, seed=0)
    result = cross_validate_sequence("rnn-attention", store, np.arange(len(labels)), task, task.codes, groups, folds,
                                     labels, "appearance", SMALL, progress=lambda _: None)
    metrics = result.metrics()
    assert result.probabilities.shape == (64, 16) and np.allclose(result.probabilities.sum(axis=1), 1, atol=1e-5)
    assert len(metrics["pooled"]["per_class_recall"]) == 16 and np.asarray(metrics["pooled"]["confusion"]).sum() == 64


def test_the_same_data_and_seed_give_the_same_model(tmp_path):
    from models.sequence import fit_sequence_model
    sequences, labels, groups = order_dataset(n_groups=6, seed=2)
    store = SequenceStore.write(tmp_path, iter(sequences), len(sequences), 36, 6)
    codes = make_task("multiclass", labels).codes
    held = inner_validation(codes, groups, 0.3, seed=0)
    positions = np.arange(len(codes))
    weights = [fit_sequence_model("rnn-conv", store.read, positions[~held], codes[~held], positions[held], codes[held],
                                  2, 6, 36, SMALL, seed=4).model.get_weights() for _ in range(2)]
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, atol=1e-6)
