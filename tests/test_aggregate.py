"""Top-1 and threshold aggregation of frame labels into a video label (Yang, Lee & Park).

Every count table below is literal; the label order is FER2013's:
    angry, disgust, fear, happy, sad, surprise, neutral
"""
from __future__ import annotations

import numpy as np
import pytest

from models.registry import FER2013_LABELS
from schemas.videos import video_columns
from models.aggregation import AggregationSettings, apply_methods, video_labels

LABELS = FER2013_LABELS
BROAD = ("negative", "positive", "neutral")


def one(counts, threshold=0.2, fallback="neutral", labels=LABELS, neutral="neutral"):
    """apply_methods on one video, returned as plain Python values."""
    r = apply_methods(np.array([counts]), labels, neutral, threshold, fallback)
    return {"top1": r.top1[0], "candidate": r.candidate[0], "n_m": int(r.candidate_count[0]),
            "threshold": r.threshold[0], "n_total": int(r.n_total[0])}


def test_label_order_is_fer2013():
    """The literal tables in this file assume this label order."""
    assert LABELS == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def test_threshold_picks_emotion_buried_in_neutral():
    """Top-1 says neutral; threshold picks happy because 3 >= 0.2 * 10."""
    #                angry disg fear happy sad surp neutral
    assert one([0, 0, 0, 3, 0, 0, 7]) == {
        "top1": "neutral", "candidate": "happy", "n_m": 3, "threshold": "happy", "n_total": 10}


def test_threshold_below_falls_back_to_neutral():
    """1 < 0.2 * 10: the threshold method falls back to neutral."""
    assert one([0, 0, 0, 1, 0, 0, 9]) == {
        "top1": "neutral", "candidate": "happy", "n_m": 1, "threshold": "neutral", "n_total": 10}


def test_top1_tie_goes_to_earlier_label():
    """happy and sad both 4: happy comes first in the label order."""
    assert one([0, 0, 0, 4, 4, 0, 2])["top1"] == "happy"
    assert one([0, 0, 0, 4, 4, 0, 0])["top1"] == "happy"
    # surprise vs angry: angry (index 0) wins
    assert one([3, 0, 0, 0, 0, 3, 0])["top1"] == "angry"


def test_top1_tie_with_neutral_goes_to_earlier_label():
    """happy 5 vs neutral 5: happy precedes neutral in FER2013 order."""
    assert one([0, 0, 0, 5, 0, 0, 5])["top1"] == "happy"


def test_top1_tie_with_neutral_first_in_label_order():
    """With a label order that puts neutral first, a tie with neutral goes to neutral."""
    labels = ("neutral", "happy", "sad")
    r = one([5, 5, 0], labels=labels, threshold=0.5)
    assert r == {"top1": "neutral", "candidate": "happy", "n_m": 5, "threshold": "happy", "n_total": 10}


def test_threshold_candidate_tie_goes_to_earlier_label():
    """angry and surprise both 2 of 10: the candidate m is angry; 2 >= 0.2*10 so the video is angry."""
    assert one([2, 0, 0, 0, 0, 2, 6]) == {
        "top1": "neutral", "candidate": "angry", "n_m": 2, "threshold": "angry", "n_total": 10}
    # fear and sad tie at 3: fear (index 2) before sad (index 4)
    assert one([0, 0, 3, 0, 3, 0, 4])["candidate"] == "fear"


def test_all_neutral_video_falls_back():
    """No non-neutral frame: n_m is 0, never >= threshold * n_total; both fallbacks give neutral,
    and there is no candidate m."""
    for fallback in ("neutral", "top1"):
        assert one([0, 0, 0, 0, 0, 0, 12], fallback=fallback) == {
            "top1": "neutral", "candidate": None, "n_m": 0, "threshold": "neutral", "n_total": 12}


def test_no_faces_gives_no_labels():
    """n_total 0: every label is None and the candidate count is 0."""
    for fallback in ("neutral", "top1"):
        assert one([0] * 7, fallback=fallback) == {
            "top1": None, "candidate": None, "n_m": 0, "threshold": None, "n_total": 0}


def test_threshold_005():
    """0.05: one fear frame in 20 is enough (1 >= 1.0); one in 21 is not (1 < 1.05)."""
    assert one([0, 0, 1, 0, 0, 0, 19], threshold=0.05)["threshold"] == "fear"
    assert one([0, 0, 1, 0, 0, 0, 20], threshold=0.05)["threshold"] == "neutral"


def test_threshold_one():
    """1.0: the video is m only when every classified frame is m."""
    assert one([0, 0, 0, 6, 0, 0, 0], threshold=1.0)["threshold"] == "happy"
    assert one([0, 0, 0, 6, 0, 0, 1], threshold=1.0)["threshold"] == "neutral"
    assert one([0, 0, 0, 6, 1, 0, 0], threshold=1.0)["threshold"] == "neutral"


