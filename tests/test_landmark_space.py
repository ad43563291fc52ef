"""The landmark ensemble and the emotion space: mesh features, class balancing, base learners and
meta model, supervised UMAP + HDBSCAN, and run -> train -> space fit -> space project on real frames.

Constructed data where a property is the point (separable blobs must come back as clusters;
a fixed seed must give the same space; a saved space must project as the live one); real
frames of the reference clip's sad and laughing parts for the commands end to end.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.settings import SpaceConfig, TrainConfig
from models.emotion_space import SPACE_FILE, EmotionSpace, SpaceCard, cluster_composition
from models.landmark_ensemble import (BASE_FILE, BASE_LEARNERS, EnsembleCard, LandmarkEnsemble, balance_classes,
                                      evenly_spaced, video_probabilities)
from models.landmark_features import LANDMARK_SUBSET, feature_names, mesh_features
from pipelines.cli import main
from tests.test_training import SPANS, _sets, cut_clips, write_manifest

RNG = np.random.default_rng(7)


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    return rz @ ry @ rx


def test_mesh_features_ignore_head_pose_size_and_place_but_not_expression():
    mesh = RNG.normal(size=(478, 3))
    base = mesh_features(mesh)
    assert base.shape == (len(feature_names()),) == (351 + 10,)
    moved = mesh @ _rotation(0.5, -0.3, 0.4).T * 2.7 + np.array([120.0, -40.0, 3.0])
    np.testing.assert_allclose(mesh_features(moved), base, rtol=1e-4, atol=1e-5)
    opened = mesh.copy()
    opened[LANDMARK_SUBSET["lip_lower"]] += [0.0, 0.8, 0.0]                 # the mouth opens
    changed = np.abs(mesh_features(opened) - base) > 1e-4
    names = np.asarray(feature_names())
    assert changed.any() and all("lip_lower" in n or n.startswith("angle_") for n in names[changed])
    assert not changed[names == "dist_eye_outer_r_eye_outer_l"].any()
    missing = mesh.copy()
    missing[LANDMARK_SUBSET["chin"]] = np.nan
    assert np.isnan(mesh_features(missing)).any() and not np.isnan(mesh_features(mesh)).any()


def test_balancing_gives_every_class_as_many_rows_as_the_smallest():
    codes = np.repeat([0, 1, 2], [50, 20, 35])
    picked = balance_classes(codes, seed=3)
    assert np.bincount(codes[picked]).tolist() == [20, 20, 20]
    assert (np.diff(picked) > 0).all()                                      # sorted, no row twice
    np.testing.assert_array_equal(picked, balance_classes(codes, seed=3))
    assert not np.array_equal(picked, balance_classes(codes, seed=4))
    assert np.flatnonzero(codes[picked] == 1).size == 20 and set(picked[codes[picked] == 1]) == set(range(50, 70))


def test_evenly_spaced_keeps_the_ends_and_every_frame_when_few():
    assert evenly_spaced(5, 10).tolist() == [0, 1, 2, 3, 4]
    picked = evenly_spaced(100, 5)
    assert picked.tolist() == [0, 25, 50, 74, 99]


def _frames(n_subjects: int, per_class: int, n_classes: int = 3, width: int = 12, seed: int = 0):
    """Frames whose class sets their mean; each subject shifts all its frames a little."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(n_classes, width))
    frames, codes, groups = [], [], []
    for s in range(n_subjects):
        shift = rng.normal(scale=0.3, size=width)
        for c in range(n_classes):
            frames.append(centres[c] + shift + rng.normal(size=(per_class, width)))
            codes += [c] * per_class
            groups += [f"s{s}"] * per_class
    return np.vstack(frames).astype(np.float32), np.asarray(codes), np.asarray(groups, dtype=object)


