"""Compare two affectflow output folders table by table: the same rows with the same values.

    python benchmarks/compare_outputs.py OUT_A OUT_B [--atol 0] [--ignore run_id,processed_at]

Rows are matched by their keys (video_id, frame_index, face_index for frames; video_id for
videos; video_id, stage, segment_index for dead letters). Columns that name the run
(run_id, processed_at) are ignored. Floats must be equal within --atol (default 0: bit for
bit). Prints one line per table and each difference; exit 1 when anything differs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

KEYS = {"frames": ["video_id", "frame_index", "face_index"], "videos": ["video_id"],
        "dead_letters": ["video_id", "stage", "segment_index"]}


def read(output: Path, table: str) -> pd.DataFrame:
    part = ds.partitioning(pa.schema([("video_id", pa.string())]), flavor="hive")
    frame = ds.dataset(output / table, format="parquet", partitioning=part).to_table().to_pandas()
    return frame.sort_values(KEYS[table], na_position="first", ignore_index=True)


def _same(a: pd.Series, b: pd.Series, atol: float) -> bool:
    if a.dtype.kind == "f" and b.dtype.kind == "f":
        return bool(np.allclose(a.to_numpy(), b.to_numpy(), rtol=0, atol=atol, equal_nan=True))
    if a.dtype == object and len(a) and isinstance(a.dropna().iloc[0] if a.notna().any() else None, np.ndarray):
        return all((x is None and y is None) or (x is not None and y is not None and np.allclose(x, y, rtol=0, atol=atol))
                   for x, y in zip(a, b))
    return a.astype(str).equals(b.astype(str))


def compare(a: Path, b: Path, atol: float, ignore: set[str]) -> list[str]:
    problems = []
    for table in KEYS:
        left, right = read(a, table), read(b, table)
        columns = [c for c in left.columns if c not in ignore]
        if list(left.columns) != list(right.columns):
            problems.append(f"{table}: columns differ: {sorted(set(left.columns) ^ set(right.columns))}")
            columns = [c for c in columns if c in right.columns]
        if len(left) != len(right):
            problems.append(f"{table}: {len(left)} rows against {len(right)}")
            continue
        differing = [c for c in columns if not _same(left[c], right[c], atol)]
        problems += [f"{table}.{c}: values differ" for c in differing]
        print(f"{table}: {len(left)} rows, {len(columns)} columns compared, {len(differing)} differ")
    return problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--atol", type=float, default=0.0, help="float tolerance (default 0: exactly equal)")
    parser.add_argument("--ignore", default="run_id,processed_at", help="columns not compared")
    args = parser.parse_args(argv)
    problems = compare(args.a, args.b, args.atol, set(args.ignore.split(",")))
    for p in problems:
        print("DIFFERENT", p)
    print("identical" if not problems else f"{len(problems)} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
