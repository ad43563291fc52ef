"""Script entry for orchestrators: ``python pipelines/cli/run_job.py --input ... --output ...`` is
``affectflow run`` (same options and exit codes), for operators that run a Python file with
flags, such as Airflow's BeamRunPythonPipelineOperator."""
from __future__ import annotations

import sys
from typing import Optional

from pipelines.cli import main


def run(argv: Optional[list[str]] = None) -> int:
    return main(["run", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(run())
