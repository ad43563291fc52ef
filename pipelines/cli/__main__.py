"""`python -m pipelines.cli ...` is the `affectflow` command."""
import sys

from pipelines.cli import main

sys.exit(main())
