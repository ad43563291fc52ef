"""What a job works on: discovering inputs (glob, folder or manifest) and reading manifests.

Discovery runs on the launching machine, before the pipeline is built, so a run knows
exactly which inputs it matched (the denominator of ok + no_face + failed = matched) and can
report progress against it. Listing goes through Beam's FileSystems, so ``gs://``, ``s3://``
and local paths work alike. One manifest reader serves every job: `affectflow run` and
`ingest` (inputs), `calibrate` and training (labels).

Video ids are stable across reruns: a manifest's ``video_id``, or else the file's stem plus
8 hex digits of the SHA-1 of its path relative to the **archive root**: ``archive_root`` when
set, else the root the output's first run recorded, else the input folder (a glob's fixed
prefix, a file's or manifest's folder). Pointing ``--input`` at a subfolder therefore keeps
every id; moving the whole archive keeps them when archive_root follows it; renaming a file
changes its id. Ids must be text that DuckDB and pandas read back as text (not "001").
"""
from __future__ import annotations

import glob
import hashlib
import io
import os
import re
from typing import Optional, Sequence

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from core.elements import VideoInput
from core.errors import InputError

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
MANIFEST_EXTENSIONS = (".csv", ".parquet")
RESERVED_MANIFEST_COLUMNS = ("path", "video_id", "label", "subject_id")
_ID_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Partition values DuckDB and pyarrow would read back as something other than text (Hive typing):
# numbers, dates, times, booleans. An id must not look like one.
_ID_TYPED = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|\d{4}-\d{1,2}-\d{1,2}([ T].*)?|\d{1,2}:\d{2}(:\d{2})?.*"
                       r"|true|false|nan|inf|infinity|null", re.IGNORECASE)
_GLOB_CHARS = "*?["


def check_video_id(video_id: str) -> None:
    """InputError unless ``video_id`` is a safe, unambiguous partition value."""
    if not _ID_OK.fullmatch(video_id):
        raise InputError(f"video_id {video_id!r} must match {_ID_OK.pattern} (letters, digits, '.', '_', '-'; "
                         "at most 128 characters)")
    if _ID_TYPED.fullmatch(video_id):
        raise InputError(f"video_id {video_id!r} would be read back as a number, date or boolean by DuckDB and "
                         f"pandas (Hive partition typing); give ids that are text, e.g. 'v{video_id}'")