@pytest.fixture(scope="module")
def ensemble():
    frames, codes, groups = _frames(6, 25)
    keep = groups != "s5"                                                   # subject s5 is held out
    fitted = LandmarkEnsemble.fit(frames[keep], codes[keep], groups[keep], 3, TrainConfig(units=16), seed=0)
    return fitted, frames[~keep], codes[~keep]


def test_ensemble_classifies_held_out_frames_and_gives_learned_features(ensemble):
    fitted, frames, codes = ensemble
    probs, learned = fitted.predict(frames)
    assert probs.shape == (75, 3) and learned.shape == (75, fitted.learned_width) == (75, 3 * 3 + 8)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs.argmax(axis=1) == codes).mean() >= 0.9
    base = fitted.base_probabilities(frames)
    np.testing.assert_allclose(learned[:, :9], base, atol=1e-6)            # the base learners' part
    for i, name in enumerate(BASE_LEARNERS):
        assert (base[:, 3 * i:3 * i + 3].argmax(axis=1) == codes).mean() >= 0.8, name
    video = video_probabilities(probs[codes == 1], {"method": "ema", "alpha": 0.3})
    assert video.argmax() == 1 and abs(float(video.sum()) - 1) < 1e-5
    empty_probs, empty_learned = fitted.predict(frames[:0])
    assert empty_probs.shape == (0, 3) and empty_learned.shape == (0, fitted.learned_width)


def test_saved_ensemble_reloads_identically_and_refuses_a_changed_file(ensemble, tmp_path):
    fitted, frames, _ = ensemble
    card = EnsembleCard("e", ("landmarks_norm",), tuple(feature_names()), ("a", "b", "c"), "multiclass",
                        {"method": "none"})
    saved = fitted.save(tmp_path / "e", card)
    assert set(saved.files_sha256) == {BASE_FILE, "meta.keras"}
    again, loaded_card = LandmarkEnsemble.load(tmp_path / "e")
    assert loaded_card == saved
    for live, reloaded in zip(fitted.predict(frames), again.predict(frames)):
        np.testing.assert_allclose(reloaded, live, atol=1e-6)
    (tmp_path / "e" / BASE_FILE).write_bytes(b"not the learners")
    with pytest.raises(ValueError, match="SHA-256 differs"):
        LandmarkEnsemble.load(tmp_path / "e")


def _blobs(per_class: int = 70, seed: int = 1):
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 10) * 12.0
    points = np.vstack([c + rng.normal(size=(per_class, 10)) for c in centres]).astype(np.float32)
    return points, np.repeat(np.arange(3), per_class)


SETTINGS = SpaceConfig(neighbours=15, min_cluster_size=15, seed=0)


@pytest.fixture(scope="module")
def space():
    points, codes = _blobs()
    return EmotionSpace.fit(points, codes, SETTINGS), points, codes


def test_space_recovers_the_clusters_of_separable_data(space):
    fitted, points, codes = space
    clusters = fitted.clusters
    assert fitted.embedding.shape == (210, 2)
    assert (clusters == -1).mean() <= 0.1
    main_cluster = {}
    for c in range(3):
        found, counts = np.unique(clusters[(codes == c) & (clusters >= 0)], return_counts=True)
        main_cluster[c] = found[counts.argmax()]
        assert counts.max() >= 0.9 * (codes == c).sum()                    # a class is (nearly) one cluster
    assert len(set(main_cluster.values())) == 3                             # and each class its own
    composition = cluster_composition(clusters, codes, ("a", "b", "c"))
    assert sum(n for counts in composition.values() for n in counts.values()) == 210
    for c, label in enumerate("abc"):
        assert set(composition[str(main_cluster[c])]) == {label}            # pure clusters
    new_points, new_codes = _blobs(per_class=10, seed=5)                    # unseen points land in their class's
    _, projected, strength = fitted.project(new_points)
    assert np.mean([p == main_cluster[c] for p, c in zip(projected, new_codes)]) >= 0.9
    assert ((strength >= 0) & (strength <= 1)).all()


