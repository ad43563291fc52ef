"""`affectflow ingest {openface,pyfeat} INPUT --output OUT`: other tools' CSVs -> affectflow's tables.

Labs that already ran OpenFace 2.0 (FeatureExtraction / FaceLandmarkVidMulti) or py-feat over
their videos have one CSV per video. This maps each CSV to the frame rows, video row and dead
letters `affectflow run` would have written, in the same layout (``frames/``, ``videos/``,
``dead_letters/``, Parquet, Hive-partitioned by video_id, committed from a staging folder
by the run skeleton, pipelines.runs) plus ``run_manifest.json``, so ``affectflow aggregate``,
``validate`` and ``calibrate`` work on the result unchanged.

INPUT: a folder (every ``.csv`` below it), a quoted glob, one tool CSV, or a manifest
(``.csv``/``.parquet`` with a ``path`` column; a ``.csv`` is a manifest when its header has
``path``) with optional ``video_id``, ``label``, ``subject_id`` (as `affectflow run`'s, read by
pipelines.inputs.read_manifest, any other column carried to the video table) and three
ingest columns that are not carried: ``frame_width``, ``frame_height`` (pixels) and ``fps``.
Video ids follow pipelines.inputs: the manifest's, else the file stem plus 8 hex digits of
the SHA-1 of the path relative to the glob's fixed prefix (so ``clip.csv`` and ``clip.mp4`` get
different ids: give ``video_id`` in a manifest to line an ingest up with a video run).

Mapping, per CSV row (one row per frame and tracked face):

* OpenFace: header names are stripped of the spaces OpenFace writes after each comma;
  ``frame`` is 1-based, ``frame_index = frame - 1``; ``timestamp`` -> ``timestamp_s``;
  ``face_found`` = ``success == 1``; ``detector_score`` = ``confidence`` (the tracker's, the
  only face score OpenFace writes); box = the bounding box of the 2D landmarks ``x_0..x_67``,
  ``y_0..y_67`` clipped to the frame, null when the CSV has no 2D landmarks (validation then
  does not require a box: schemas.external.face_rule_exemptions); ``face_id`` -> ``of_face_id``.
  OpenFace writes no emotion: ``prob_*`` come from **emfacs_rules**, a rule over the AU
  intensities (models.emfacs), not a trained model.
* py-feat (a ``Fex.to_csv`` of ``Detector.detect_video``): ``frame`` is 0-based and is
  ``frame_index``; ``timestamp_s = frame / fps`` (py-feat's ``approx_time`` is MM:SS text, too
  coarse); a face = FaceRectX/Y/Width/Height and FaceScore all present (py-feat writes one
  all-NaN row for a frame without a face); box = FaceRect clipped to the frame,
  ``detector_score`` = FaceScore; ``prob_*`` = its emotion columns renamed to the FER labels
  (anger->angry, happiness->happy, sadness->sad) and renormalised to sum 1.

Several faces in a frame: every tracked face is a row; ``face_index`` ranks them within the
frame -- OpenFace by face_id (face_id 0 is the primary face whenever it is tracked), py-feat
by box area (largest first, as `affectflow run`). A frame where no face was tracked is one row
with face_found false and null face columns. frame_width/frame_height: ``--frame-size WxH``, or
the manifest's columns (which win); neither is known from a CSV, so one of them is required.
fps: ``--fps`` or the manifest's ``fps``; without it the OpenFace timestamps give it (median
frame interval); py-feat requires it.

A CSV that cannot be read or parsed, lacks a required column or has inconsistent rows (repeated
face, timestamps not increasing) gets a dead letter (stage ``ingest``) and a failed video row;
the other files go on. Reruns skip a CSV whose bytes and settings are unchanged (``--force``
ingests everything), as `affectflow run` does.

Plain Python rather than a Beam graph: each CSV is one independent, already-computed table
(no decoding, no model), so the work is parse + write, I/O-bound and small per file; ``--workers``
spreads files over processes for folders of thousands of CSVs.
"""
