"""TestPipeline on the engine the product's default config runs on (runner_configs/local.yaml):
Beam's FnApiRunner, named directly so that Beam 2.77's DirectRunner never tries its Prism runner
(which downloads a binary from GitHub); a machine with a network runs the tests on the same
engine as one without."""
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline


def local_pipeline() -> TestPipeline:
    return TestPipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