def test_fallbacks_differ():
    """angry 4 of 10 < 0.5 * 10: fallback neutral -> neutral, fallback top1 -> angry (the Top-1 label)."""
    counts = [4, 0, 0, 3, 0, 0, 3]
    assert one(counts, threshold=0.5, fallback="neutral") == {
        "top1": "angry", "candidate": "angry", "n_m": 4, "threshold": "neutral", "n_total": 10}
    assert one(counts, threshold=0.5, fallback="top1") == {
        "top1": "angry", "candidate": "angry", "n_m": 4, "threshold": "angry", "n_total": 10}


def test_fallback_top1_when_top1_is_neutral():
    """Fallback top1 on a neutral-dominated video is neutral, same as fallback neutral."""
    counts = [0, 0, 0, 1, 0, 0, 9]
    assert one(counts, fallback="top1")["threshold"] == "neutral"
    assert one(counts, fallback="neutral")["threshold"] == "neutral"


def test_exact_boundary_015_of_20():
    """n_m == threshold * n_total counts as passing: 3 sad frames of 20 at threshold 0.15."""
    assert one([0, 0, 0, 0, 3, 0, 17], threshold=0.15)["threshold"] == "sad"
    assert one([0, 0, 0, 0, 2, 0, 18], threshold=0.15)["threshold"] == "neutral"


def test_exact_boundary_with_grid_rounding():
    """A grid threshold 3 * 0.05 = 0.15000000000000002 gives 0.15... * 20 = 3.0000000000000004;
    n_m = 3 must still pass (the rule is exact, not subject to float rounding)."""
    threshold = 3 * 0.05
    assert threshold * 20 > 3            # the float product really rounds up
    assert one([0, 0, 0, 0, 3, 0, 17], threshold=threshold)["threshold"] == "sad"
    grid = np.arange(0.05, 1.0001, 0.05)   # how a calibration sweep builds its thresholds
    assert one([0, 0, 0, 0, 3, 0, 17], threshold=grid[2])["threshold"] == "sad"
    assert one([0, 0, 0, 7, 0, 0, 3], threshold=0.7000000000000001)["threshold"] == "happy"
    assert one([0, 0, 0, 6, 0, 0, 4], threshold=0.7000000000000001)["threshold"] == "neutral"


def test_video_labels_full_row_with_broad_setting():
    """Negative frames split over angry/fear/disgust/sad: the specific threshold falls back to neutral
    (m = angry, 2 < 3) while the broad setting sums them into negative 6 >= 0.3 * 10."""
    settings = AggregationSettings(labels=LABELS, threshold=0.3)
    #                          angry disg fear happy sad surp neutral
    row = video_labels([2, 1, 2, 0, 1, 0, 4], settings)
    assert settings.broad_labels == BROAD
    assert row == {
        "count_angry": 2, "count_disgust": 1, "count_fear": 2, "count_happy": 0, "count_sad": 1,
        "count_surprise": 0, "count_neutral": 4,
        "frac_angry": 0.2, "frac_disgust": 0.1, "frac_fear": 0.2, "frac_happy": 0.0, "frac_sad": 0.1,
        "frac_surprise": 0.0, "frac_neutral": 0.4,
        "count_broad_negative": 6, "count_broad_positive": 0, "count_broad_neutral": 4,
        "top1_label": "neutral",
        "threshold": 0.3,
        "fallback": "neutral",
        "threshold_denominator": 10,
        "threshold_candidate": "angry",
        "threshold_candidate_count": 2,
        "threshold_label": "neutral",
        "broad_top1_label": "negative",
        "broad_threshold_label": "negative",
    }


def test_video_labels_columns_are_video_table_columns():
    """Every key video_labels returns is a column of the video table for the same label sets."""
    settings = AggregationSettings(labels=LABELS)
    row = video_labels([1, 0, 0, 2, 0, 0, 3], settings)
    names = {c.name for c in video_columns(settings.labels, settings.broad_labels)}
    assert set(row) <= names
    assert {"count_broad_negative", "count_broad_positive", "count_broad_neutral"} <= set(row)


def test_broad_positive_video():
    """happy 2 + surprise 2 = positive 4: broad Top-1 positive although specific Top-1 is neutral."""
    settings = AggregationSettings(labels=LABELS, threshold=0.2)
    row = video_labels([1, 1, 1, 2, 0, 2, 3], settings)
    assert (row["count_broad_negative"], row["count_broad_positive"], row["count_broad_neutral"]) == (3, 4, 3)
    assert row["top1_label"] == "neutral"                 # neutral 3 beats happy 2 / surprise 2
    assert row["threshold_candidate"] == "happy"          # happy/surprise tie -> happy
    assert row["threshold_label"] == "happy"              # 2 >= 0.2 * 10
    assert row["broad_top1_label"] == "positive"
    assert row["broad_threshold_label"] == "positive"


