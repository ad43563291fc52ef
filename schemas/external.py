"""Frame-table columns of tables ingested from other tools' output (`affectflow ingest`).

Two feature groups (schemas.features.FEATURE_GROUPS), each the tool's own per-face columns,
renamed to lowercase snake_case; the tool's face box and detector score go to the core
``box_*`` / ``detector_score`` columns, its frame number and time to ``frame_index`` /
``timestamp_s`` (pipelines.ingest says how).

* ``openface``: OpenFace 2.0 FeatureExtraction / FaceLandmarkVidMulti CSV columns
  (wiki "Output Format"): AU intensities ``AU01_r``.. -> ``au01_r``.. (17 AUs, 0-5),
  AU presences ``AU01_c``.. -> ``au01_c``.. (18 AUs, AU28 has no intensity), stored as
  **bool** (OpenFace writes 0/1; a flag, not a quantity), ``confidence`` / ``success`` ->
  ``of_confidence`` / ``of_success``, ``face_id`` -> ``of_face_id``, head pose ``pose_T*``
  (mm) / ``pose_R*`` (rad) -> ``pose_t*`` / ``pose_r*``, gaze vectors and angles unchanged.
* ``pyfeat``: py-feat ``Fex`` CSV columns (``Detector.detect_video(...).to_csv``, py-feat
  0.6 and later): AU columns ``AU01``.. -> ``pyfeat_au01``.. (the 20 AUs of its default
  ``xgb`` AU model), emotion columns ``anger``.. -> ``pyfeat_anger``.. (its 7 emotions,
  as py-feat wrote them), head pose ``Pitch Roll Yaw`` -> ``pyfeat_pitch`` ...

Every column is nullable: null on a row without a face (schemas.frames' face rule), and
null where the tool was not asked for that output (OpenFace ``-aus`` / ``-pose`` / ``-gaze``
switches). Two columns break the face rule on purpose: ``of_confidence`` and ``of_success``
describe OpenFace's tracking attempt in every frame, the failed ones included
(`face_rule_exemptions`), so a failed frame keeps OpenFace's own confidence.
"""
from __future__ import annotations

from typing import Sequence

import pyarrow as pa

from schemas.columns import Column

OPENFACE = "openface"
PYFEAT = "pyfeat"
EXTERNAL_GROUPS = (OPENFACE, PYFEAT)

# OpenFace 2.0: AUs with an intensity regressor (_r) and with a presence classifier (_c).
OPENFACE_INTENSITY_AUS = ("01", "02", "04", "05", "06", "07", "09", "10", "12", "14", "15", "17", "20", "23",
                          "25", "26", "45")
OPENFACE_PRESENCE_AUS = tuple(sorted(OPENFACE_INTENSITY_AUS + ("28",)))
# py-feat's default AU model (xgb, py-feat >= 0.6) and its emotion columns (feat.utils.FEAT_EMOTION_COLUMNS).
PYFEAT_AUS = ("01", "02", "04", "05", "06", "07", "09", "10", "11", "12", "14", "15", "17", "20", "23", "24",
              "25", "26", "28", "43")
PYFEAT_EMOTIONS = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
PYFEAT_POSE = ("Pitch", "Roll", "Yaw")

_F32 = pa.float32()


def openface_column(tool_name: str) -> str:
    """Frame-table name of an OpenFace CSV column (header already stripped of its spaces)."""
    if tool_name in ("confidence", "success", "face_id"):
        return "of_" + tool_name
    return tool_name.lower()


def pyfeat_column(tool_name: str) -> str:
    """Frame-table name of a py-feat AU, emotion or pose column."""
    return "pyfeat_" + tool_name.lower()


