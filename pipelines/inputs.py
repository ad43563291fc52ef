"""What a job works on: discovering inputs (glob, folder or manifest) and reading manifests.

Discovery runs on the launching machine, before the pipeline is built, so a run knows
exactly which inputs it matched (the denominator of ok + no_face + failed = matched) and can
report progress against it. Listing goes through Beam's FileSystems, so ``gs://``, ``s3://``
and local paths work alike. One manifest reader serves every job: `affectflow run` and
`ingest` (inputs), `calibrate` and training (labels).

Video ids are stable across reruns: a manifest's ``video_id``, or else the file's stem plus
8 hex digits of the SHA-1 of its path relative to the glob's fixed prefix. Moving the whole
archive keeps the ids; renaming a file changes its id.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
from typing import Sequence

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from core.elements import VideoInput
from core.errors import InputError

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
MANIFEST_EXTENSIONS = (".csv", ".parquet")
RESERVED_MANIFEST_COLUMNS = ("path", "video_id", "label", "subject_id")
_ID_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_GLOB_CHARS = "*?["


def _sanitise(stem: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")
    return (cleaned or "video")[:80]


def make_video_id(path: str, base: str) -> str:
    """The file's stem plus 8 hex digits of the SHA-1 of its path relative to ``base``."""
    relative = path[len(base):].lstrip("/") if path.startswith(base) else path
    stem = os.path.splitext(os.path.basename(path))[0]
    return f"{_sanitise(stem)}-{hashlib.sha1(relative.encode()).hexdigest()[:8]}"


def glob_base(pattern: str) -> str:
    """The fixed directory prefix of a glob (everything before the first wildcard)."""
    cut = min([i for i in (pattern.find(c) for c in _GLOB_CHARS) if i >= 0], default=len(pattern))
    prefix = pattern[:cut]
    return prefix if prefix.endswith("/") else prefix.rsplit("/", 1)[0] + "/"


def expand_pattern(pattern: str) -> str:
    """A directory means every file below it."""
    if any(c in pattern for c in _GLOB_CHARS):
        return pattern
    if "://" not in pattern and os.path.isdir(pattern):
        return os.path.join(os.path.abspath(pattern), "**")
    return pattern


def match_files(spec: str, extensions: Sequence[str], kind: str) -> list[VideoInput]:
    """The files with one of ``extensions`` that a glob or folder matches, with their ids;
    InputError naming the ``kind`` of file looked for when there are none."""
    pattern = expand_pattern(spec if "://" in spec else os.path.abspath(spec))
    base = glob_base(pattern)
    matched = sorted({m.path for r in FileSystems.match([pattern]) for m in r.metadata_list})
    files = [p for p in matched if p.lower().endswith(tuple(extensions))]
    if not files:
        raise InputError(f"no {kind} matched {spec!r}")
    return [VideoInput(make_video_id(p, base), p) for p in files]


def is_manifest_spec(spec: str) -> bool:
    return spec.lower().endswith(MANIFEST_EXTENSIONS) and not any(c in spec for c in _GLOB_CHARS)


def discover(spec: str) -> tuple[list[VideoInput], list[pa.Field]]:
    """Inputs for a glob, a directory or a manifest; plus the manifest's extra columns.

    Raises InputError when nothing matches or the manifest is malformed.
    """
    if is_manifest_spec(spec):
        return read_manifest(spec)
    return match_files(spec, VIDEO_EXTENSIONS, f"video files ({', '.join(VIDEO_EXTENSIONS)})"), []


def read_manifest_table(path: str, string_columns: Sequence[str] = RESERVED_MANIFEST_COLUMNS) -> pa.Table:
    """A manifest (.csv or .parquet) as a table: ids, paths and labels stay strings even when they
    look like numbers, and an empty CSV cell is null ("not given"), never an empty label."""
    try:
        with FileSystems.open(path) as fh:
            data = fh.read()
        if path.lower().endswith(".parquet"):
            table = pq.read_table(io.BytesIO(data))
            return table.cast(pa.schema([pa.field(f.name, pa.string()) if f.name in string_columns else f
                                         for f in table.schema]))
        convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in string_columns},
                                       strings_can_be_null=True, null_values=[""])
        return pacsv.read_csv(io.BytesIO(data), convert_options=convert)
    except Exception as exc:
        raise InputError(f"cannot read manifest {path}: {exc}") from exc


def manifest_folder(path: str) -> str:
    """The folder relative manifest paths resolve against (with a trailing slash, or '')."""
    return path.rsplit("/", 1)[0] + "/" if "/" in path else ""


def resolve_manifest_path(video_path: str, manifest_path: str) -> str:
    """A manifest row's path: absolute or remote as given, else relative to the manifest's folder."""
    if "://" in video_path or os.path.isabs(video_path):
        return video_path
    return os.path.normpath(os.path.join(manifest_folder(manifest_path) or ".", video_path))


def read_manifest(path: str) -> tuple[list[VideoInput], list[pa.Field]]:
    """A manifest: ``path`` (required), ``video_id``, ``label``, ``subject_id`` and any other
    columns, which are carried through to the video table with their types.

    Relative paths are relative to the manifest's folder.
    """
    table = read_manifest_table(path)
    if "path" not in table.column_names:
        raise InputError(f"manifest {path} has no 'path' column (columns: {table.column_names})")
    base = manifest_folder(path)
    extra_fields = [f for f in table.schema if f.name not in RESERVED_MANIFEST_COLUMNS]
    inputs, seen = [], set()
    for n, row in enumerate(table.to_pylist(), start=2 if path.lower().endswith(".csv") else 1):
        if not row["path"]:
            raise InputError(f"manifest {path}, row {n}: empty path")
        video_path = resolve_manifest_path(row["path"], path)
        video_id = row.get("video_id") or make_video_id(video_path, base)
        if not _ID_OK.match(str(video_id)):
            raise InputError(f"manifest {path}, row {n}: video_id {video_id!r} must match {_ID_OK.pattern}")
        if video_id in seen:
            raise InputError(f"manifest {path}, row {n}: duplicate video_id {video_id!r}")
        seen.add(video_id)
        label, subject = row.get("label"), row.get("subject_id")
        inputs.append(VideoInput(str(video_id), video_path, None if label is None else str(label),
                                 None if subject is None else str(subject),
                                 tuple((f.name, row[f.name]) for f in extra_fields)))
    if not inputs:
        raise InputError(f"manifest {path} lists no videos")
    return inputs, extra_fields
