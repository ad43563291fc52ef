"""Running a pipeline: Beam's flags for the configured runner, and in-process tuning of Beam's worker code.

With the default in-process runner the bundles run in the launching process, so a run's
latency includes costs of Beam's worker code. One of them has no option:
``short_state_sampling``.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
from typing import Iterator

from apache_beam.runners.worker import statesampler

from pipelines.config import RunConfig

_LOG = logging.getLogger(__name__)

# Beam's default is 200 ms. 10 ms still gives msec counters a sample per 10 ms of a step.
STATE_SAMPLING_PERIOD_MS = 10


@contextlib.contextmanager
def short_state_sampling(period_ms: int = STATE_SAMPLING_PERIOD_MS) -> Iterator[bool]:
    """While the context is open, each bundle's state sampler sleeps at most ``period_ms``
    between samples; Beam's own default comes back when it closes. Yields whether it applied.

    Every bundle starts a sampler thread (it feeds the per-step msec counters). That thread
    sleeps in steps growing from 2 ms to the sampling period (200 ms), and the end of the
    bundle waits for the thread's current sleep to end. A bundle that ran for about a second
    therefore waits up to 200 ms more before its output moves on. In process, that wait lies
    on the run's critical path once per stage and worker thread. On the benchmark clip
    (472 frames, 2 cores) it was 0.21 s of a 1.44 s run (median of 12 paired runs).

    Beam has no option for the period: BundleProcessor builds ``statesampler.StateSampler``
    with the constructor's default, which this sets for the time of the run. When the
    constructor no longer has the parameter (another Beam version) nothing changes and a
    warning is logged.
    """
    init = statesampler.StateSampler.__init__
    params = list(inspect.signature(init).parameters.values())
    if not params or params[-1].name != "sampling_period_ms" or init.__defaults__ is None:
        _LOG.warning("Beam's StateSampler has no sampling_period_ms default; state sampling left as it is")
        yield False
        return
    saved = init.__defaults__
    init.__defaults__ = (*saved[:-1], period_ms)
    try:
        yield True
    finally:
        init.__defaults__ = saved


@contextlib.contextmanager
def runner_environment(config: RunConfig) -> Iterator[list[str]]:
    """Beam flags for the run; for the DaskRunner with ``dask_client_address: local``, a
    LocalCluster (one single-threaded worker process per core) for the run's lifetime."""
    opts = dict(config.pipeline_options)
    if "DaskRunner" not in str(opts.get("runner", "")) or opts.get("dask_client_address") != "local":
        yield config.beam_args()
        return
    from distributed import LocalCluster
    with LocalCluster(n_workers=os.cpu_count() or 2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        opts["dask_client_address"] = cluster.scheduler_address
        yield RunConfig(opts, config.job).beam_args()
