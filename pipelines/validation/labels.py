"""The video labels, recomputed: a rule that re-derives Top-1, the threshold label and the broad labels
of every row from its per-class counts, threshold and fallback (and the run's broad map), so a bug
in aggregation, or a row edited by hand, fails `affectflow validate`.

The SQL follows models.aggregation exactly: ties go to the label that comes first in the model's
label order; m = the most frequent non-neutral label, n_m its count, n_total = the sum of the
counts; the video is m when n_m > 0 and n_m >= threshold * n_total (within 1e-9), else the
fallback (neutral, or the Top-1 label); no label at all when n_total is 0. Failed videos' labels
are withheld (null).
"""
from __future__ import annotations

from typing import Sequence

from models.aggregation import LABEL_COLUMNS_NULLED_WHEN_FAILED
from pipelines.validation.rules import VIDEOS, RunFacts, ident, lit, rows_rule
from schemas.columns import broad_count_column, count_column

_EPS = "1e-9"


def _first_of_greatest(columns: Sequence[str], names: Sequence[str]) -> str:
    """SQL: the name of the first column holding the greatest value."""
    best = f"greatest({', '.join(columns)})"
    return "CASE " + " ".join(f"WHEN {c} = {best} THEN {lit(n)}" for c, n in zip(columns, names)) + " END"


def expected_labels(counts: Sequence[str], labels: Sequence[str], neutral: str) -> dict[str, str]:
    """SQL expressions of both methods over count columns ``counts`` (in ``labels`` order)."""
    total = "(" + " + ".join(counts) + ")"
    others = [(c, l) for c, l in zip(counts, labels) if l != neutral]
    n_m = f"greatest({', '.join(c for c, _ in others)})"
    m = _first_of_greatest([c for c, _ in others], [l for _, l in others])
    top1 = f"CASE WHEN {total} = 0 THEN NULL ELSE {_first_of_greatest(counts, labels)} END"
    threshold = (f"CASE WHEN {total} = 0 THEN NULL WHEN {n_m} > 0 AND {n_m} >= threshold * {total} - {_EPS} "
                 f"THEN {m} WHEN fallback = 'top1' THEN {top1} ELSE {lit(neutral)} END")
    return {"total": total, "top1": top1, "threshold": threshold, "n_m": n_m,
            "candidate": f"CASE WHEN {total} > 0 AND {n_m} > 0 THEN {m} END"}


def label_expectations(facts: RunFacts) -> list:
    """The recomputation rules; none for an output whose manifest does not record its aggregate settings."""
    if facts.neutral_label is None or not facts.broad_map:
        return []
    counts = [ident(count_column(l)) for l in facts.labels]
    specific = expected_labels(counts, facts.labels, facts.neutral_label)
    broad_counts = {b: " + ".join(ident(count_column(l)) for l in facts.labels if facts.broad_map.get(l) == b) or "0"
                    for b in facts.broad_labels}
    broad = expected_labels([f"({broad_counts[b]})" for b in facts.broad_labels], facts.broad_labels,
                            facts.broad_map.get(facts.neutral_label, facts.neutral_label))
    differs = " OR ".join([
        f"threshold_denominator IS DISTINCT FROM {specific['total']}",
        f"top1_label IS DISTINCT FROM {specific['top1']}",
        f"threshold_label IS DISTINCT FROM {specific['threshold']}",
        f"threshold_candidate IS DISTINCT FROM {specific['candidate']}",
        f"threshold_candidate_count IS DISTINCT FROM (CASE WHEN {specific['total']} > 0 THEN {specific['n_m']} END)",
        f"broad_top1_label IS DISTINCT FROM {broad['top1']}",
        f"broad_threshold_label IS DISTINCT FROM {broad['threshold']}",
        *[f"{ident(broad_count_column(b))} IS DISTINCT FROM ({expr})" for b, expr in broad_counts.items()]])
    withheld = " OR ".join(f"{ident(c)} IS NOT NULL" for c in LABEL_COLUMNS_NULLED_WHEN_FAILED)
    return [
        rows_rule(VIDEOS, "top1_label, threshold_label, broad_*",
                  "labels and broad counts follow from count_*, threshold, fallback and the run's broad map", f"""
            SELECT video_id, top1_label, threshold_label, threshold, fallback, threshold_denominator FROM {{batch}}
            WHERE status <> 'failed' AND ({differs})"""),
        rows_rule(VIDEOS, "top1_label, threshold_label", "a failed video's labels are withheld (null)", f"""
            SELECT video_id, status, top1_label, threshold_label FROM {{batch}}
            WHERE status = 'failed' AND ({withheld})"""),
    ]
