"""pipelines.beam_runtime: the state-sampling period of bundles run in this process."""
from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.runners.worker import statesampler
from apache_beam.testing.util import assert_that, equal_to

from pipelines.beam_runtime import shorten_state_sampling
from tests.beam_options import local_pipeline


@pytest.fixture
def sampler_default():
    """Beam's own default during the test, whatever ran before (any execute() shortens it for the
    whole process), and the previous setting after it."""
    init = statesampler.StateSampler.__init__
    saved = init.__defaults__
    init.__defaults__ = (*saved[:-1], statesampler.DEFAULT_SAMPLING_PERIOD_MS)
    yield
    init.__defaults__ = saved


class _SamplingPeriod(beam.DoFn):
    """Emits the sampling period of the state sampler of the bundle that processes the element."""

    def process(self, element):
        yield statesampler.get_current_tracker().sampling_period_ms


def _periods_seen_by_bundles(expected):
    with local_pipeline() as p:
        assert_that(p | beam.Create([1, 2, 3]) | beam.ParDo(_SamplingPeriod()), equal_to(expected))


def test_bundles_sample_every_10_ms_once_shortened(sampler_default):
    assert statesampler.DEFAULT_SAMPLING_PERIOD_MS == 200
    _periods_seen_by_bundles([200, 200, 200])           # Beam's default: a bundle's end may wait 200 ms
    assert shorten_state_sampling(10) is True
    _periods_seen_by_bundles([10, 10, 10])


def test_another_beam_sampler_signature_is_left_alone(sampler_default, monkeypatch):
    class OtherSampler:
        def __init__(self, prefix, counter_factory):
            pass
    monkeypatch.setattr(statesampler, "StateSampler", OtherSampler)
    assert shorten_state_sampling(10) is False
    assert OtherSampler.__init__.__defaults__ is None
