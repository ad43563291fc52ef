"""Optional frame-table column groups (landmarks, geometry, deep features, series, ingested tools).

A group's columns follow the core frame columns when it is on, in FEATURE_GROUPS order.
landmarks..resnet50 come from a video run (``features.*`` in the config); openface and pyfeat
from ``affectflow ingest``; baseline and smoothing (computed per video) from
``features.geometry_baseline`` and ``features.smoothing``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import pyarrow as pa

from schemas.columns import Column, baseline_column, prob_column, smooth_column
from schemas.external import appearance_columns, external_columns

FEATURE_GROUPS = ("landmarks", "geometry", "blendshapes", "embedding", "resnet50", "openface", "pyfeat", "baseline",
                  "smoothing")
FEATURE_SETS = ("none", "appearance", "deep", "both", "landmarks")
TRAINING_FEATURE_SETS = FEATURE_SETS[1:]
N_LANDMARK_VALUES = 468 * 3           # MediaPipe's face mesh
N_LANDMARKER_VALUES = 478 * 3         # the face landmarker's mesh (with features.blendshapes): iris points added
RESNET50_VALUES = 2048            # ResNet50's globally pooled features
EMBEDDING_COLUMN = "emb_mini_xception"
RESNET50_COLUMN = "resnet50"

# The geo_* measures: name -> what it measures on MediaPipe's canonical face mesh (indices in
# brackets). The formulas are models.geometry's, one per name here; these names and texts are
# the columns and their documentation.
GEOMETRY_MEASURES: dict[str, str] = {
    "geo_au01_inner_brow_raise": "height of the inner brow ends (107, 336) above the inner eye corners (133, 362)",
    "geo_au02_outer_brow_raise": "height of the outer brow ends (70, 300) above the outer eye corners (33, 263)",
    "geo_au01_02_brow_raise": "mean brow height (5 points a side) above the upper eyelid (159, 386)",
    "geo_au04_brow_lower": "minus the gap between the inner brow ends (107, 336): brows drawn together and down",
    "geo_au05_upper_lid_raise": "upper lid (159, 386) height above the line through the eye corners",
    "geo_au06_07_lower_lid_raise": "minus the lower lid's (145, 374) drop below the eye-corner line: cheek raise and "
                                   "lid tightening push it up",
    "geo_au09_nose_wrinkle": "minus the distance from the nose root (168) down to the alae (98, 327): the wrinkler "
                             "pulls them up",
    "geo_au12_lip_corner_pull": "mouth corners (61, 291) height above the lips' centre (13, 14); negative = corners "
                                "depressed (AU15)",
    "geo_au15_lip_corner_depress": "mouth corners' drop below the lips' centre: the negative of "
                                   "geo_au12_lip_corner_pull",
    "geo_au20_lip_stretch": "mouth width, corner to corner (61, 291)",
    "geo_au23_24_lip_press": "minus the visible lip thickness (upper 0-13 plus lower 14-17): pressed lips thin out",
    "geo_au25_lips_part": "gap between the inner lips (13, 14)",
    "geo_au26_jaw_drop": "nose tip (1) to chin (152)",
    "geo_au43_45_eye_closure": "minus the eye aspect ratio (lid gap 159-145, 386-374 over eye width), averaged over "
                               "both eyes: blinks and closed eyes score high",
    "geo_head_yaw": "depth difference of the outer eye corners (z of 263 minus z of 33): 0 when facing the camera",
}


# MediaPipe's 52 blendshapes, in the face_blendshapes network's output order (face_blendshapes_graph.cc,
# kBlendshapeNames); ARKit's names, "_neutral" added by MediaPipe.
BLENDSHAPE_NAMES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff",
    "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight",
    "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight",
    "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen", "jawRight",
    "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight", "mouthFunnel",
    "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker",
    "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
    "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight")
# Blendshapes the network leaves near 0 on every face measured (smiles, disgust, puffed cheeks included).
NEAR_ZERO_BLENDSHAPES = ("_neutral", "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "jawForward", "jawLeft",
                         "jawRight", "mouthClose", "noseSneerLeft", "noseSneerRight")


@dataclass(frozen=True)
class ActionUnit:
    """One FACS action unit of the AU view: the mean of its blendshapes' scores."""
    code: int
    name: str
    blendshapes: tuple[str, ...]