def test_space_is_deterministic_for_a_seed_and_reloads_identically(space, tmp_path):
    fitted, points, codes = space
    again = EmotionSpace.fit(points, codes, SETTINGS)
    np.testing.assert_allclose(again.embedding, fitted.embedding, atol=1e-4)
    np.testing.assert_array_equal(again.clusters, fitted.clusters)
    new_points, _ = _blobs(per_class=5, seed=9)
    first, second = fitted.project(new_points), fitted.project(new_points)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    card = fitted.save(tmp_path / "sp", SpaceCard("sp", 2, ("a", "b", "c"), SETTINGS.model_dump()))
    assert len(card.space_sha256) == 64
    loaded, loaded_card = EmotionSpace.load(tmp_path / "sp")
    assert loaded_card == card
    for a, b in zip(first, loaded.project(new_points)):
        np.testing.assert_allclose(b, a, atol=1e-6)
    empty = loaded.project(new_points[:0])
    assert empty[0].shape == (0, 2) and empty[1].shape == (0,)
    with open(tmp_path / "sp" / SPACE_FILE, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ValueError, match="SHA-256 differs"):
        EmotionSpace.load(tmp_path / "sp")


def test_a_three_dimensional_space_gives_three_coordinates():
    points, codes = _blobs(per_class=30)
    fitted = EmotionSpace.fit(points, codes, SpaceConfig(dimensions=3, min_cluster_size=10))
    coords, clusters, _ = fitted.project(points[:4])
    assert coords.shape == (4, 3) and np.isfinite(coords).all() and clusters.shape == (4,)


# --- the commands on real frames -------------------------------------------------------------------------------

CUTS = [s for s in SPANS if s[0] in {"sad0", "sad1", "sad2", "sad3", "happy0", "happy1", "happy2", "happy3"}]


@pytest.fixture(scope="module")
def mesh_run(tmp_path_factory, wolfgang):
    """(run output with the mesh, blendshapes and geo_*, labelled manifest) of eight 1-second cuts."""
    root = tmp_path_factory.mktemp("mesh")
    cut_clips(wolfgang, root / "videos", CUTS)
    rows = [{"path": f"videos/{name}.mp4", "video_id": name, "label": name.rstrip("0123456789"),
             "subject_id": f"s{i % 4}"} for i, (name, _, _) in enumerate(CUTS)]
    manifest = write_manifest(root / "labels.csv", rows)
    out = root / "out"
    assert main(["run", "--input", str(manifest), "--output", str(out), *_sets([
        "features.landmarks=true", "features.blendshapes=true", "features.geometry=true", "progress=false"])]) == 0
    return out, manifest


