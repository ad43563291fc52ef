"""One handler per `affectflow` command: parse nothing, call the job, print what it did, return the exit code."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.cli.summary import EXIT_INVALID, EXIT_OK, EXIT_VIDEOS_FAILED, print_summary, run_exit_code


def _config(args, inputs: dict | None = None):
    from pipelines.config import load_config
    return load_config(args.config, inputs, args.set)


def run(args: argparse.Namespace, input_path: str | None = None, output: str | None = None) -> int:
    from pipelines.extract import execute
    config = _config(args, {"input": input_path or args.input, "output": output or args.output})
    manifest = execute(config, sys.argv, force=getattr(args, "force", False), wait_s=getattr(args, "wait", 0.0),
                       prune=getattr(args, "prune", False))
    print_summary(manifest)
    return run_exit_code(manifest)


def demo(args: argparse.Namespace) -> int:
    from pipelines.samples import fetch_samples
    fetch_samples(args.dest)
    return run(args, args.dest, args.output)


def aggregate(args: argparse.Namespace) -> int:
    from pipelines.reaggregate import reaggregate
    sets = list(args.set)
    if args.threshold is not None:
        sets.append(f"aggregate.threshold={args.threshold}")
    if args.fallback:
        sets.append(f"aggregate.fallback={args.fallback}")
    args.set = sets
    config = _config(args)
    table = reaggregate(args.output, config, args.dest, args.wait, sys.argv)
    labels = table.column("threshold_label").to_pylist()
    a = config.job.aggregate
    print(f"re-aggregated {table.num_rows} videos with threshold {a.threshold}, fallback {a.fallback}: "
          + ", ".join(f"{l} {labels.count(l)}" for l in sorted({str(x) for x in labels})))
    print(f"  videos {(args.dest or args.output).rstrip('/')}/videos")
    return EXIT_OK


def calibrate(args: argparse.Namespace) -> int:
    from models.registry import get_spec
    from pipelines.calibration.job import aggregation_settings_for, calibrate_output
    from pipelines.labels import parse_label_map
    from pipelines.calibration.report import format_paper_table
    config = _config(args)
    settings = aggregation_settings_for(args.output, config.job.aggregate, get_spec(config.job.emotion.model).labels)
    calibration, paths = calibrate_output(
        args.output, args.manifest, settings, report_dir=args.report, folds=args.folds, thresholds=args.thresholds,
        seed=args.seed, label_map=parse_label_map(args.label_map), select_by=args.select_by, fit_on=args.fit_on,
        name=args.name, engine=args.engine)
    report, v = calibration.report, calibration.report["videos"]
    print(f"calibrate {report['dataset']}: {v['labelled']} labelled videos; {v['not_in_run']} not in the run, "
          f"{v['without_face_frames']} without a face frame (left out)")
    print(format_paper_table(report))
    for warning in report.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"fitted on the {report['fitted']['setting']} setting: threshold {report['fitted']['threshold']:.2f}, "
          f"fallback {report['fitted']['fallback']}")
    for key in ("fragment", "html", "json", "predictions"):
        print(f"  {key:12s}{paths[key]}")
    return EXIT_OK


def ingest(args: argparse.Namespace) -> int:
    from core.errors import UsageError
    from pipelines.ingest.job import execute_ingest, parse_frame_size
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if args.fps is not None and not args.fps > 0:
        raise UsageError(f"--fps must be > 0, got {args.fps}")
    config = _config(args, {"input": args.input, "output": args.output})
    manifest = execute_ingest(config, args.source, parse_frame_size(args.frame_size), args.fps, args.workers,
                              args.force, sys.argv, args.wait)
    print_summary(manifest)
    return run_exit_code(manifest)


def train(args: argparse.Namespace) -> int:
    from models.sequence_data import PAPER_KINDS, SEMANTIC_KINDS, SEQUENCE_KINDS
    from pipelines.labels import parse_label_map
    from pipelines.training.data import parse_binary_map
    from pipelines.training.job import TrainRequest, train as train_models
    from schemas.features import TRAINING_FEATURE_SETS
    from schemas.predictions import TASKS
    config = _config(args)
    semantic = args.target == "semantic"
    kinds, default_kinds = ((SEMANTIC_KINDS, SEMANTIC_KINDS) if semantic
                            else ((*SEQUENCE_KINDS, "landmark_ensemble"), PAPER_KINDS))
    request = TrainRequest(
        output=args.output.rstrip("/"), manifest=args.manifest, dest=args.dest,
        models=TrainRequest.expand(args.model or ["all"], kinds, "--model", default_kinds),
        feature_sets=TrainRequest.expand(args.features or ["appearance"], TRAINING_FEATURE_SETS, "--features",
                                         ("appearance", "deep", "both")),
        tasks=TrainRequest.expand(args.task or ["multiclass"], TASKS, "--task", TASKS), folds=args.folds,
        label_map=parse_label_map(args.label_map), binary_map=parse_binary_map(args.binary_map),
        allow_no_subjects=args.allow_no_subjects, overwrite=args.overwrite)
    if semantic:
        from pipelines.training.semantic_job import train_semantic, vocabulary_words
        report = train_semantic(request, config.job.train, vocabulary_words(args.vocabulary), sys.argv)
    elif "landmark_ensemble" in request.models:
        from core.errors import UsageError
        from pipelines.training.ensemble_job import train_ensemble
        if len(request.models) > 1:
            raise UsageError("--model landmark_ensemble trains on frames and has its own outputs: train it alone")
        report = train_ensemble(request, config.job.train, sys.argv)
    else:
        report = train_models(request, config.job.train, sys.argv)
    print(f"trained {len(report['models'])} model(s) in {report['seconds']:.0f} s; cross-validated "
          f"({report['folds']} folds, grouped by {report['grouped_by']}):")
    for result in report["results"]:
        shown = ("cosine", "z", "top1") if semantic else ("uar", "accuracy")
        print(f"  {result['name']:45s} " + "   ".join(
            f"{m} " + ("n/a" if result["mean"][m] is None else f"{result['mean'][m]:.3f} ± {result['sd'][m]:.3f}")
            for m in shown))
    for key, path in report["files"].items():
        print(f"  {key:8s}{path}")
    return EXIT_OK


def _predictions_exit(entry: dict) -> int:
    """Print a predict / space project validation summary; 4 invalid, 1 some videos failed, else 0."""
    validation = entry.get("validation") or {}
    if validation.get("summary"):
        print(validation["summary"])
    if validation.get("valid") is False:
        return EXIT_INVALID
    return EXIT_VIDEOS_FAILED if entry["counts"].get("failed") else EXIT_OK


def predict(args: argparse.Namespace) -> int:
    import os
    from core.errors import UsageError
    from pipelines.predict import predict as predict_videos
    config = _config(args)
    model = (args.model or config.job.classifier.model or config.job.models.paths.get("video_classifier")
             or os.environ.get("AFFECTFLOW_MODEL_VIDEO_CLASSIFIER"))
    if not model:
        raise UsageError("give the model folder: --model, classifier.model, models.paths.video_classifier or "
                         "AFFECTFLOW_MODEL_VIDEO_CLASSIFIER")
    entry = predict_videos(args.output, model, config, force=args.force, wait_s=args.wait, command=sys.argv)
    counts = entry["counts"]
    print(f"predicted {entry['predicted']} video(s) with {entry['model']} ({entry['kept']} kept from before): "
          + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return _predictions_exit(entry)


def space(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.space_command == "fit":
        from pipelines.labels import parse_label_map
        from pipelines.space import SpaceRequest, fit_space
        request = SpaceRequest(args.model, args.output.rstrip("/"), args.manifest, args.dest,
                               parse_label_map(args.label_map), args.allow_no_subjects, args.overwrite)
        card = fit_space(request, config.job.space, sys.argv)
        print(f"space {card.name}: {card.dimensions}-D, {card.training['frames']} frames of "
              f"{card.training['videos']} videos; clusters (frames per label):")
        for cluster, counts in sorted(card.clusters.items(), key=lambda kv: int(kv[0])):
            print(f"  {'none' if cluster == '-1' else cluster:>4s}  "
                  + ", ".join(f"{label} {n}" for label, n in counts.items()))
        print(f"  saved to {args.dest} (picture: {args.dest}/space.html)")
        return EXIT_OK
    from pipelines.space import project
    entry = project(args.output, args.space, config.job.validation, force=args.force, wait_s=args.wait,
                    command=sys.argv)
    counts = entry["counts"]
    print(f"projected {entry['projected']} video(s) into {entry['model']} ({entry['kept']} kept from before): "
          + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if entry.get("report"):
        print(f"  picture: {entry['report']}")
    return _predictions_exit(entry)


def report(args: argparse.Namespace) -> int:
    from pipelines.archive_report import write_report
    videos = [v.strip() for value in args.videos for v in value.split(",") if v.strip()]
    written = write_report(args.output, args.dest, videos, args.timelines, args.rows)
    counts = ", ".join(f"{k} {v}" for k, v in written["by_status"].items())
    print(f"report of {written['videos']} videos ({counts}), {len(written['timelines'])} timelines: "
          f"{written['path']}")
    return EXIT_OK


def compact(args: argparse.Namespace) -> int:
    from pipelines.compact import COMPACT_DIR, compact as compact_output
    state = compact_output(args.output, args.wait, sys.argv)
    rows = ", ".join(f"{table} {n}" for table, n in state["rows"].items())
    if state.get("unchanged"):
        print(f"{args.output}/{COMPACT_DIR}/ already reflects the output's tables ({rows} rows)")
    else:
        print(f"compacted {args.output} into {args.output}/{COMPACT_DIR}/ in {state['seconds']:.1f} s: {rows} rows")
    return EXIT_OK


def models(args: argparse.Namespace) -> int:
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


def samples(args: argparse.Namespace) -> int:
    from pipelines.samples import fetch_samples
    for path in fetch_samples(args.dest, args.names or None):
        print(path)
    return EXIT_OK


def validate(args: argparse.Namespace) -> int:
    from pipelines.output.lock import OutputLock
    from pipelines.output.manifest import new_run_id
    from pipelines.validation.job import read_output_manifest, validate_output
    settings = _config(args).job.validation
    read_output_manifest(Path(args.output))     # no output there: say so before taking its lock
    with OutputLock(args.output, f"validate-{new_run_id()}", " ".join(sys.argv), args.wait):
        reports = [validate_output(args.output, settings)]
        from pipelines.validation.predictions import predicted_models, validate_predictions
        reports += [validate_predictions(args.output, model, settings) for model in predicted_models(args.output)]
    for report in reports:
        print(report.summary())
    return max(report.exit_code for report in reports)


HANDLERS = {"run": run, "demo": demo, "aggregate": aggregate, "calibrate": calibrate, "ingest": ingest,
            "train": train, "predict": predict, "space": space, "report": report, "compact": compact, "models": models, "samples": samples,
            "validate": validate}