def _sanitise(stem: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")
    return (cleaned or "video")[:80]


def make_video_id(path: str, root: str) -> str:
    """The file's stem plus 8 hex digits of the SHA-1 of its path relative to the archive ``root``."""
    relative = path[len(root):].lstrip("/") if path.startswith(root) else path
    stem = os.path.splitext(os.path.basename(path))[0]
    return f"{_sanitise(stem)}-{hashlib.sha1(relative.encode()).hexdigest()[:8]}"


def _is_local(spec: str) -> bool:
    return "://" not in spec or spec.startswith("file://")


def _escape_existing_prefix(pattern: str) -> str:
    """Glob-escape the longest leading part of a local pattern that exists as written, so a folder
    named with ``[`` is a folder, not a character class."""
    parts = pattern.split("/")
    for n in range(len(parts), 0, -1):
        prefix = "/".join(parts[:n])
        if prefix and os.path.exists(prefix):
            return "/".join([glob.escape(prefix), *parts[n:]])
    return pattern


def glob_base(pattern: str) -> str:
    """The fixed directory prefix of a glob (everything before the first wildcard)."""
    cut = min([i for i in (pattern.find(c) for c in _GLOB_CHARS) if i >= 0], default=len(pattern))
    prefix = pattern[:cut]
    return prefix if prefix.endswith("/") else prefix.rsplit("/", 1)[0] + "/"


def default_root(spec: str) -> str:
    """The archive root ids are relative to when none is set: a folder input itself, a file's or a
    manifest's folder, a glob's fixed prefix (with a trailing slash)."""
    if _is_local(spec):
        spec = os.path.abspath(spec.removeprefix("file://"))
        if os.path.isdir(spec):
            return spec.rstrip("/") + "/"
        if os.path.exists(spec):
            return os.path.dirname(spec) + "/"
    return glob_base(spec)


def _walk(folder: str) -> list[str]:
    """Every file below a local folder, following folder links once (a link loop is not walked
    twice) and listing file links whatever they point at (a broken or looping link becomes an
    input whose probe fails: a dead letter, never a silently missing video)."""
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        found += [os.path.join(dirpath, name) for name in filenames]
        found += [os.path.join(dirpath, d) for d in dirnames if os.path.islink(os.path.join(dirpath, d))
                  and not os.path.isdir(os.path.join(dirpath, d))]          # a link to nowhere or to itself
    return found


def _list(spec: str) -> list[str]:
    """The paths a folder, file or glob names (local or any Beam filesystem)."""
    if _is_local(spec):
        path = os.path.abspath(spec.removeprefix("file://"))
        if os.path.isdir(path):
            return _walk(path)
        if os.path.lexists(path):
            return [path]
        return glob.glob(_escape_existing_prefix(path), recursive=True)
    pattern = spec if any(c in spec for c in _GLOB_CHARS) else spec.rstrip("/") + "/**"
    return [m.path for r in FileSystems.match([pattern]) for m in r.metadata_list]


def match_files(spec: str, extensions: Sequence[str], kind: str, root: str) -> list[VideoInput]:
    """The files with one of ``extensions`` that a folder, file or glob names, with ids relative to
    ``root``; InputError naming the ``kind`` of file looked for when there are none."""
    files = sorted({p for p in _list(spec) if p.lower().endswith(tuple(extensions))})
    if not files:
        raise InputError(f"no {kind} matched {spec!r}")
    return [VideoInput(make_video_id(p, root), p) for p in files]


def is_manifest_spec(spec: str) -> bool:
    return spec.lower().endswith(MANIFEST_EXTENSIONS) and not any(c in spec for c in _GLOB_CHARS)


def discover(spec: str, root: Optional[str] = None) -> tuple[list[VideoInput], list[pa.Field]]:
    """Inputs for a glob, a folder or a manifest, with ids relative to the archive ``root``
    (default: `default_root`); plus the manifest's extra columns.

    Raises InputError when nothing matches, the manifest is malformed, an id is not a safe
    partition value, two inputs get one id, or a file whose id is generated lies outside ``root``.
    """
    root = root or default_root(spec)
    if is_manifest_spec(spec):
        inputs, fields = read_manifest(spec, root)
    else:
        inputs, fields = match_files(spec, VIDEO_EXTENSIONS, f"video files ({', '.join(VIDEO_EXTENSIONS)})", root), []
    check_inputs(inputs, root, given_ids=is_manifest_spec(spec))
    return inputs, fields


def check_inputs(inputs: Sequence[VideoInput], root: str, given_ids: bool = False) -> None:
    """Every id valid and unique, every file named once, and every file with a generated id inside
    ``root`` (outside it, moving the archive would silently give its videos new ids)."""
    by_id: dict[str, str] = {}
    paths: set[str] = set()
    for video in inputs:
        check_video_id(video.video_id)
        if video.video_id in by_id:
            raise InputError(f"two inputs get the video id {video.video_id!r}: {by_id[video.video_id]} and "
                             f"{video.path}; give them distinct video_id values in a manifest")
        if video.path in paths:
            raise InputError(f"{video.path} is listed twice")
        by_id[video.video_id] = video.path
        paths.add(video.path)
        if not given_ids and not video.path.startswith(root):
            raise InputError(f"{video.path} is outside the archive root {root} that this output's video ids are "
                             "relative to; set archive_root to a folder that holds every input (ids stay the same "
                             "when the whole archive moves and archive_root follows it)")


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
    manifest_path = os.path.abspath(manifest_path) if _is_local(manifest_path) else manifest_path
    return os.path.normpath(os.path.join(manifest_folder(manifest_path) or ".", video_path))


def read_manifest(path: str, root: Optional[str] = None) -> tuple[list[VideoInput], list[pa.Field]]:
    """A manifest: ``path`` (required), ``video_id``, ``label``, ``subject_id`` and any other
    columns, which are carried through to the video table with their types.

    Relative paths are relative to the manifest's folder (whatever the working directory); a
    row without a video_id gets the id its file would get from a folder input (relative to the
    archive ``root``, default the manifest's folder).
    """
    path = os.path.abspath(path) if _is_local(path) else path
    table = read_manifest_table(path)
    if "path" not in table.column_names:
        raise InputError(f"manifest {path} has no 'path' column (columns: {table.column_names})")
    base = root or manifest_folder(path)
    extra_fields = [f for f in table.schema if f.name not in RESERVED_MANIFEST_COLUMNS]
    inputs, seen = [], set()
    for n, row in enumerate(table.to_pylist(), start=2 if path.lower().endswith(".csv") else 1):
        if not row["path"]:
            raise InputError(f"manifest {path}, row {n}: empty path")
        video_path = resolve_manifest_path(row["path"], path)
        video_id = row.get("video_id") or make_video_id(video_path, base)
        try:
            check_video_id(str(video_id))
        except InputError as exc:
            raise InputError(f"manifest {path}, row {n}: {exc}") from None
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
