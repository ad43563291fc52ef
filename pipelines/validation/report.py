"""The verdict on an output: findings from GX results, the one-screen summary, the manifest entry."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

EXIT_VALID, EXIT_INVALID = 0, 4
MAX_EXAMPLES = 3


@dataclass(frozen=True)
class Finding:
    """One failed expectation, as the summary, results.json and the manifest report it."""
    table: str
    column: str
    rule: str
    severity: str                  # critical | warning
    expectation: str               # GX expectation type
    detail: str                    # what was found: counts and a few offending rows
    unexpected: Optional[int] = None

    @property
    def message(self) -> str:
        return f"{self.table}.{self.column}: {self.rule} -- {self.detail}"

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "message": self.message}


@dataclass(frozen=True)
class ValidationReport:
    """The verdict on one output folder. ``valid``: no critical expectation failed."""
    output: str
    run_id: str
    valid: bool
    failed: tuple[Finding, ...]        # critical
    warnings: tuple[Finding, ...]
    evaluated: int                     # expectations run
    duration_s: float
    results_path: str
    data_docs_path: str
    validated_at: str

    @property
    def exit_code(self) -> int:
        return EXIT_VALID if self.valid else EXIT_INVALID

    def manifest_entry(self) -> dict:
        """The ``validation`` entry written into run_manifest.json."""
        def brief(f: Finding) -> dict:
            return {"table": f.table, "column": f.column, "rule": f.rule, "message": f.message}
        return {"valid": self.valid, "validated_at": self.validated_at,
                "failed": [brief(f) for f in self.failed], "warnings": [brief(f) for f in self.warnings],
                "results": os.path.relpath(self.results_path, self.output),
                "data_docs": os.path.relpath(self.data_docs_path, self.output)}

    def summary(self, max_findings: int = 14, width: int = 200) -> str:
        """One screen: the verdict, then one line per failure and warning (table.column: rule -- detail)."""
        verdict = "VALID" if self.valid else "INVALID"
        lines = [f"validation of {self.output}: {verdict}, {len(self.failed)} critical failure(s), "
                 f"{len(self.warnings)} warning(s) ({self.evaluated} expectations, {self.duration_s:.1f} s)"]
        shown = [("FAILED ", f) for f in self.failed] + [("WARNING", f) for f in self.warnings]
        for label, finding in shown[:max_findings]:
            line = f"  {label} {finding.message}"
            lines.append(line if len(line) <= width else line[:width - 3] + "...")
        if len(shown) > max_findings:
            lines.append(f"  ... and {len(shown) - max_findings} more in {self.results_path}")
        lines.append(f"  results    {self.results_path}")
        lines.append(f"  data docs  {self.data_docs_path}")
        return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _examples(items: Sequence) -> str:
    shown = []
    for item in list(items)[:MAX_EXAMPLES]:
        shown.append(" ".join(f"{k}={_short(v)}" for k, v in item.items()) if isinstance(item, dict) else _short(item))
    return "e.g. " + "; ".join(shown) if shown else ""


def _exception_message(info) -> Optional[str]:
    if not info:
        return None
    entries = info.values() if all(isinstance(v, dict) for v in info.values()) else [info]
    messages = [str(e.get("exception_message")) for e in entries if e.get("raised_exception")]
    return "; ".join(dict.fromkeys(messages)) or None


def finding(r) -> Finding:
    """A failed GX expectation result as a Finding: table, column, rule, severity, what was found."""
    config = r.expectation_config
    m = config.meta or {}
    severity = getattr(config.severity, "value", config.severity) or "critical"
    res = r.result or {}
    unexpected: Optional[int] = None
    error = _exception_message(r.exception_info)
    if error:
        detail = f"could not be evaluated: {error}"
    elif config.type == "unexpected_rows_expectation":
        unexpected = int(res.get("observed_value") or 0)
        rows = (res.get("details") or {}).get("unexpected_rows") or []
        detail = f"{unexpected} offending row(s), " + _examples(rows)
    elif "unexpected_count" in res:
        unexpected = int(res["unexpected_count"])
        total = res.get("element_count")
        mostly = config.kwargs.get("mostly")
        share = (f" ({res['unexpected_percent']:.1f}%, allowed {100 * (1 - mostly):.1f}%)"
                 if mostly is not None and mostly < 1 and res.get("unexpected_percent") is not None else "")
        rows = res.get("partial_unexpected_index_list") or res.get("partial_unexpected_list") or []
        detail = f"{unexpected} of {total} rows{share}, " + _examples(rows)
    elif config.type == "expect_table_columns_to_match_set":
        mismatched = (res.get("details") or {}).get("mismatched") or {}
        detail = ", ".join(f"{k} {sorted(v)}" for k, v in mismatched.items() if v) or f"observed {res.get('observed_value')}"
    else:
        detail = f"observed {_short(res.get('observed_value'))}"
    column = m.get("column", config.kwargs.get("column", "?"))
    index_rows = [row for row in res.get("partial_unexpected_index_list") or [] if isinstance(row, dict)]
    unreadable = {row["file"]: str(row.get("arrow_type", "")).removeprefix("unreadable: ") for row in index_rows
                  if str(row.get("arrow_type", "")).startswith("unreadable")}
    named = [row["column_name"] for row in index_rows if "column_name" in row]
    if unreadable:                      # the stored-columns rule on a damaged file: name the file, not its columns
        column = "(file)"
        detail = "unreadable file(s): " + "; ".join(f"{f} ({why})" for f, why in list(unreadable.items())[:MAX_EXAMPLES])
    elif named:                         # the stored-columns rule: name the offending columns
        column = ", ".join(dict.fromkeys(named))
    return Finding(table=m.get("table", "?"), column=column,
                   rule=m.get("rule", config.type), severity=str(severity), expectation=config.type,
                   detail=detail.rstrip(", "), unexpected=unexpected)
