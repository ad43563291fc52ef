"""TestPipeline on the engine the product's default config runs on.

Beam 2.77's DirectRunner (TestPipeline's default) first tries the Prism runner, downloading its
binary from GitHub; runner_configs/local.yaml keeps it on the FnApiRunner with
``allow_unsafe_triggers`` (see the comment there). Tests do the same, so a machine with a network
runs them on the same engine as one without.
"""
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline


def local_pipeline() -> TestPipeline:
    return TestPipeline(options=PipelineOptions(["--allow_unsafe_triggers"]))
