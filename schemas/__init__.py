"""Output table schemas: the single source of truth for Parquet, validation and docs."""
from schemas.tables import *  # noqa: F401,F403
