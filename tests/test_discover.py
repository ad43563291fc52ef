"""Input discovery: globs, directories and manifests (pipelines.inputs).

Files are empty placeholders: discover lists paths, it never opens a video.
"""
from __future__ import annotations

import hashlib
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.errors import InputError
from pipelines.inputs import discover, glob_base as _glob_base, make_video_id, read_manifest
from core.elements import VideoInput


def touch(root, *relatives):
    for rel in relatives:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def expected_id(stem: str, relative: str) -> str:
    return f"{stem}-{hashlib.sha1(relative.encode()).hexdigest()[:8]}"


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "archive"
    touch(root, "top.mp4", "a/x.MOV", "a/b/y.mp4", "a/notes.txt", "readme.txt", "a/b/clip.mp4", "c/clip.mp4",
          "c d/my vidéo ü.mp4")
    return root


def test_directory_means_every_video_below_it(tree):
    """A directory matches videos at every depth, any extension case, and no other files; sorted by path."""
    videos, extra = discover(str(tree))
    assert extra == []
    assert [v.path for v in videos] == sorted(str(tree / r) for r in (
        "top.mp4", "a/x.MOV", "a/b/y.mp4", "a/b/clip.mp4", "c/clip.mp4", "c d/my vidéo ü.mp4"))
    assert all(v.true_label is None and v.subject_id is None and v.extra == () for v in videos)


def test_ids_are_stem_plus_hash_of_relative_path(tree):
    """id = sanitised stem + 8 hex digits of SHA-1 of the path relative to the input root."""
    ids = {v.path[len(str(tree)) + 1:]: v.video_id for v in discover(str(tree))[0]}
    assert ids == {
        "top.mp4": expected_id("top", "top.mp4"),
        "a/x.MOV": expected_id("x", "a/x.MOV"),
        "a/b/y.mp4": expected_id("y", "a/b/y.mp4"),
        "a/b/clip.mp4": expected_id("clip", "a/b/clip.mp4"),
        "c/clip.mp4": expected_id("clip", "c/clip.mp4"),
        "c d/my vidéo ü.mp4": expected_id("my_vid_o", "c d/my vidéo ü.mp4"),
    }


def test_ids_stable_across_calls(tree):
    """Two discoveries of the same tree give identical inputs."""
    assert discover(str(tree)) == discover(str(tree))


def test_ids_survive_moving_the_archive(tree, tmp_path):
    """Copying the whole tree to another root keeps every id (only the paths change)."""
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(tree, moved)
    before = discover(str(tree))[0]
    after = discover(str(moved))[0]
    assert [v.video_id for v in before] == [v.video_id for v in after]
    assert [v.path.replace(str(moved), str(tree)) for v in after] == [v.path for v in before]


def test_same_stem_different_folders_get_different_ids(tree):
    """a/b/clip.mp4 and c/clip.mp4 share a stem but not an id."""
    by_path = {v.path: v.video_id for v in discover(str(tree))[0]}
    first, second = by_path[str(tree / "a/b/clip.mp4")], by_path[str(tree / "c/clip.mp4")]
    assert first != second
    assert first.startswith("clip-") and second.startswith("clip-")
    assert len({v for v in by_path.values()}) == len(by_path)


def test_ids_are_sanitised(tree):
    """Spaces and non-ASCII characters in the stem become '_' runs, trimmed at the ends."""
    by_path = {v.path: v.video_id for v in discover(str(tree))[0]}
    vid = by_path[str(tree / "c d" / "my vidéo ü.mp4")]
    assert vid.startswith("my_vid_o-")
    assert vid.isascii() and " " not in vid


def test_make_video_id_sanitising():
    """Sanitising keeps [A-Za-z0-9._-], collapses the rest, never returns an empty stem."""
    assert make_video_id("/r/ünï çødé.mp4", "/r/") == expected_id("n_d", "ünï çødé.mp4")
    assert make_video_id("/r/日本語.mp4", "/r/") == expected_id("video", "日本語.mp4")
    assert make_video_id("/r/a.b-c_d.mp4", "/r/") == expected_id("a.b-c_d", "a.b-c_d.mp4")
    assert make_video_id("/r/x/" + "n" * 100 + ".mp4", "/r/") == expected_id("n" * 80, "x/" + "n" * 100 + ".mp4")


