"""pipelines.beam_runtime: the state-sampling period of bundles run in this process."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.runners.worker import statesampler
from apache_beam.testing.util import assert_that, equal_to

from pipelines.beam_runtime import short_state_sampling
from tests.beam_options import local_pipeline


class _SamplingPeriod(beam.DoFn):
    """Emits the sampling period of the state sampler of the bundle that processes the element."""

    def process(self, element):
        yield statesampler.get_current_tracker().sampling_period_ms


def _periods_seen_by_bundles(expected):
    with local_pipeline() as p:
        assert_that(p | beam.Create([1, 2, 3]) | beam.ParDo(_SamplingPeriod()), equal_to(expected))


def test_bundles_sample_every_10_ms_while_shortened_and_beams_default_comes_back():
    assert statesampler.DEFAULT_SAMPLING_PERIOD_MS == 200
    _periods_seen_by_bundles([200, 200, 200])           # Beam's default: a bundle's end may wait 200 ms
    with short_state_sampling(10) as applied:
        assert applied is True
        _periods_seen_by_bundles([10, 10, 10])
    _periods_seen_by_bundles([200, 200, 200])           # restored for whatever runs next in the process


def test_the_default_comes_back_when_the_run_fails():
    try:
        with short_state_sampling(10):
            raise RuntimeError("the run failed")
    except RuntimeError:
        pass
    assert statesampler.StateSampler.__init__.__defaults__[-1] == statesampler.DEFAULT_SAMPLING_PERIOD_MS


def test_another_beam_sampler_signature_is_left_alone(monkeypatch):
    class OtherSampler:
        def __init__(self, prefix, counter_factory):
            pass
    monkeypatch.setattr(statesampler, "StateSampler", OtherSampler)
    with short_state_sampling(10) as applied:
        assert applied is False
    assert OtherSampler.__init__.__defaults__ is None
