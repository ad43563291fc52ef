"""What a training run learns from: a manifest's labelled videos matched with a run's output, the tasks
(multiclass, binary) over their labels, and each feature set's sequences on disk.

Everything left out is counted with its reason (not in the run, extraction failed, too few
frames with a face and every feature, a label the binary map leaves out), so the report can
say exactly which labelled videos were used.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from core.errors import UsageError
from pipelines.labels import LabelledVideos, parse_label_map
from pipelines.output.layout import dataset
from pipelines.training.store import SequenceStore
from schemas.columns import PARTITION_COLUMN
from transforms.sequences import frame_files, read_video_sequence

LEFT_OUT_VALUES = ("", "none", "null", "-")       # a binary-map value that leaves a label out


@dataclass(frozen=True)
class LabelledRun:
    """The manifest's labelled videos that are in the run and were extracted."""
    video_ids: np.ndarray                       # object[n]
    labels: np.ndarray                          # object[n], after the label map
    subjects: Optional[np.ndarray]              # object[n]; None when the manifest has no subject_id
    left_out: dict[str, list[str]]              # reason -> video ids
    manifest_rows: int
    run_ids: tuple[str, ...]                    # the runs that wrote these videos' rows


def match_run(output: str, videos: LabelledVideos) -> LabelledRun:
    """Keep the labelled videos that have a row in ``output`` and did not fail extraction."""
    rows = dataset(output, "videos").to_table(columns=[PARTITION_COLUMN, "status", "run_id"]).to_pydict()
    status = dict(zip(rows[PARTITION_COLUMN], rows["status"]))
    run_of = dict(zip(rows[PARTITION_COLUMN], rows["run_id"]))
    ids = list(videos.video_ids)
    left_out = {"not in the run": [v for v in ids if v not in status],
                "extraction failed": [v for v in ids if status.get(v) == "failed"]}
    keep = np.asarray([status.get(v) in ("ok", "no_face") for v in ids], bool)
    has_subjects = any(s is not None for s in videos.subjects)
    return LabelledRun(video_ids=videos.video_ids[keep], labels=videos.labels[keep],
                       subjects=videos.subjects[keep] if has_subjects else None,
                       left_out={k: v for k, v in left_out.items() if v}, manifest_rows=videos.rows,
                       run_ids=tuple(sorted({run_of[v] for v in videos.video_ids[keep]})))


def parse_binary_map(items: Sequence[str]) -> dict[str, Optional[str]]:
    """``--binary-map`` values (a YAML file or key=value pairs, as ``--label-map``) -> {label: class};
    a class of null, "" or "-" leaves the label out of the binary task."""
    return {label: (None if value.strip().lower() in LEFT_OUT_VALUES else value.strip())
            for label, value in parse_label_map(items).items()}


@dataclass(frozen=True)
class Task:
    """One classification task over the labelled videos: class order and each video's class code."""
    name: str                                   # multiclass | binary
    classes: tuple[str, ...]
    codes: np.ndarray                           # int64[n], -1 = not in this task
    mapping: Mapping[str, Optional[str]] = field(default_factory=dict)   # binary: label -> class

    @property
    def used(self) -> np.ndarray:
        return self.codes >= 0

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.codes[self.used], minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}


def make_task(name: str, labels: np.ndarray, binary_map: Optional[Mapping[str, Optional[str]]] = None) -> Task:
    """The task's classes from the labels themselves (any number, sorted), or for ``binary`` through
    ``binary_map``. UsageError when fewer than two classes remain, or a label has no binary class."""
    labels = np.asarray(labels, dtype=object)
    if name == "multiclass":
        mapped, mapping = labels, {}
    elif name == "binary":
        distinct = sorted(set(labels))
        if not binary_map:
            if len(distinct) != 2:
                raise UsageError(f"the binary task needs --binary-map (label=class pairs, e.g. happy=positive,"
                                 f"sad=negative) for the labels {distinct}")
            binary_map = {label: label for label in distinct}
        unmapped = [label for label in distinct if label not in binary_map]
        if unmapped:
            raise UsageError(f"--binary-map gives no class to the labels {unmapped}; map each to a class, or to "
                             "null to leave it out")
        mapping = {label: binary_map[label] for label in distinct}
        mapped = np.asarray([mapping[label] for label in labels], dtype=object)
    else:
        raise UsageError(f"task must be multiclass or binary, got {name!r}")
    classes = tuple(sorted({c for c in mapped if c is not None}))
    if name == "binary" and len(classes) != 2:
        raise UsageError(f"--binary-map must give exactly two classes, got {list(classes)}")
    if len(classes) < 2:
        raise UsageError(f"the {name} task needs at least two classes; the labelled videos have only "
                         f"{list(classes)}")
    index = {c: i for i, c in enumerate(classes)}
    return Task(name, classes, np.asarray([index.get(c, -1) if c is not None else -1 for c in mapped], np.int64),
                mapping)


def manifest_sha256(path: str) -> str:
    """SHA-256 of the manifest file's bytes (the model card records which labels trained it)."""
    digest = hashlib.sha256()
    with FileSystems.open(path) as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def longest_sequence(output: str, video_ids: Sequence[str]) -> int:
    """The most frame rows any of the videos has (from the files' footers: nothing is read)."""
    longest = 0
    for video_id in video_ids:
        rows = 0
        for path in frame_files(output, video_id):
            with FileSystems.open(path) as fh:
                rows += pq.ParquetFile(fh).metadata.num_rows
        longest = max(longest, rows)
    return longest


def build_store(folder: str | Path, output: str, video_ids: Sequence[str], columns: Sequence[str],
                sizes: Sequence[int], max_frames: int) -> SequenceStore:
    """Every video's primary-face sequence of ``columns``, resampled or padded to the longest video's
    length (at most ``max_frames``), in a SequenceStore under ``folder``; one video in memory at a time."""
    length = max(2, min(max_frames, longest_sequence(output, video_ids)))
    sequences = (read_video_sequence(output, v, columns, sizes) for v in video_ids)
    return SequenceStore.write(folder, sequences, len(video_ids), length, int(sum(sizes)))