# The published blendshape -> FACS correspondence: py-feat 2.1.5's feat/utils/region_maps.py
# (BLENDSHAPE_SEEDS, grounded in Ekman & Friesen's FACS and M. Ozel's ARKit-to-FACS sheet), with
# left and right averaged. Left out: AU6 (cheekSquint) and AU9 (noseSneer), which the network
# leaves near 0, and AD34 (cheekPuff), likewise. FACS AUs with no blendshape at all: 8, 11, 13,
# 19, 21, 23, 25, 27, 31, 33, 35, 38, 39, 41, 42, 44.
ACTION_UNITS = (
    ActionUnit(1, "inner_brow_raiser", ("browInnerUp",)),
    ActionUnit(2, "outer_brow_raiser", ("browOuterUpLeft", "browOuterUpRight")),
    ActionUnit(4, "brow_lowerer", ("browDownLeft", "browDownRight")),
    ActionUnit(5, "upper_lid_raiser", ("eyeWideLeft", "eyeWideRight")),
    ActionUnit(7, "lid_tightener", ("eyeSquintLeft", "eyeSquintRight")),
    ActionUnit(10, "upper_lip_raiser", ("mouthUpperUpLeft", "mouthUpperUpRight")),
    ActionUnit(12, "lip_corner_puller", ("mouthSmileLeft", "mouthSmileRight")),
    ActionUnit(14, "dimpler", ("mouthDimpleLeft", "mouthDimpleRight")),
    ActionUnit(15, "lip_corner_depressor", ("mouthFrownLeft", "mouthFrownRight")),
    ActionUnit(16, "lower_lip_depressor", ("mouthLowerDownLeft", "mouthLowerDownRight")),
    ActionUnit(17, "chin_raiser", ("mouthShrugLower",)),
    ActionUnit(18, "lip_pucker", ("mouthPucker",)),
    ActionUnit(20, "lip_stretcher", ("mouthStretchLeft", "mouthStretchRight")),
    ActionUnit(22, "lip_funneler", ("mouthFunnel",)),
    ActionUnit(24, "lip_presser", ("mouthPressLeft", "mouthPressRight")),
    ActionUnit(26, "jaw_drop", ("jawOpen",)),
    ActionUnit(45, "blink", ("eyeBlinkLeft", "eyeBlinkRight")),
)


def blendshape_column(name: str) -> str:
    """``browDownLeft`` -> ``bs_brow_down_left`` (``_neutral`` -> ``bs_neutral``)."""
    return "bs_" + re.sub(r"(?<!^)([A-Z])", r"_\1", name.lstrip("_")).lower()


def action_unit_column(au: ActionUnit) -> str:
    """``au12_lip_corner_puller``."""
    return f"au{au.code:02d}_{au.name}"


def landmark_values(groups: Sequence[str]) -> int:
    """Values in a landmarks vector: 478 points from the face landmarker when blendshapes are on, else 468."""
    return N_LANDMARKER_VALUES if "blendshapes" in groups else N_LANDMARK_VALUES


def _blendshape_columns() -> list[Column]:
    cols = [Column(blendshape_column(name), pa.float32(), True,
                   f"MediaPipe blendshape {name}, 0-1, from the face landmarker's 478 points"
                   + (" (the network leaves it near 0 on every face)" if name in NEAR_ZERO_BLENDSHAPES else "") + ".")
            for name in BLENDSHAPE_NAMES]
    cols += [Column(action_unit_column(au), pa.float32(), True,
                    f"FACS AU{au.code} ({au.name.replace('_', ' ')}), 0-1: mean of the blendshapes "
                    f"{', '.join(au.blendshapes)} (a published correspondence, not a trained AU intensity).")
             for au in ACTION_UNITS]
    return cols


def _landmark_columns() -> list[Column]:
    # A variable-size list (always 1404 or 1434 values, or null): pyarrow 25 cannot read back a Parquet
    # fixed_size_list column that holds nulls ("Expected all lists to be of size=...").
    points = pa.list_(pa.float32())
    return [
        Column("landmarks", points, True, "468 face-mesh points x0, y0, z0, x1, ... in frame pixels (z: depth on the "
                                          "same scale, smaller = nearer); 478 with features.blendshapes (the face "
                                          "landmarker's mesh: points 468-477 are the irises)."),
        Column("landmarks_norm", points, True, "The same points centred, eye line level, scaled so the outer eye "
                                               "corners are 1.0 apart."),
        Column("mesh_presence", pa.float32(), True, "Face-mesh network's probability that the crop holds a face."),
    ]


