"""The training sequences of many videos on local disk, read back a batch at a time.

``x.npy`` float32[videos, T, d] and ``mask.npy`` bool[videos, T] (numpy's own file format, so
``np.load(..., mmap_mode="r")`` opens them too). `SequenceStore.read` fetches the rows of a
batch with positioned reads (``os.pread``), not a memory map: the memory a training run holds
is a few batches whatever the number of videos, and the pages read are the page cache's, not
the process's.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from core.elements import VideoSequence
from models.sequence_data import fixed_length


class SequenceStore:
    """Fixed-length sequences on disk: ``read(positions)`` -> (x float32[k, T, d], mask bool[k, T])."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._x = _NpyRows(self.folder / "x.npy")
        self._mask = _NpyRows(self.folder / "mask.npy")
        self.n, self.length, self.width = self._x.shape
        self.valid_frames = np.load(self.folder / "valid_frames.npy")

    @classmethod
    def write(cls, folder: str | Path, sequences: Iterable[VideoSequence], n: int, length: int,
              width: int) -> "SequenceStore":
        """Write ``n`` sequences (each resampled or padded to ``length`` steps; models.sequence_data)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        valid = np.zeros(n, np.int64)
        written = 0
        with _NpyWriter(folder / "x.npy", (n, length, width), np.float32) as xs, \
                _NpyWriter(folder / "mask.npy", (n, length), np.bool_) as masks:
            for i, sequence in enumerate(sequences):
                if sequence.features.shape[1] != width:
                    raise ValueError(f"video {sequence.video_id}: {sequence.features.shape[1]} values per frame, "
                                     f"expected {width}")
                x, mask = fixed_length(sequence.features, sequence.valid, length)
                xs.append(x)
                masks.append(mask)
                valid[i] = sequence.frames_valid
                written += 1
        if written != n:
            raise ValueError(f"{written} sequences written, {n} announced")
        np.save(folder / "valid_frames.npy", valid)
        return cls(folder)

    def read(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        positions = np.asarray(positions, np.int64)
        return self._x.rows(positions), self._mask.rows(positions)

    def batches(self, positions: np.ndarray, size: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(positions), size):
            yield self.read(positions[start:start + size])


class _NpyWriter:
    """Appends rows to a ``.npy`` file whose header announces the final shape."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype):
        self._path, self._shape, self._dtype = path, shape, np.dtype(dtype)
        self._rows = 0

    def __enter__(self) -> "_NpyWriter":
        self._fh = open(self._path, "wb")
        np.lib.format.write_array_header_1_0(self._fh, {"descr": np.lib.format.dtype_to_descr(self._dtype),
                                                        "fortran_order": False, "shape": self._shape})
        return self

    def append(self, row: np.ndarray) -> None:
        self._fh.write(np.ascontiguousarray(row, self._dtype).tobytes())
        self._rows += 1

    def __exit__(self, *exc) -> None:
        self._fh.close()


class _NpyRows:
    """Positioned reads of whole rows (first axis) of a C-ordered ``.npy`` file."""

    def __init__(self, path: Path):
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            self.shape, fortran, self.dtype = read_header(fh)
            self._offset = fh.tell()
        if fortran:
            raise ValueError(f"{path} is Fortran-ordered")
        self._row_shape = self.shape[1:]
        self._row_bytes = int(np.prod(self._row_shape, dtype=np.int64)) * self.dtype.itemsize
        self._fd = os.open(path, os.O_RDONLY)

    def rows(self, positions: np.ndarray) -> np.ndarray:
        out = np.empty((len(positions), *self._row_shape), self.dtype)
        buffer = out.reshape(len(positions), -1).view(np.uint8).reshape(len(positions), self._row_bytes)
        for i, position in enumerate(positions):
            if not 0 <= position < self.shape[0]:
                raise IndexError(f"row {position} of {self.shape[0]}")
            data = os.pread(self._fd, self._row_bytes, self._offset + int(position) * self._row_bytes)
            buffer[i] = np.frombuffer(data, np.uint8)
        return out

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)