def test_broad_tie_goes_to_earlier_broad_label():
    """Broad labels are ordered by first appearance (negative before positive): a 3-3 tie is negative."""
    settings = AggregationSettings(labels=LABELS, threshold=0.5)
    row = video_labels([0, 0, 3, 3, 0, 0, 0], settings)
    assert row["broad_top1_label"] == "negative"
    assert row["broad_threshold_label"] == "negative"      # 3 >= 0.5 * 6


def test_video_labels_fractions():
    """frac_* = count / frames with a face, and sum to 1."""
    settings = AggregationSettings(labels=LABELS)
    row = video_labels([1, 0, 3, 0, 0, 4, 12], settings)
    assert [row[f"frac_{l}"] for l in LABELS] == [0.05, 0.0, 0.15, 0.0, 0.0, 0.2, 0.6]
    assert sum(row[f"frac_{l}"] for l in LABELS) == pytest.approx(1.0)


def test_video_labels_no_faces():
    """n_total 0: counts 0, fractions None, every label and the candidate count None."""
    settings = AggregationSettings(labels=LABELS, fallback="top1")
    row = video_labels([0] * 7, settings)
    assert all(row[f"count_{l}"] == 0 for l in LABELS)
    assert all(row[f"frac_{l}"] is None for l in LABELS)
    assert (row["count_broad_negative"], row["count_broad_positive"], row["count_broad_neutral"]) == (0, 0, 0)
    assert row["threshold_denominator"] == 0
    assert row["fallback"] == "top1"
    for key in ("top1_label", "threshold_candidate", "threshold_candidate_count", "threshold_label",
                "broad_top1_label", "broad_threshold_label"):
        assert row[key] is None, key


def test_video_labels_value_types():
    """Counts are Python ints and labels Python strs (the row goes straight to a Parquet writer)."""
    row = video_labels([0, 0, 0, 3, 0, 0, 7], AggregationSettings(labels=LABELS))
    assert type(row["count_happy"]) is int and type(row["count_broad_positive"]) is int
    assert type(row["threshold_denominator"]) is int and type(row["threshold_candidate_count"]) is int
    assert type(row["top1_label"]) is str and type(row["threshold_label"]) is str
    assert type(row["threshold"]) is float


MATRIX = np.array([
    # angry disg fear happy sad surp neutral
    [0, 0, 0, 3, 0, 0, 7],
    [0, 0, 0, 1, 0, 0, 9],
    [0, 0, 0, 4, 4, 0, 2],
    [2, 0, 0, 0, 0, 2, 6],
    [0, 0, 0, 0, 0, 0, 12],
    [0, 0, 0, 0, 0, 0, 0],
    [4, 0, 0, 3, 0, 0, 3],
    [0, 0, 0, 0, 3, 0, 17],
    [0, 0, 1, 0, 0, 0, 19],
    [5, 5, 5, 5, 5, 5, 5],
])


@pytest.mark.parametrize("fallback", ["neutral", "top1"])
@pytest.mark.parametrize("threshold", [0.05, 0.15, 0.2, 0.5, 1.0])
def test_apply_methods_vectorised_equals_row_by_row(threshold, fallback):
    """One call on a [videos, labels] matrix gives exactly the per-row results."""
    whole = apply_methods(MATRIX, LABELS, "neutral", threshold, fallback)
    for i, counts in enumerate(MATRIX):
        assert one(counts, threshold, fallback) == {
            "top1": whole.top1[i], "candidate": whole.candidate[i], "n_m": int(whole.candidate_count[i]),
            "threshold": whole.threshold[i], "n_total": int(whole.n_total[i])}, i


def test_apply_methods_matrix_literal_results():
    """The matrix at threshold 0.2, fallback neutral, spelled out."""
    r = apply_methods(MATRIX, LABELS, "neutral", 0.2, "neutral")
    assert list(r.top1) == ["neutral", "neutral", "happy", "neutral", "neutral", None, "angry", "neutral",
                            "neutral", "angry"]
    assert list(r.candidate) == ["happy", "happy", "happy", "angry", None, None, "angry", "sad", "fear", "angry"]
    assert list(r.candidate_count) == [3, 1, 4, 2, 0, 0, 4, 3, 1, 5]
    assert list(r.threshold) == ["happy", "neutral", "happy", "angry", "neutral", None, "angry", "neutral",
                                 "neutral", "neutral"]
    assert list(r.n_total) == [10, 10, 10, 10, 12, 0, 10, 20, 20, 35]


# 16 classes with their own neutral label, neither at the end nor called "neutral".
LABELS16 = ("joy", "amusement", "pride", "contentment", "relief", "calm", "anger", "contempt",
            "disgust", "fear", "sadness", "shame", "surprise", "confusion", "boredom", "pain")