def _deep_columns(groups: Sequence[str]) -> list[Column]:
    cols = []
    if "embedding" in groups:
        cols.append(Column(EMBEDDING_COLUMN, pa.list_(pa.float32()), True,
                           "Emotion network's embedding, from the same forward pass as the probabilities: global "
                           "average of the feature map that feeds its classifier conv (fer_mini_xception: 128 signed "
                           "values, the 4x4x128 map before Conv2D(7, 3x3) -> average pool -> softmax)."))
    if "resnet50" in groups:
        cols.append(Column(RESNET50_COLUMN, pa.list_(pa.float32()), True,
                           "ResNet50 (Keras architecture, your weights) 2048 globally average-pooled features (after "
                           "ReLU, >= 0) of the 224x224 RGB face crop (same square box as the emotion crop)."))
    return cols


def feature_columns(groups: Sequence[str], labels: Sequence[str] = ()) -> list[Column]:
    """Optional frame-table columns, one block per group switched on, in FEATURE_GROUPS order.

    ``labels`` (the emotion model's) name the smoothing group's columns. Raises ValueError for
    an unknown group.
    """
    unknown = set(groups) - set(FEATURE_GROUPS)
    if unknown:
        raise ValueError(f"unknown feature groups {sorted(unknown)}; known: {FEATURE_GROUPS}")
    cols = _landmark_columns() if "landmarks" in groups else []
    if "geometry" in groups:
        cols += [Column(name, pa.float32(), True, f"Geometric measure, not a trained AU detector: {doc}.")
                 for name, doc in GEOMETRY_MEASURES.items()]
    if "blendshapes" in groups:
        cols += _blendshape_columns()
    cols += _deep_columns(groups)
    cols += external_columns(groups)
    if "baseline" in groups:
        cols += [Column(baseline_column(name), pa.float32(), True,
                        f"{name} minus its median over the video's neutral-labelled primary-face frames "
                        "(null: another face, or too few neutral frames for a baseline).")
                 for name in GEOMETRY_MEASURES]
    if "smoothing" in groups:
        cols += [Column(smooth_column(l), pa.float32(), True,
                        f"{prob_column(l)} smoothed over adjacent frames of the video (features.smoothing; null "
                        "without a face).") for l in labels]
    return cols


def feature_set_columns(feature_set: str, groups: Sequence[str]) -> list[str]:
    """The frame-table columns of a training feature set, in the documented concatenation order.

    appearance: the blendshapes' AU view (au_*) and the geo_* measures (schema order), whichever
    the run wrote, or a tool's AU intensities when the table was ingested from OpenFace / py-feat; deep: the embedding, then ResNet50 (each a list
    column, expanded in place); both: appearance, then deep. Raises ValueError when the
    groups the set needs were not written.
    """
    appearance: list[str] = []
    if "blendshapes" in groups:
        appearance += [action_unit_column(au) for au in ACTION_UNITS]
    if "geometry" in groups:
        appearance += list(GEOMETRY_MEASURES)
    if not appearance and ("openface" in groups or "pyfeat" in groups):
        appearance = appearance_columns(groups)
    deep = [name for group, name in (("embedding", EMBEDDING_COLUMN), ("resnet50", RESNET50_COLUMN)) if group in groups]
    landmarks = ["landmarks_norm"] if "landmarks" in groups else []
    wanted = {"appearance": (appearance,), "deep": (deep,), "both": (appearance, deep),
              "landmarks": (landmarks,)}.get(feature_set)
    if wanted is None:
        raise ValueError(f"feature set must be one of {', '.join(TRAINING_FEATURE_SETS)}, got {feature_set!r}")
    if not all(wanted):
        raise ValueError(f"feature set {feature_set!r} needs "
                         + {"appearance": "the blendshapes or geometry group (or an OpenFace / py-feat ingest)",
                            "deep": "the embedding or resnet50 group",
                            "both": "appearance and deep groups",
                            "landmarks": "the landmarks group"}[feature_set] + f"; the table has {list(groups)}")
    return [name for part in wanted for name in part]
