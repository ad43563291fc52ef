"""Output table schemas: the single source of truth for Parquet, validation and docs.

columns (shared rules), frames, features (optional frame column groups), external (ingested
tools' columns), videos (video table and dead letters). Nothing here imports the rest of
affectflow.
"""