BROAD16 = {**{l: "positive" for l in ("joy", "amusement", "pride", "contentment", "relief", "surprise")},
           **{l: "negative" for l in ("anger", "contempt", "disgust", "fear", "sadness", "shame", "pain",
                                       "confusion", "boredom")},
           "calm": "baseline"}


def test_sixteen_class_label_set():
    """Labels are data: 16 count/frac columns, neutral is 'calm' at index 5, broad labels from the map."""
    settings = AggregationSettings(labels=LABELS16, threshold=0.25, neutral_label="calm", broad_map=BROAD16)
    assert settings.broad_labels == ("positive", "baseline", "negative")
    assert settings.broad_neutral == "baseline"
    counts = [0] * 16
    counts[LABELS16.index("calm")] = 10
    counts[LABELS16.index("shame")] = 3
    counts[LABELS16.index("pain")] = 3
    counts[LABELS16.index("joy")] = 2
    row = video_labels(counts, settings)                    # n_total 18, 0.25 * 18 = 4.5
    assert [k for k in row if k.startswith("count_") and not k.startswith("count_broad_")] == \
        [f"count_{l}" for l in LABELS16]
    assert len([k for k in row if k.startswith("frac_")]) == 16
    assert row["count_calm"] == 10 and row["count_shame"] == 3 and row["count_pain"] == 3
    assert row["frac_calm"] == 10 / 18
    assert row["top1_label"] == "calm"
    assert row["threshold_candidate"] == "shame"             # shame/pain tie: shame comes first
    assert row["threshold_candidate_count"] == 3
    assert row["threshold_label"] == "calm"                  # 3 < 4.5 -> the neutral label of this set
    assert (row["count_broad_positive"], row["count_broad_baseline"], row["count_broad_negative"]) == (2, 10, 6)
    assert row["broad_top1_label"] == "baseline"
    assert row["broad_threshold_label"] == "negative"        # 6 >= 4.5

    fallback_top1 = AggregationSettings(labels=LABELS16, threshold=0.9, fallback="top1",
                                        neutral_label="calm", broad_map=BROAD16)
    counts = [0] * 16
    counts[LABELS16.index("pain")] = 7
    counts[LABELS16.index("calm")] = 3
    row = video_labels(counts, fallback_top1)
    assert (row["top1_label"], row["threshold_candidate"], row["threshold_label"]) == ("pain", "pain", "pain")


def test_apply_methods_sixteen_classes_vectorised():
    """apply_methods takes the neutral label by name, wherever it sits in the label order."""
    m = np.zeros((2, 16), np.int64)
    m[0, LABELS16.index("calm")] = 9
    m[0, LABELS16.index("joy")] = 1
    m[1, LABELS16.index("fear")] = 2
    m[1, LABELS16.index("calm")] = 2
    r = apply_methods(m, LABELS16, "calm", 0.2, "neutral")
    assert list(r.top1) == ["calm", "calm"]                  # second row: calm (index 5) before fear (index 9)
    assert list(r.candidate) == ["joy", "fear"]
    assert list(r.threshold) == ["calm", "fear"]             # 1 < 2 -> calm; 2 >= 0.8 -> fear


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.0000001, 1.5])
def test_settings_reject_threshold_outside_unit_interval(threshold):
    """threshold must be in (0, 1]."""
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
        AggregationSettings(labels=LABELS, threshold=threshold)


def test_settings_accept_threshold_one():
    """1.0 is inside (0, 1]."""
    assert AggregationSettings(labels=LABELS, threshold=1.0).threshold == 1.0


def test_settings_reject_unknown_fallback():
    """fallback is neutral or top1."""
    with pytest.raises(ValueError, match="fallback must be one of .*'majority'"):
        AggregationSettings(labels=LABELS, fallback="majority")


def test_settings_reject_missing_neutral_label():
    """The neutral label must be one of the labels."""
    with pytest.raises(ValueError, match="aggregate.neutral_label = 'calm' is not among the labels"):
        AggregationSettings(labels=LABELS, neutral_label="calm")
    with pytest.raises(ValueError, match="aggregate.neutral_label = 'neutral' is not among the labels"):
        AggregationSettings(labels=LABELS16, broad_map=BROAD16)


def test_settings_reject_unmapped_label():
    """Every label needs a broad label."""
    broad = {k: v for k, v in BROAD16.items() if k != "boredom"}
    with pytest.raises(ValueError, match=r"aggregate.broad_map does not map the labels \['boredom'\]"):
        AggregationSettings(labels=LABELS16, neutral_label="calm", broad_map=broad)
    with pytest.raises(ValueError, match=r"aggregate.broad_map does not map the labels \['joy', 'amusement'"):
        AggregationSettings(labels=LABELS16, neutral_label="calm")     # the default 7-label map