def test_glob_matches_only_videos(tree):
    """A glob is matched as given; ids are relative to its fixed prefix."""
    videos, _ = discover(str(tree / "a" / "*"))
    assert [v.path for v in videos] == [str(tree / "a/x.MOV")]
    assert videos[0].video_id == expected_id("x", "x.MOV")


def test_glob_and_directory_agree_on_top_level_ids(tree):
    """tree/*.mp4 and tree/ have the same base, so top.mp4 has one id either way."""
    from_glob = discover(str(tree / "*.mp4"))[0]
    assert [v.video_id for v in from_glob] == [expected_id("top", "top.mp4")]


def test_glob_base():
    """The fixed directory prefix: everything up to the last '/' before the first wildcard."""
    assert _glob_base("/data/videos/*.mp4") == "/data/videos/"
    assert _glob_base("/data/vid*/x.mp4") == "/data/"
    assert _glob_base("/data/videos/**") == "/data/videos/"
    assert _glob_base("/data/v?deos/a.mp4") == "/data/"
    assert _glob_base("/data/[ab]/a.mp4") == "/data/"
    assert _glob_base("gs://bucket/a/*.mov") == "gs://bucket/a/"
    assert _glob_base("/data/videos/a.mp4") == "/data/videos/"


def test_nothing_matched(tree, tmp_path):
    """No video below the input: InputError naming the input."""
    only_text = tmp_path / "texts"
    touch(only_text, "a.txt", "b/c.csv.bak")
    (tmp_path / "empty").mkdir()
    for spec in (str(only_text), str(tree / "*.txt"), str(tmp_path / "missing" / "*.mp4"), str(tmp_path / "empty")):
        with pytest.raises(InputError, match="no video files .* matched") as exc:
            discover(spec)
        assert repr(spec) in str(exc.value)


# --- manifests -----------------------------------------------------------------------------


def write_csv(folder, text):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.csv"
    path.write_text(text)
    return path


def test_manifest_csv(tmp_path):
    """path (relative to the manifest folder or absolute), video_id, label, subject_id and extra columns."""
    manifest = write_csv(tmp_path / "m", "path,video_id,label,subject_id,age\n"
                                         "clips/a.mp4,vid-a,1,007,5\n"
                                         "../other/b.mov,,happy,s2,9\n"
                                         "/abs/c.mp4,c-123,sad,s3,11\n")
    videos, extra = discover(str(manifest))
    assert extra == [pa.field("age", pa.int64())]
    assert videos == [
        VideoInput("vid-a", str(tmp_path / "m" / "clips" / "a.mp4"), "1", "007", (("age", 5),)),
        # outside the manifest folder there is no relative path: the id hashes the full path
        VideoInput(expected_id("b", str(tmp_path / "other" / "b.mov")), str(tmp_path / "other" / "b.mov"),
                   "happy", "s2", (("age", 9),)),
        VideoInput("c-123", "/abs/c.mp4", "sad", "s3", (("age", 11),)),
    ]


def test_manifest_numeric_looking_values_stay_strings(tmp_path):
    """Labels and subjects that look like numbers are kept verbatim as strings."""
    manifest = write_csv(tmp_path, "path,video_id,label,subject_id\na.mp4,v0042,3,007\nb.mp4,v7,0,1.50\n")
    videos, extra = read_manifest(str(manifest))
    assert extra == []
    assert [(v.video_id, v.true_label, v.subject_id) for v in videos] == [("v0042", "3", "007"), ("v7", "0", "1.50")]
    assert all(type(v.true_label) is str for v in videos)


@pytest.mark.parametrize("video_id", ["001", "1", "2024-01-01", "1e5", "3.5", "true", "NaN", "2024-01-01T10"])
def test_ids_that_readers_would_not_read_back_as_text_are_refused(tmp_path, video_id):
    """DuckDB and pandas type Hive partition values: '001' and '1' both become 1, '2024-01-01' a date."""
    manifest = write_csv(tmp_path, f"path,video_id\na.mp4,{video_id}\n")
    with pytest.raises(InputError, match=f"video_id '{video_id}' would be read back as a number, date or boolean"):
        read_manifest(str(manifest))


def test_an_id_with_a_trailing_newline_or_a_slash_is_refused(tmp_path):
    for bad in ('"abc\n"', "../up", "a/b"):
        manifest = write_csv(tmp_path, f"path,video_id\na.mp4,{bad}\n")
        with pytest.raises(InputError, match="must match"):
            read_manifest(str(manifest))


