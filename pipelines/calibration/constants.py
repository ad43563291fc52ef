"""Calibration's defaults and choices, light enough for the command line's parser to import."""
DEFAULT_THRESHOLDS = "0.05:1.0:0.05"     # the paper's sweep, stop included
DEFAULT_FOLDS = 5
SETTINGS = ("specific", "broad")          # label settings: the model's labels, and the broad 3-label map
ENGINES = ("auto", "duckdb", "pyarrow")   # what groups the frame table into counts
