"""A manifest's labelled videos (read by the one manifest reader), for calibration and training.

Labels are mapped through ``--label-map`` (manifest label -> model label), and for a binary
task through a binary map (label -> class, e.g. positive / negative)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import yaml

from core.errors import InputError
from pipelines.inputs import make_video_id, manifest_folder, read_manifest_table, resolve_manifest_path
from pipelines.output.layout import dataset, has_table
from schemas.columns import PARTITION_COLUMN


@dataclass(frozen=True)
class LabelledVideos:
    """A manifest's labelled videos (rows without a label are counted, not kept)."""
    video_ids: np.ndarray   # object[n]
    labels: np.ndarray      # object[n], after the label map
    subjects: np.ndarray    # object[n], None where not given
    rows: int               # manifest rows, labelled or not
    unlabelled: int         # rows without a label


def parse_label_map(items: Sequence[str]) -> dict[str, str]:
    """``--label-map`` values -> {manifest label: model label}.

    Each item is a YAML file holding a mapping (``happiness: happy``) or comma-separated
    ``key=value`` pairs (``happiness=happy,sadness=sad``); later items win.
    """
    mapping: dict[str, str] = {}
    for item in items or []:
        if os.path.isfile(item) or item.lower().endswith((".yaml", ".yml")):
            loaded = yaml.safe_load(Path(item).read_text()) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"label map {item} must be a YAML mapping, got {type(loaded).__name__}")
            mapping.update({str(k).strip(): str(v).strip() for k, v in loaded.items()})
            continue
        for pair in filter(None, (p.strip() for p in item.split(","))):
            if "=" not in pair:
                raise ValueError(f"--label-map takes a YAML file or key=value pairs, got {pair!r}")
            key, value = pair.split("=", 1)
            mapping[key.strip()] = value.strip()
    return mapping


def ids_from_paths(paths: list[Optional[str]], manifest: str, output: Optional[str]) -> list[Optional[str]]:
    """Video ids for manifest paths: the run's own (its videos table's source_path), else the id
    ``affectflow run`` gives a manifest row without a video_id."""
    base = manifest_folder(manifest)
    resolved = [None if p is None else resolve_manifest_path(p, manifest) for p in paths]
    known: dict[str, str] = {}
    if output is not None and has_table(output, "videos"):
        videos = dataset(output, "videos").to_table(columns=[PARTITION_COLUMN, "source_path"])
        known = dict(zip(videos.column("source_path").to_pylist(), videos.column(PARTITION_COLUMN).to_pylist()))
    return [None if p is None else known.get(p) or make_video_id(p, base) for p in resolved]


def read_labelled_manifest(path: str, label_map: Optional[dict] = None, output: Optional[str] = None) -> LabelledVideos:
    """The labelled videos of a manifest (CSV or Parquet).

    Columns: ``label`` (required), ``video_id`` or ``path`` (one is required; a row's
    video_id wins, a path is resolved as ``affectflow run`` resolves it and looked up in
    ``output``'s video table), ``subject_id`` (optional). Labels are stripped and mapped
    through ``label_map``. Raises ValueError on a missing column or a duplicate video id.
    """
    table = read_manifest_table(path)
    names = table.column_names
    if "label" not in names or not ({"video_id", "path"} & set(names)):
        raise InputError(f"manifest {path} needs a label column and a video_id or path column (columns: {names})")
    n = table.num_rows
    ids = table.column("video_id").to_pylist() if "video_id" in names else [None] * n
    if "path" in names and any(i is None for i in ids):
        from_paths = ids_from_paths(table.column("path").to_pylist(), path, output)
        ids = [i if i is not None else p for i, p in zip(ids, from_paths)]
    raw = table.column("label").to_pylist()
    subjects = table.column("subject_id").to_pylist() if "subject_id" in names else [None] * n
    label_map = label_map or {}
    keep = [i for i in range(n) if raw[i] is not None and str(raw[i]).strip()]
    missing_ids = [i for i in keep if ids[i] is None]
    if missing_ids:
        raise ValueError(f"manifest {path}: row(s) {[i + 1 for i in missing_ids[:10]]} have neither video_id nor path")
    labels = [label_map.get(str(raw[i]).strip(), str(raw[i]).strip()) for i in keep]
    kept_ids = [str(ids[i]) for i in keep]
    if len(set(kept_ids)) != len(kept_ids):
        dupes = sorted({v for v in kept_ids if kept_ids.count(v) > 1})[:10]
        raise ValueError(f"manifest {path}: duplicate video ids {dupes}")
    return LabelledVideos(video_ids=np.asarray(kept_ids, dtype=object), labels=np.asarray(labels, dtype=object),
                          subjects=np.asarray([None if subjects[i] is None else str(subjects[i]) for i in keep],
                                              dtype=object),
                          rows=n, unlabelled=n - len(keep))

