"""Errors as data: typed outputs of a stage and its dead letters, behind one helper.

A stage's DoFn yields its values and, for what failed, ``TaggedOutput(DEAD_LETTERS,
DeadLetter(...))`` (more tags where a stage has more kinds of output); model stages raise, and
RunInference's exception handling takes the failed batch. The composites here apply the ParDo
or RunInference with those outputs and return them as typed PCollections.

**The DaskRunner workaround lives here, and only here.** Beam 2.77's DaskRunner runs a ParDo
as one Dask bag: every tagged output of the ParDo is the same bag (the runner keys bags by
the producing transform, `dask_runner.DaskBagVisitor`, and `TaggedOutput` values are
unwrapped into it, `transform_evaluator.get_windowed_value`), so each "output" holds the
elements of all of them. Every output therefore goes through a Filter on its element type:
on the other runners the filter passes everything (one fused, cheap step); on Dask it
separates what the runner merged. The filters are added only when the pipeline runs on the
DaskRunner: each transform costs graph building and bundle time (on a 12-frame clip, the
filters of every stage were about 0.1 s of a 0.5 s run). Outputs emitted in ``finish_bundle``
are dropped by that runner as well, which is why no stage here batches across elements (no
BatchElements).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, RunInference

from core.elements import DeadLetter, ScoredChunk
from core.errors import is_transient_type

DEAD_LETTERS = "dead_letters"
MAIN = "main"


class Outputs(NamedTuple):
    """A stage's results and its failures."""
    values: beam.PCollection
    dead_letters: beam.PCollection            # DeadLetter


def _is_a(element: Any, kind: type) -> bool:
    return isinstance(element, kind)


def merges_tagged_outputs(pipeline: beam.Pipeline) -> bool:
    """Whether the pipeline's runner merges a ParDo's tagged outputs (Beam's DaskRunner)."""
    return type(pipeline.runner).__name__ == "DaskRunner"


def only(pcoll: beam.PCollection, kind: type, label: str) -> beam.PCollection:
    """``pcoll``'s elements of type ``kind``: a Filter on the DaskRunner, ``pcoll`` itself elsewhere."""
    if not merges_tagged_outputs(pcoll.pipeline):
        return pcoll
    return pcoll | label >> beam.Filter(_is_a, kind)


class TypedOutputs(beam.PTransform):
    """PCollection -> {"main": values of ``main_type``, tag: values of its type, ...}.

    ``fn`` yields ``main_type`` values and ``TaggedOutput(tag, value)`` for each tag of
    ``tagged``. Every output is filtered by its type (see the module docstring).

    Example::

        outs = units | TypedOutputs(ExtractFacesFn(...), FaceChunk, dead_letters=DeadLetter)
    """

    def __init__(self, fn: beam.DoFn, main_type: type, **tagged: type):
        super().__init__()
        self._fn, self._main_type, self._tagged = fn, main_type, tagged

    def expand(self, pcoll):
        results = pcoll | "Apply" >> beam.ParDo(self._fn).with_outputs(*self._tagged, main=MAIN)
        kinds = {MAIN: self._main_type, **self._tagged}
        return {tag: only(results[tag], kind, f"Only{tag.title().replace('_', '')}") for tag, kind in kinds.items()}


class ParDoWithDeadLetters(beam.PTransform):
    """PCollection -> Outputs(values of ``value_type``, dead letters) for a DoFn that yields values
    and ``TaggedOutput(DEAD_LETTERS, DeadLetter)``."""

    def __init__(self, fn: beam.DoFn, value_type: type):
        super().__init__()
        self._typed = TypedOutputs(fn, value_type, **{DEAD_LETTERS: DeadLetter})

    def expand(self, pcoll):
        outs = pcoll | "Run" >> self._typed
        return Outputs(outs[MAIN], outs[DEAD_LETTERS])


def _as_batch(chunk):
    """A chunk as a one-chunk batch: the handlers skip RunInference's batching (a chunk already
    batches its faces), so every element RunInference sees is a batch."""
    return [chunk]


def _video_of(element) -> tuple[str, Optional[int]]:
    """(video id, segment index or None) of a chunk, a scored chunk or a whole-video element."""
    unit = element.chunk if isinstance(element, ScoredChunk) else element
    return unit.video_id, getattr(unit, "segment_index", None)


def _is_failed_batch(element: Any) -> bool:
    """RunInference's failed output: ``(batch, (exception type, repr, traceback lines))``."""
    return (isinstance(element, tuple) and len(element) == 2 and isinstance(element[0], list)
            and isinstance(element[1], tuple) and len(element[1]) == 3)


def failed_batch_dead_letters(failed: tuple, stage: str) -> list[DeadLetter]:
    """One DeadLetter per chunk of a batch RunInference could not score. The source path is left
    empty (inference does not carry it); the video stage fills it in from the video's input."""
    batch, (exc_type, exc_repr, trace) = failed
    last = trace[-1].strip() if trace else exc_repr
    message = last.split(": ", 1)[1] if last.startswith(exc_type.__name__ + ": ") else exc_repr
    return [DeadLetter(video_id, "", stage, exc_type.__name__, message[:2000], segment, is_transient_type(exc_type))
            for video_id, segment in map(_video_of, batch)]


class RunInferenceWithDeadLetters(beam.PTransform):
    """PCollection[FaceChunk | ScoredChunk] -> Outputs(model outputs of ``value_type``, dead letters).

    Beam's RunInference with its exception handling: a batch the handler raises on becomes
    dead letters of ``stage`` (one per chunk), the rest of the run goes on. One model per
    worker process (RunInference's shared handle).

    Example::

        scored = chunks | RunInferenceWithDeadLetters(EmotionModelHandler(), ScoredChunk, "emotion")
    """

    def __init__(self, handler: ModelHandler, value_type: type, stage: str):
        super().__init__()
        self._handler, self._value_type, self._stage = handler, value_type, stage

    def expand(self, chunks):
        results, failed = (chunks
                           | "AsOneChunkBatches" >> beam.Map(_as_batch)
                           | "RunInference" >> RunInference(self._handler).with_exception_handling())
        values = only(results, self._value_type, "OnlyResults")
        failed_batches = failed.failed_inferences
        if merges_tagged_outputs(chunks.pipeline):
            failed_batches = failed_batches | "OnlyFailedBatches" >> beam.Filter(_is_failed_batch)
        dead = failed_batches | "AsDeadLetters" >> beam.FlatMap(failed_batch_dead_letters, self._stage)
        return Outputs(values, dead)
