"""Script entry for orchestrators: ``python pipelines/cli/run_job.py --input ... --output ...`` is
``affectflow run`` (same options and exit codes).

Operators that run a Python file with Beam's pipeline options as flags, such as Airflow's
BeamRunPythonPipelineOperator (which always passes ``--runner=...``), can point at this file:
every flag that `affectflow run` does not know, written ``--key=value`` (or a bare ``--flag``),
becomes ``--set pipeline_options.key=value``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from pipelines.cli import command, main
from pipelines.cli.parser import add_run_arguments


def as_run_arguments(argv: list[str]) -> list[str]:
    """``affectflow run`` arguments for ``argv``: every ``--key[=value]`` flag `run` does not know
    becomes ``--set pipeline_options.key=value`` (a bare flag: ``=true``)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_run_arguments(parser)
    _, unknown = parser.parse_known_args(argv)
    args, pending = [], list(unknown)
    for item in argv:
        if pending and item == pending[0] and item.startswith("--"):
            pending.pop(0)
            name, has_value, value = item.partition("=")
            args += ["--set", f"pipeline_options.{name[2:]}={value if has_value else 'true'}"]
        else:
            args.append(item)
    return args


def run(argv: Optional[list[str]] = None, entry=main) -> int:
    """``affectflow run`` with ``argv`` (default: the process's own) translated by as_run_arguments."""
    return entry(["run", *as_run_arguments(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(run(entry=command))