def test_train_fit_and_project_a_landmark_space_end_to_end(mesh_run, tmp_path, capsys):
    out, manifest = mesh_run
    dest = tmp_path / "ensemble"
    assert main(["train", "--model", "landmark_ensemble", "--output", str(out), "--manifest", str(manifest),
                 "--dest", str(dest), "--folds", "2", *_sets(["train.units=16", "train.frames_per_video=20"])]) == 0
    report = json.loads((dest / "cv.json").read_text())
    results = {(r["method"], r["feature_set"]) for r in report["results"]}
    assert results == {(m, f"mesh-{level}") for m in ("landmark_ensemble", *BASE_LEARNERS)
                       for level in ("videos", "frames")}
    by_level = {r["feature_set"]: r for r in report["results"] if r["method"] == "landmark_ensemble"}
    assert by_level["mesh-videos"]["items"] == 8 and by_level["mesh-frames"]["items"] > 8 * 5
    columns = report["frame_features"]["columns"]
    assert columns[0] == "landmarks_norm" and "bs_jaw_open" in columns and any(c.startswith("geo_") for c in columns)
    assert report["frame_features"]["values"] == 361 + len(columns) - 1     # mesh features, then one per column
    ensemble = dest / "landmark_ensemble.mesh.multiclass"
    card = json.loads((ensemble / "ensemble_card.json").read_text())
    assert card["labels"] == ["happy", "sad"] and card["training"]["videos"] == 8

    space_dir = tmp_path / "space-a"
    capsys.readouterr()
    assert main(["space", "fit", "--model", str(dest), "--output", str(out), "--manifest", str(manifest),
                 "--dest", str(space_dir), *_sets(["space.min_cluster_size=5"])]) == 0
    assert "space space-a: 2-D" in capsys.readouterr().out
    space_card = json.loads((space_dir / "space_card.json").read_text())
    per_class = space_card["training"]["frames_per_class"]
    assert per_class["happy"] == per_class["sad"] > 0                       # balanced by counts
    assert sum(n for c in space_card["clusters"].values() for n in c.values()) == space_card["training"]["frames"]
    assert (space_dir / "ensemble" / "ensemble_card.json").is_file() and "<img" in (space_dir / "space.html").read_text()
    assert main(["space", "fit", "--model", str(dest), "--output", str(out), "--manifest", str(manifest),
                 "--dest", str(space_dir)]) == 2                            # not over an existing space unasked
    # written under a partial folder (pipelines.training.job.staged_dest, whose cleanup on failure
    # test_training checks) and renamed: nothing of it is left beside the space
    assert not list(tmp_path.glob("space-a*partial*"))

    capsys.readouterr()
    assert main(["space", "project", "--space", str(space_dir), "--output", str(out)]) == 0
    assert "projected 8 video(s) into space-a" in capsys.readouterr().out
    rows = pq.read_table(out / "predictions" / "model=space-a").to_pandas()
    videos = rows[rows.level == "video"].set_index("video_id")
    frames = rows[rows.level == "frame"]
    assert len(videos) == 8 and (videos.status == "ok").all() and videos.z.isna().all()
    assert (frames.groupby("video_id").size() == videos.frames_valid).all()
    assert set(rows.predicted_label) <= {"happy", "sad"} and (rows.cluster >= -1).all()
    np.testing.assert_allclose(frames.groupby("video_id").x.mean().sort_index(), videos.x.sort_index(), atol=1e-4)
    assert json.loads((out / "validation" / "predictions" / "space-a" / "results.json").read_text())["valid"]
    assert (out / "reports" / "space" / "space-a.html").is_file()

    # the saved space, reloaded by another process, projects as before: a forced rerun writes the same points
    before = frames.sort_values(["video_id", "frame_index"])[["x", "y", "cluster"]].to_numpy()
    assert main(["space", "project", "--space", str(space_dir), "--output", str(out), "--force"]) == 0
    again = pq.read_table(out / "predictions" / "model=space-a").to_pandas()
    again = again[again.level == "frame"].sort_values(["video_id", "frame_index"])[["x", "y", "cluster"]].to_numpy()
    np.testing.assert_allclose(again.astype(float), before.astype(float), atol=1e-5)
    capsys.readouterr()
    assert main(["space", "project", "--space", str(space_dir), "--output", str(out)]) == 0
    assert "projected 0 video(s)" in capsys.readouterr().out               # unchanged space and frames: kept

    # the suite can fail: a frame row that lost its point
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    part = next((broken / "predictions" / "model=space-a").glob("video_id=sad0/*.parquet"))
    table = pq.read_table(part)
    x = table.column("x").to_pylist()
    x[-1] = None
    pq.write_table(table.set_column(table.schema.get_field_index("x"), table.schema.field("x"),
                                    pa.array(x, pa.float32())), part)
    capsys.readouterr()
    assert main(["validate", str(broken)]) == 4
    assert main(["space", "project", "--space", str(tmp_path / "nowhere"), "--output", str(out)]) == 2
    (space_dir / "space.joblib").write_bytes(b"changed")
    capsys.readouterr()
    assert main(["space", "project", "--space", str(space_dir), "--output", str(out)]) == 2
    assert "SHA-256 differs" in capsys.readouterr().err