def _openface_columns() -> list[Column]:
    tool = "OpenFace 2.0"
    cols = [
        Column("of_face_id", pa.int32(), True, f"{tool} face_id: its face track (always 0 in FeatureExtraction)."),
        Column("of_confidence", _F32, True, f"{tool} tracking confidence in [0, 1], set on every row (also when "
                                            "tracking failed, for the attempt with the lowest face_id)."),
        Column("of_success", pa.bool_(), True, f"{tool} success flag, set on every row: false = tracking failed "
                                               "(then face_found is false and the face columns are null)."),
    ]
    cols += [Column(f"au{au}_r", _F32, True, f"{tool} AU{au} intensity, 0 (absent) to 5 (maximum); AU{au}_r in its CSV.")
             for au in OPENFACE_INTENSITY_AUS]
    cols += [Column(f"au{au}_c", pa.bool_(), True, f"{tool} AU{au} presence (its classifier's 0/1 as bool); AU{au}_c in its CSV.")
             for au in OPENFACE_PRESENCE_AUS]
    cols += [Column("pose_tx", _F32, True, f"{tool} head position x relative to the camera, mm."),
             Column("pose_ty", _F32, True, f"{tool} head position y relative to the camera, mm."),
             Column("pose_tz", _F32, True, f"{tool} head position z (distance from the camera), mm."),
             Column("pose_rx", _F32, True, f"{tool} head rotation about x (pitch), radians."),
             Column("pose_ry", _F32, True, f"{tool} head rotation about y (yaw), radians."),
             Column("pose_rz", _F32, True, f"{tool} head rotation about z (roll), radians.")]
    for eye, which in (("0", "left-most eye in the image"), ("1", "right-most eye in the image")):
        cols += [Column(f"gaze_{eye}_{axis}", _F32, True,
                        f"{tool} gaze direction of eye {eye} ({which}): unit vector {axis} component, camera coordinates.")
                 for axis in "xyz"]
    cols += [Column("gaze_angle_x", _F32, True, f"{tool} gaze angle left-right averaged over both eyes, radians."),
             Column("gaze_angle_y", _F32, True, f"{tool} gaze angle up-down averaged over both eyes, radians.")]
    return cols


def _pyfeat_columns() -> list[Column]:
    tool = "py-feat"
    cols = [Column(pyfeat_column(f"AU{au}"), _F32, True,
                   f"{tool} AU{au} as its AU model wrote it: probability 0-1 (xgb), 0/1 (svm); AU{au} in its CSV.")
            for au in PYFEAT_AUS]
    cols += [Column(pyfeat_column(e), _F32, True,
                    f"{tool} emotion model's '{e}' score as written (0-1); prob_* holds them renormalised to sum 1.")
             for e in PYFEAT_EMOTIONS]
    cols += [Column(pyfeat_column(p), _F32, True, f"{tool} head pose {p}, degrees, as its face-pose model wrote it.")
             for p in PYFEAT_POSE]
    return cols


def external_columns(groups: Sequence[str]) -> list[Column]:
    """The columns of the openface and/or pyfeat groups in ``groups`` (that order); [] for neither."""
    cols = []
    if OPENFACE in groups:
        cols += _openface_columns()
    if PYFEAT in groups:
        cols += _pyfeat_columns()
    return cols


def appearance_columns(groups: Sequence[str]) -> list[str]:
    """The "appearance" feature set of an ingested table: the tool's AU intensities in AU order.

    openface: ``au01_r`` .. ``au45_r`` (17); pyfeat: ``pyfeat_au01`` .. ``pyfeat_au43`` (20);
    both groups: OpenFace's, then py-feat's. Presence flags are left out (they repeat the
    intensities as 0/1).
    """
    names = []
    if OPENFACE in groups:
        names += [f"au{au}_r" for au in OPENFACE_INTENSITY_AUS]
    if PYFEAT in groups:
        names += [pyfeat_column(f"AU{au}") for au in PYFEAT_AUS]
    return names


def face_rule_exemptions(groups: Sequence[str]) -> tuple[frozenset[str], frozenset[str]]:
    """(per-frame columns, unpromised face columns) for the validation suite's face rules.

    * per-frame: set on rows without a face too, so exempt from "null when face_found is
      false": of_confidence, of_success (OpenFace reports them for failed frames).
    * unpromised: core face columns that may be null although face_found is true, exempt
      from "not null when face_found is true": the box (box_x, box_y, box_w, box_h) of an
      OpenFace ingest, known only when the CSV has the 2D landmarks x_0..x_67, y_0..y_67
      (FeatureExtraction -2Dfp); without them there is no box to report.
    """
    if OPENFACE not in groups:
        return frozenset(), frozenset()
    return frozenset({"of_confidence", "of_success"}), frozenset({"box_x", "box_y", "box_w", "box_h"})
