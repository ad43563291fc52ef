"""The core every layer may use: typed elements between stages, job settings, error types."""
