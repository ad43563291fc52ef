"""The suites `affectflow validate` runs, in reporting order."""
from __future__ import annotations

from core.settings import ValidationConfig
from pipelines.validation.frames import frame_expectations
from pipelines.validation.rules import DEAD_LETTERS, FRAMES, TABLES, VIDEOS, RunFacts, Suite
from pipelines.validation.stored import PARQUET_COLUMNS, parquet_column_expectations
from pipelines.validation.videos import dead_letter_expectations, video_expectations
from schemas.columns import PARTITION_COLUMN


def suites(facts: RunFacts, settings: ValidationConfig) -> list[Suite]:
    """The four suites `affectflow validate` runs, in reporting order."""
    return [
        Suite(PARQUET_COLUMNS, PARQUET_COLUMNS, ("file", "column_name"), parquet_column_expectations(TABLES)),
        Suite(FRAMES, FRAMES, (PARTITION_COLUMN, "frame_index", "face_index"), frame_expectations(facts, settings)),
        Suite(VIDEOS, VIDEOS, (PARTITION_COLUMN,), video_expectations(facts, settings)),
        Suite(DEAD_LETTERS, DEAD_LETTERS, (PARTITION_COLUMN, "stage"), dead_letter_expectations()),
    ]
