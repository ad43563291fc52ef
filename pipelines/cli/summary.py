"""What a run prints when it ends, and the exit code its manifest implies."""
from __future__ import annotations

import sys

EXIT_OK, EXIT_VIDEOS_FAILED, EXIT_USAGE, EXIT_RUN_FAILED, EXIT_INVALID = 0, 1, 2, 3, 4


def print_summary(manifest: dict, stream=None) -> None:
    """The run's one-screen summary: what was matched, processed and skipped, the tables, validation."""
    stream = stream or sys.stdout           # looked up at call time (tests and callers may swap it)
    c = manifest["counts"]
    t = manifest["timings_s"]
    print(f"run {manifest['run_id']}: {c['matched']} videos matched: {c['processed']} processed, {c['skipped']} "
          f"skipped (unchanged since their last run{'' if c['processed'] else '; nothing to do'})", file=stream)
    print(f"videos now: ok {c['ok']}, no_face {c['no_face']}, failed {c['failed']} "
          f"(all accounted for: {c['accounted']})", file=stream)
    notes = [f"{c['failed_now']} failed in this run" if c.get("failed_now") else "",
             f"{c['failed_kept']} known failures kept from earlier runs (unchanged files; see dead_letters/)"
             if c.get("failed_kept") else "",
             f"{c['relabelled']} skipped videos relabelled with the new aggregate settings" if c.get("relabelled") else "",
             f"{len(manifest.get('repaired') or [])} damaged or incomplete videos repaired" if manifest.get("repaired")
             else "",
             f"{c['pruned']} videos whose input is gone removed (--prune)" if c.get("pruned") else "",
             f"{c['deleted_inputs']} videos in the output have no input file any more (e.g. "
             f"{(manifest.get('deleted_inputs') or ['?'])[0]}); --prune removes them" if c.get("deleted_inputs") else "",
             f"completed the interrupted commit of run(s) {', '.join(manifest['recovered_commits'])}"
             if manifest.get("recovered_commits") else ""]
    for note in filter(None, notes):
        print(f"  note: {note}", file=stream)
    print(f"frames decoded {c['frames_decoded']}, sampled {c['frames_sampled']}, with a face "
          f"{c['frames_with_face']}; pipeline {t['pipeline']:.1f} s, {manifest['throughput_frames_per_s']} frames/s",
          file=stream)
    for table, path in manifest["tables"].items():
        print(f"  {table:13s} {path}", file=stream)
    print(f"  manifest      {manifest['output']}/run_manifest.json", file=stream)
    print(f"  report        affectflow report {manifest['output']}  (writes {manifest['output']}/reports/archive.html)",
          file=stream)
    if "://" not in manifest["output"]:
        from pipelines.compact import COMPACT_DIR, is_stale
        if is_stale(manifest["output"]):
            print(f"  note: {manifest['output']}/{COMPACT_DIR}/ reflects the tables before this run: run affectflow "
                  "compact again", file=stream)
    validation = manifest.get("validation")
    if validation:
        print(validation.get("summary") or f"validation skipped: {validation.get('skipped')}", file=stream)


def run_exit_code(manifest: dict) -> int:
    """4 when the end-of-run validation found a critical failure (it outranks failed videos: the
    output as a whole cannot be trusted), else 1 when videos failed in this run, else 0. Earlier
    failures of unchanged files, kept as they were, do not fail every later run."""
    if (manifest.get("validation") or {}).get("valid") is False:
        return EXIT_INVALID
    counts = manifest["counts"]
    return EXIT_VIDEOS_FAILED if counts.get("failed_now", counts["failed"]) else EXIT_OK