def test_manifest_ids_match_directory_ids(tmp_path):
    """A manifest without video_id derives the same id as discovering the manifest's folder."""
    touch(tmp_path / "root", "x/a.mp4", "b.mp4")
    manifest = write_csv(tmp_path / "root", "path\nx/a.mp4\nb.mp4\n")
    from_manifest = {v.path: v.video_id for v in discover(str(manifest))[0]}
    from_folder = {v.path: v.video_id for v in discover(str(tmp_path / "root"))[0]}
    assert from_manifest == from_folder
    assert set(from_manifest.values()) == {expected_id("a", "x/a.mp4"), expected_id("b", "b.mp4")}


def test_manifest_empty_label_is_none(tmp_path):
    """An empty label or subject cell means 'not given' (null true_label), not the label ''."""
    manifest = write_csv(tmp_path, "path,label,subject_id\na.mp4,,\n")
    video = read_manifest(str(manifest))[0][0]
    assert video.true_label is None
    assert video.subject_id is None


def test_manifest_parquet(tmp_path):
    """A Parquet manifest: same columns, extra columns keep their Arrow types."""
    table = pa.table({
        "path": ["v/a.mp4", "/abs/b.mp4"],
        "video_id": ["A1", None],
        "label": ["fear", None],
        "score": pa.array([0.5, None], pa.float32()),
        "site": ["seoul", "lyon"],
    })
    path = tmp_path / "inputs.parquet"
    pq.write_table(table, path)
    videos, extra = discover(str(path))
    assert extra == [pa.field("score", pa.float32()), pa.field("site", pa.string())]
    assert videos == [
        VideoInput("A1", str(tmp_path / "v" / "a.mp4"), "fear", None, (("score", 0.5), ("site", "seoul"))),
        VideoInput(expected_id("b", "/abs/b.mp4"), "/abs/b.mp4", None, None, (("score", None), ("site", "lyon"))),
    ]


def test_manifest_without_path_column(tmp_path):
    """The path column is required; the error lists the columns found."""
    manifest = write_csv(tmp_path, "file,label\na.mp4,happy\n")
    with pytest.raises(InputError, match=r"has no 'path' column \(columns: \['file', 'label'\]\)"):
        discover(str(manifest))


def test_manifest_duplicate_video_id(tmp_path):
    """Two rows with one video_id: the error names the second row (CSV rows count the header as row 1)."""
    manifest = write_csv(tmp_path, "path,video_id\na.mp4,same\nb.mp4,other\nc.mp4,same\n")
    with pytest.raises(InputError, match=r"row 4: duplicate video_id 'same'") as exc:
        discover(str(manifest))
    assert str(manifest) in str(exc.value)


def test_manifest_duplicate_derived_id(tmp_path):
    """The same relative path listed twice derives the same id: a duplicate."""
    manifest = write_csv(tmp_path, "path\na.mp4\n./a.mp4\n")
    with pytest.raises(InputError, match=r"row 3: duplicate video_id 'a-"):
        discover(str(manifest))


@pytest.mark.parametrize("bad", ["a/b", "-lead", "has space", "ü"])
def test_manifest_invalid_video_id(tmp_path, bad):
    """video_id must be a safe partition name; the error names the row and the id."""
    manifest = write_csv(tmp_path, f"path,video_id\nok.mp4,fine\nx.mp4,{bad}\n")
    with pytest.raises(InputError, match=r"row 3: video_id '.*' must match") as exc:
        discover(str(manifest))
    assert repr(bad) in str(exc.value)


def test_manifest_invalid_video_id_parquet_row_numbers(tmp_path):
    """Parquet rows are numbered from 1."""
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": ["a.mp4"], "video_id": ["a/b"]}), path)
    with pytest.raises(InputError, match=r"row 1: video_id 'a/b' must match"):
        discover(str(path))


def test_manifest_empty_path(tmp_path):
    """A row without a path is an error naming the row."""
    manifest = write_csv(tmp_path, "path,label\na.mp4,x\n,y\n")
    with pytest.raises(InputError, match="row 3: empty path"):
        discover(str(manifest))


def test_manifest_without_rows(tmp_path):
    """A manifest with a header only lists no videos."""
    manifest = write_csv(tmp_path, "path,label\n")
    with pytest.raises(InputError, match="lists no videos"):
        discover(str(manifest))


def test_manifest_missing_file(tmp_path):
    """An unreadable manifest is an InputError naming it."""
    with pytest.raises(InputError, match="cannot read manifest .*absent.csv"):
        discover(str(tmp_path / "absent.csv"))
