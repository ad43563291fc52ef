"""`python -m pipelines.cli ...` is the `affectflow` command."""
import sys

from pipelines.cli import command

sys.exit(command())
