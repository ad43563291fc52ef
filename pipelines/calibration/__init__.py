"""`affectflow calibrate`: fit the threshold method's threshold and fallback on labelled videos.

    affectflow calibrate --output RUN_DIR --manifest labels.csv [--folds 5] [--thresholds 0.05:1.0:0.05]

Inputs: a run's frame Parquet (no video is decoded) and a manifest (CSV or Parquet) with
``label``, ``video_id`` or ``path``, and optionally ``subject_id``. Steps:

1. Count table: frames per (video, label) of the primary face, grouped by DuckDB (or a
   batched pyarrow scan for non-local paths), so frame rows never sit in memory; the long
   result is pivoted to ``int64[videos, labels]``.
2. Per label setting -- *specific* (the model's labels) and *broad* (through ``broad_map``)
   -- the manifest's labels are mapped onto the setting's vocabulary; videos whose label is
   not in it, and videos without a face frame, are left out and reported.
3. Folds: scikit-learn's StratifiedGroupKFold, grouped by subject when the manifest has
   subject ids (no person in a training and a test fold), StratifiedKFold otherwise.
4. Sweep: ``apply_methods`` over the whole count matrix for every (fallback, threshold);
   each gives one confusion matrix per fold, so every metric of every cell is a reduction
   of an ``int64[fallbacks, thresholds, folds, K, K]`` array.
5. Cross-validation: for each fold, the (fallback, threshold) with the best training-fold
   score is scored on the held-out fold. The paper's figure -- for each threshold, the mean
   over the test folds, then the best threshold -- is reported beside it: it picks the
   threshold after seeing the test folds, so it is optimistic.
6. The threshold and fallback fitted on all labelled videos are written as a config
   fragment (``threshold.yaml``) that ``affectflow run`` and ``affectflow aggregate`` take
   with ``--config``; the report (HTML with embedded figures), JSON with every number and
   the per-video predictions go beside it.

Ties in the selection go to the first candidate in (fallback, threshold) order: the
``neutral`` fallback before ``top1``, then the smallest threshold.
"""
