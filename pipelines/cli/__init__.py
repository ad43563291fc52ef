"""The `affectflow` command line.

    affectflow run --input GLOB_OR_MANIFEST --output DIR [--config YAML] [--set key=value ...]
    affectflow aggregate --output DIR [--threshold T] [--fallback neutral|top1] [--dest DIR]
    affectflow models list | fetch [NAME ...]
    affectflow samples [--dest DIR] [NAME ...]
    affectflow demo [--output DIR]
    affectflow validate OUTPUT [--config YAML] [--set validation.key=value ...]
    affectflow calibrate --output DIR --manifest LABELLED.csv [--report DIR] ...
    affectflow ingest {openface,pyfeat} INPUT --output DIR [--frame-size WxH] [--fps F] [--config YAML] [--set ...]
    affectflow train --output DIR --manifest LABELLED.csv --dest MODEL_DIR [--model all] [--features appearance] ...
    affectflow predict --output DIR --model MODEL_DIR

Exit codes: 0 success; 1 the run finished but some of the videos it processed failed (their
dead letters are in the output); 2 bad usage or configuration (nothing was done); 3 the run
itself could not complete (the error's type and message are printed; -v shows the traceback);
4 a critical validation expectation failed (`validate`, or a run whose end-of-run validation
failed: this outranks 1).
"""
from __future__ import annotations

import gc
import logging
import os
import sys

from pipelines.cli.parser import build_parser
from pipelines.cli.summary import EXIT_RUN_FAILED, EXIT_USAGE
from pipelines.cli.terminal import configure_logging, discard_log, keep_log, native_output_to_log


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code (see the module docstring)."""
    args = build_parser(__doc__).parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with native_output_to_log(enabled=not args.verbose) as native_log:
        configure_logging(args.verbose)
        code = _dispatch(args)
    if code == EXIT_RUN_FAILED and keep_log(native_log):
        print(f"  messages of the native libraries (TensorFlow, FFmpeg): {native_log}", file=sys.stderr)
    else:
        discard_log(native_log)
    return code


def command(argv: list[str] | None = None) -> int:
    """The `affectflow` process: `main`, then the live objects frozen out of the exit's garbage collection.

    Python's finalization collects every generation before the process ends; after a run that loaded
    Beam, the TF Lite runtime and Great Expectations that traversal costs about 1.1 s of CPU (a 20 s
    run over ten 16-second clips spends 5% of its wall time exiting). ``gc.freeze()`` moves the
    objects out of the collector's reach: atexit handlers, stream flushes and reference-counted
    clean-up still run; objects caught in reference cycles are not finalized, which nothing here
    relies on (every file is closed and renamed into place before ``main`` returns). In-process
    callers (tests, notebooks) call ``main``, which leaves the collector alone.
    """
    code = main(argv)
    gc.freeze()
    return code


def _dispatch(args) -> int:
    from core.errors import UsageError
    from pipelines.cli.commands import HANDLERS
    try:
        return HANDLERS[args.command](args)
    except UsageError as exc:
        print(f"affectflow {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - the run could not complete: say why, exit 3
        if args.verbose:
            logging.getLogger("affectflow").exception("%s could not complete", args.command)
        print(f"affectflow {args.command}: the run could not complete: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_RUN_FAILED
