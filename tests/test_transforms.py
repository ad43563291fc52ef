"""One TestPipeline per composite transform, on tiny real media and literal elements.

Values are asserted with ``assert_that`` (``equal_to`` or a matcher function that raises
BeamAssertException); files a transform writes are read back with pyarrow after the
pipeline has finished. Decoding helpers (plain functions) are tested directly.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from tests.beam_options import local_pipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to

from models.emotion import CROP_SIZE
from models.registry import FER2013_LABELS
from schemas.frames import frame_schema
from schemas.columns import prob_column
from tests import media
from models.aggregation import AggregationSettings, LABEL_COLUMNS_NULLED_WHEN_FAILED
from transforms.decode import hash_file, is_sampled, iter_frames, probe_container, segment_bounds
from transforms.probe import ProbeVideos
from transforms.segments import SplitIntoWorkUnits, work_units
from core.elements import (ChunkSummary, ContentHash, DeadLetter, FaceChunk, PlannedVideo, ScoredChunk, VideoInfo,
                           VideoInput, VideoOutcome, WorkUnit)
from core.settings import DecodeConfig, EmotionConfig, FacesConfig, FeaturesConfig
from transforms.crops import crop_face
from transforms.emotions import ScoreEmotions
from transforms.faces import ExtractFaces
from transforms.frames import WriteFrames
from transforms.videos import CollectVideoResults, WriteVideoRows

LABELS = FER2013_LABELS


# --- helpers -------------------------------------------------------------------------------

def check(predicate_fn):
    """A matcher for assert_that: ``predicate_fn(actual)`` returns a list of problems."""
    def _match(actual):
        problems = predicate_fn(list(actual))
        if problems:
            raise BeamAssertException("; ".join(problems))
    return _match


def counter(result, name: str) -> int:
    found = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    return sum(c.committed for c in found)


def probed_info(path: Path, video_id: str, segment_seconds=None) -> VideoInfo:
    """What ProbeVideos would emit for ``path`` (used to build work units by hand)."""
    c = probe_container(str(path))
    per_segment, segments = segment_bounds(c.fps, c.frame_count_header, segment_seconds)
    sha, size = hash_file(str(path))
    return VideoInfo(VideoInput(video_id, str(path)), sha, size, c.codec, c.width, c.height, c.fps,
                     c.frame_count_header, per_segment, segments)


def literal_info(video_id: str, frame_count_header: int, segment_frames: int, segments: int,
                 fps: float = 10.0) -> VideoInfo:
    return VideoInfo(VideoInput(video_id, f"/videos/{video_id}.mp4"), "0" * 64, 1000, "avc1", 64, 48, fps,
                     frame_count_header, segment_frames, segments)


def face_chunk(video_id: str, chunk_index: int, crops: np.ndarray, *, last: bool = True) -> FaceChunk:
    """A FaceChunk with one face per frame (frames 0..m-1) around real crops."""
    m = len(crops)
    return FaceChunk(
        video_id=video_id, segment_index=0, chunk_index=chunk_index, last=last, frame_width=640,
        frame_height=360, frames_decoded=m,
        frame_index=np.arange(m, dtype=np.int64), timestamp_s=np.arange(m, dtype=np.float64) / 30.0,
        faces_in_frame=np.ones(m, np.int16), face_frame=np.arange(m, dtype=np.int32),
        face_index=np.zeros(m, np.int16), boxes=np.tile(np.float32([200, 120, 180, 180]), (m, 1)),
        scores=np.full(m, 0.9, np.float32), crops=np.asarray(crops, np.uint8).reshape(-1, CROP_SIZE, CROP_SIZE))


def empty_chunk(video_id: str, chunk_index: int) -> FaceChunk:
    """Two sampled frames, no face in either."""
    return FaceChunk(
        video_id=video_id, segment_index=0, chunk_index=chunk_index, last=True, frame_width=640,
        frame_height=360, frames_decoded=2, frame_index=np.array([0, 1], np.int64),
        timestamp_s=np.array([0.0, 0.1]), faces_in_frame=np.zeros(2, np.int16),
        face_frame=np.zeros(0, np.int32), face_index=np.zeros(0, np.int16),
        boxes=np.zeros((0, 4), np.float32), scores=np.zeros(0, np.float32),
        crops=np.zeros((0, CROP_SIZE, CROP_SIZE), np.uint8))


def extract_faces(chunk_frames: int = 1024, **faces) -> ExtractFaces:
    """ExtractFaces with the default settings but for ``chunk_frames`` and the given faces.* keys."""
    return ExtractFaces(DecodeConfig(chunk_frames=chunk_frames), FacesConfig(**faces), FeaturesConfig())


def write_video_rows(p, root: str, inputs, *, infos=(), summaries=(), failures=(), run_id: str = "run-1"):
    """The per-video stages on literal elements: CollectVideoResults, then WriteVideoRows."""
    def create(name, items):
        return p | name >> beam.Create(list(items))
    results = ({"inputs": create("Inputs", inputs), "infos": create("Infos", infos),
                "unchanged": create("Unchanged", []), "content_hashes": create("Hashes", []),
                "summaries": create("Summaries", summaries), "dead_letters": create("Failures", failures)}
               | CollectVideoResults())
    return results | WriteVideoRows(root, AggregationSettings(LABELS), run_id)


def frames_by_index(chunks):
    """{frame_index: faces_in_frame} over every FaceChunk of a unit."""
    return {int(i): int(n) for c in chunks for i, n in zip(c.frame_index, c.faces_in_frame)}


# --- ProbeVideos, SplitIntoWorkUnits -------------------------------------------------------

def test_probe_videos_reads_container_and_dead_letters_bad_files(single_face, tmp_path):
    empty = media.zero_byte_file(tmp_path / "empty.mp4")
    noise = media.random_bytes_file(tmp_path / "noise.mp4")
    good = VideoInput("single", str(single_face))
    data = single_face.read_bytes()
    expected = VideoInfo(good, hashlib.sha256(data).hexdigest(), len(data), "h264", 640, 360, 30.0, 72,
                         segment_frames=72, segments=1)

    def dead_letters_are_clear(actual):
        by_id = {d.video_id: d for d in actual}
        problems = [] if sorted(by_id) == ["empty", "noise"] else [f"dead letters for {sorted(by_id)}"]
        for d in actual:
            if (d.stage, d.error_type, d.segment_index) != ("probe", "DecodeError", None):
                problems.append(f"{d.video_id}: {d.stage}/{d.error_type}/{d.segment_index}")
        if "empty" in by_id and "empty (0 bytes)" not in by_id["empty"].error_message:
            problems.append(f"empty: {by_id['empty'].error_message!r}")
        if "noise" in by_id and "not a readable video container" not in by_id["noise"].error_message:
            problems.append(f"noise: {by_id['noise'].error_message!r}")
        if "noise" in by_id and by_id["noise"].source_path != str(noise):
            problems.append(f"noise source_path {by_id['noise'].source_path}")
        return problems

    p = local_pipeline()
    planned = [PlannedVideo(good), PlannedVideo(VideoInput("empty", str(empty))),
               PlannedVideo(VideoInput("noise", str(noise)))]
    probed = p | beam.Create(planned) | ProbeVideos(segment_seconds=None)
    hashes = [ContentHash("empty", hashlib.sha256(b"").hexdigest(), 0),
              ContentHash("noise", hashlib.sha256(noise.read_bytes()).hexdigest(), noise.stat().st_size)]
    assert_that(probed.infos, equal_to([expected]), label="ProbedInfo")
    assert_that(probed.content_hashes, equal_to(hashes), label="Hashes")     # unprobeable bytes keep their hash
    assert_that(probed.unchanged, equal_to([]), label="Unchanged")
    assert_that(probed.dead_letters, check(dead_letters_are_clear), label="ProbeDeadLetters")
    result = p.run()
    result.wait_until_finish()
    assert counter(result, "failed_probes") == 2


def test_probe_reads_the_displayed_frame_size_from_headers(single_face, tmp_path):
    """The probe decodes no frame: its size comes from the headers, rotated as OpenCV rotates the frames
    (a phone video stored 640x360 with a 90 degree display matrix decodes to 360x640)."""
    import subprocess
    import imageio_ffmpeg
    rotated = tmp_path / "rotated.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-display_rotation", "90", "-i", str(single_face),
                    "-c", "copy", str(rotated)], check=True)
    for path in (single_face, rotated):
        c = probe_container(str(path))
        first = next(f for f in iter_frames(str(path)) if f.image is not None)
        assert (c.height, c.width) == first.image.shape[:2]
    assert (probe_container(str(rotated)).width, probe_container(str(rotated)).height) == (360, 640)


def test_probe_videos_plans_segments(wolfgang):
    # 472 frames at 23.976 fps; 5 s segments are at most round(119.88) = 120 frames -> 4 equal units of 118.
    with local_pipeline() as p:
        probed = p | beam.Create([PlannedVideo(VideoInput("wolf", str(wolfgang)))]) | ProbeVideos(segment_seconds=5.0)
        assert_that(probed.infos | beam.Map(lambda i: (i.frame_count_header, i.segment_frames, i.segments)),
                    equal_to([(472, 118, 4)]))


def test_split_into_work_units_last_unit_runs_to_end():
    info = literal_info("v", frame_count_header=25, segment_frames=10, segments=3)
    with local_pipeline() as p:
        units = p | beam.Create([info]) | SplitIntoWorkUnits()
        assert_that(units, equal_to([WorkUnit(info, 0, 0, 10), WorkUnit(info, 1, 10, 20),
                                     WorkUnit(info, 2, 20, None)]))


def test_work_units_single_segment_is_whole_file():
    info = literal_info("v", frame_count_header=25, segment_frames=25, segments=1)
    assert [(u.video.video_id, u.segment_index, u.start_frame, u.end_frame) for u in work_units(info)] == [
        ("v", 0, 0, None)]


# --- decode --------------------------------------------------------------------------------

def decode_all(path: Path, fps: float, segment_frames: int, segments: int, sample_fps=None):
    out = []
    for s in range(segments):
        end = None if s == segments - 1 else (s + 1) * segment_frames
        out += [(f.index, f.timestamp_s, f.image is not None)
                for f in iter_frames(str(path), s * segment_frames, end, fps, sample_fps)]
    return out


@pytest.fixture(scope="module")
def wolfgang_passes(wolfgang):
    """(container info, one full pass, the same video in 5 s segments), sampled at 5 fps."""
    c = probe_container(str(wolfgang))
    per_segment, segments = segment_bounds(c.fps, c.frame_count_header, 5.0)
    full = decode_all(wolfgang, c.fps, c.frame_count_header, 1, sample_fps=5.0)
    split = decode_all(wolfgang, c.fps, per_segment, segments, sample_fps=5.0)
    return c, full, split, segments


def test_segments_decode_the_same_frames_and_timestamps_as_one_pass(wolfgang_passes):
    c, full, split, segments = wolfgang_passes
    assert segments == 4
    assert [i for i, _, _ in full] == list(range(c.frame_count_header))
    assert [(i, t) for i, t, _ in split] == [(i, t) for i, t, _ in full]
    times = np.array([t for _, t, _ in full])
    assert times[0] == 0.0
    assert np.all(np.diff(times) > 0)
    # Presentation times of a constant 23.976 fps clip: index / fps.
    np.testing.assert_allclose(times, np.arange(len(times)) / c.fps, atol=1e-3)


def test_one_decoder_thread_decodes_the_same_pixels_as_ffmpegs_default(wolfgang):
    """decode.decoder_threads=1 (the default) changes the CPU cost, not one pixel or timestamp;
    the capture really is opened with that many threads."""
    import cv2
    from transforms.decode import _open
    assert _open(str(wolfgang), 1).get(cv2.CAP_PROP_N_THREADS) == 1
    assert _open(str(wolfgang), 3).get(cv2.CAP_PROP_N_THREADS) == 3
    one = list(iter_frames(str(wolfgang), 100, 160, threads=1))
    default = list(iter_frames(str(wolfgang), 100, 160, threads=0))
    assert [f.index for f in one] == list(range(100, 160))
    assert [(f.index, f.timestamp_s) for f in one] == [(f.index, f.timestamp_s) for f in default]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(one, default))


def test_sampling_keeps_five_frames_a_second_and_is_segment_invariant(wolfgang_passes):
    c, full, split, _ = wolfgang_passes
    sampled = [(i, t) for i, t, kept in full if kept]
    assert [(i, t) for i, t, kept in split if kept] == sampled
    assert [i for i, _ in sampled] == [i for i in range(c.frame_count_header) if is_sampled(i, c.fps, 5.0)]
    duration = full[-1][1] + 1 / c.fps
    assert abs(len(sampled) - 5 * duration) <= 1
    per_second = np.bincount([int(t) for _, t in sampled])
    assert set(per_second[:int(duration)].tolist()) <= {4, 5, 6} and per_second[:int(duration)].mean() == pytest.approx(5, abs=0.1)
    gaps = set(np.diff([i for i, _ in sampled]).tolist())
    assert gaps <= {4, 5}          # fps / sample_fps = 4.8 frames


def test_sampling_rule_edges():
    assert all(is_sampled(i, 30.0, None) for i in range(10))
    assert all(is_sampled(i, 30.0, 30.0) for i in range(10))
    assert [i for i in range(30) if is_sampled(i, 30.0, 10.0)] == list(range(0, 30, 3))


# --- ExtractFaces --------------------------------------------------------------------------

def test_extract_faces_on_single_face_clip(single_face):
    info = probed_info(single_face, "single")

    def faces_everywhere(chunks):
        chunks = sorted(chunks, key=lambda c: c.chunk_index)
        problems = []
        shape = [(c.chunk_index, len(c.frame_index), c.last) for c in chunks]
        if shape != [(0, 32, False), (1, 32, False), (2, 8, True)]:
            problems.append(f"chunks (index, frames, last) {shape}")
        index = np.concatenate([c.frame_index for c in chunks])
        if index.tolist() != list(range(72)):
            problems.append(f"frame indices {index.tolist()}")
        if sum(c.frames_decoded for c in chunks) != 72:
            problems.append(f"frames_decoded {[c.frames_decoded for c in chunks]}")
        for c in chunks:
            if (c.video_id, c.segment_index, c.frame_width, c.frame_height) != ("single", 0, 640, 360):
                problems.append(f"chunk {c.chunk_index} header {c.video_id, c.segment_index, c.frame_width, c.frame_height}")
            if not np.all(c.faces_in_frame >= 1):
                problems.append(f"chunk {c.chunk_index} faceless frames {c.frame_index[c.faces_in_frame < 1]}")
            if c.face_frame.tolist() != list(range(len(c.frame_index))) or np.any(c.face_index != 0):
                problems.append(f"chunk {c.chunk_index}: not one primary face per frame")
            x, y, w, h = c.boxes.T
            if not (np.all(x >= 0) and np.all(y >= 0) and np.all(w > 0) and np.all(h > 0)
                    and np.all(x + w <= 640) and np.all(y + h <= 360)):
                problems.append(f"chunk {c.chunk_index} boxes outside 640x360: {c.boxes}")
            if c.crops.dtype != np.uint8 or c.crops.shape != (len(c.frame_index), 64, 64):
                problems.append(f"chunk {c.chunk_index} crops {c.crops.dtype} {c.crops.shape}")
            if not np.all((c.scores >= 0.7) & (c.scores <= 1)):
                problems.append(f"chunk {c.chunk_index} scores {c.scores}")
            if np.any(np.diff(c.timestamp_s) <= 0):
                problems.append(f"chunk {c.chunk_index} timestamps not increasing")
        return problems

    p = local_pipeline()
    faces = p | beam.Create(list(work_units(info))) | extract_faces(chunk_frames=32, detector="blazeface_short")
    assert_that(faces.values, check(faces_everywhere))
    assert_that(faces.dead_letters, equal_to([]), label="NoDeadLetters")
    result = p.run()
    result.wait_until_finish()
    assert counter(result, "frames_decoded") == 72
    assert counter(result, "frames_with_face") == 72


def test_extract_faces_flags_an_empty_last_chunk_when_chunks_divide_the_unit(single_face):
    info = probed_info(single_face, "single")
    with local_pipeline() as p:
        chunks = (p | beam.Create(list(work_units(info))) | extract_faces(chunk_frames=36)).values
        assert_that(chunks | beam.Map(lambda c: (c.chunk_index, len(c.frame_index), c.frames_decoded, c.last,
                                                 c.crops.shape)),
                    equal_to([(0, 36, 36, False, (36, 64, 64)), (1, 36, 36, False, (36, 64, 64)),
                              (2, 0, 0, True, (0, 64, 64))]))


def test_extract_faces_no_face_video_gives_frames_without_crops(tmp_path):
    info = probed_info(media.no_face_video(tmp_path / "no_face.mp4", n=20), "blank")

    def no_faces(chunks):
        problems = [] if len(chunks) == 1 and chunks[0].last else [f"{len(chunks)} chunks"]
        for c in chunks:
            if c.frame_index.tolist() != list(range(20)) or c.frames_decoded != 20:
                problems.append(f"frames {c.frame_index.tolist()} decoded {c.frames_decoded}")
            if np.any(c.faces_in_frame != 0):
                problems.append(f"faces_in_frame {c.faces_in_frame.tolist()}")
            if c.crops.shape != (0, 64, 64) or c.boxes.shape != (0, 4) or len(c.face_frame):
                problems.append(f"crops {c.crops.shape} boxes {c.boxes.shape}")
        return problems

    with local_pipeline() as p:
        chunks = (p | beam.Create(list(work_units(info))) | extract_faces(chunk_frames=64)).values
        assert_that(chunks, check(no_faces))


def test_extract_faces_face_appears_then_disappears(single_face, tmp_path):
    # 6 faceless frames, 10 frames with a real face (frames 6..15), 6 faceless frames.
    video = media.face_appears_disappears_video(tmp_path / "appear.mp4", single_face, 6, 10, 6)
    info = probed_info(video, "appear", segment_seconds=1.0)     # 10 fps -> segments of 10 frames
    assert info.segments == 3

    def faces_in_the_middle(chunks):
        faces = frames_by_index(chunks)
        if sorted(faces) != list(range(22)):
            return [f"frames {sorted(faces)}"]
        with_face = {i for i, n in faces.items() if n > 0}
        problems = []
        if not set(range(7, 15)) <= with_face:       # the inner face frames, edges allowed 1 frame
            problems.append(f"missing faces in {sorted(set(range(7, 15)) - with_face)}")
        if not with_face <= set(range(5, 17)):
            problems.append(f"faces outside the face frames: {sorted(with_face - set(range(5, 17)))}")
        if any(n > 1 for n in faces.values()):
            problems.append(f"more than one face: {faces}")
        return problems

    with local_pipeline() as p:
        chunks = (p | beam.Create(list(work_units(info))) | extract_faces(chunk_frames=4)).values
        assert_that(chunks, check(faces_in_the_middle))


@pytest.fixture(scope="module")
def two_faces_video(single_face, tmp_path_factory):
    """Six 1280x360 frames: the single-face clip twice, side by side (two real faces)."""
    frames = [np.hstack([f, f]) for f in media.read_frames(single_face, 6)]
    return media.write_video(tmp_path_factory.mktemp("two") / "two_faces.mp4", frames, fps=10.0)


def test_extract_faces_keeps_every_face_when_asked(two_faces_video):
    info = probed_info(two_faces_video, "two")

    def two_faces_each(chunks):
        (c,) = chunks
        problems = []
        if c.faces_in_frame.tolist() != [2] * 6:
            problems.append(f"faces_in_frame {c.faces_in_frame.tolist()}")
        if c.face_frame.tolist() != [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5] or c.face_index.tolist() != [0, 1] * 6:
            problems.append(f"face_frame {c.face_frame.tolist()} face_index {c.face_index.tolist()}")
        area = c.boxes[:, 2] * c.boxes[:, 3]
        if np.any(area[0::2] < area[1::2]):
            problems.append(f"primary face is not the largest: {area}")
        if c.crops.shape != (12, 64, 64):
            problems.append(f"crops {c.crops.shape}")
        return problems

    with local_pipeline() as p:
        chunks = (p | beam.Create(list(work_units(info))) | extract_faces(keep_all_faces=True)).values
        assert_that(chunks, check(two_faces_each))


def test_extract_faces_counts_every_detected_face_when_keeping_only_the_primary(two_faces_video):
    info = probed_info(two_faces_video, "two")

    def primary_only_but_two_counted(chunks):
        (c,) = chunks
        problems = []
        if c.face_index.tolist() != [0] * 6 or c.crops.shape != (6, 64, 64):
            problems.append(f"face_index {c.face_index.tolist()} crops {c.crops.shape}")
        if c.faces_in_frame.tolist() != [2] * 6:
            problems.append(f"faces_in_frame {c.faces_in_frame.tolist()} (two faces in every frame)")
        return problems

    with local_pipeline() as p:
        chunks = (p | beam.Create(list(work_units(info))) | extract_faces(keep_all_faces=False)).values
        assert_that(chunks, check(primary_only_but_two_counted))


# --- ScoreEmotions -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def single_face_crops(single_face) -> np.ndarray:
    """uint8[72, 64, 64]: the primary face of every frame of single_face.mp4, as ExtractFaces crops it."""
    from models.face_detectors import build_detector
    from models.registry import resolve
    detector = build_detector(resolve("blazeface_short"), 0.7)
    crops = []
    for frame in media.read_frames(single_face):
        detections = detector.detect(frame)
        crops.append(crop_face(frame, detections.boxes[0], 0.1))
    return np.stack(crops)


def test_score_emotions_gives_probabilities(single_face_crops):
    chunks = [face_chunk("single", 0, single_face_crops[:40], last=False),
              face_chunk("single", 1, single_face_crops[40:]), empty_chunk("blank", 0)]

    def probabilities(scored):
        problems = []
        by_key = {(s.chunk.video_id, s.chunk.chunk_index): s for s in scored}
        if sorted(by_key) != [("blank", 0), ("single", 0), ("single", 1)]:
            return [f"scored chunks {sorted(by_key)}"]
        for key, s in by_key.items():
            m = len(s.chunk.crops)
            if s.labels != LABELS:
                problems.append(f"{key} labels {s.labels}")
            if s.probs.shape != (m, 7) or s.probs.dtype != np.float32:
                problems.append(f"{key} probs {s.probs.shape} {s.probs.dtype}")
                continue
            if m and not np.allclose(s.probs.sum(axis=1), 1.0, atol=1e-5):
                problems.append(f"{key} row sums {s.probs.sum(axis=1)}")
            if np.any(s.probs < 0) or np.any(s.probs > 1) or not np.all(np.isfinite(s.probs)):
                problems.append(f"{key} probabilities outside [0, 1]")
        if by_key[("blank", 0)].probs.shape != (0, 7):
            problems.append("empty chunk")
        return problems

    with local_pipeline() as p:
        scored = p | beam.Create(chunks) | ScoreEmotions(EmotionConfig())
        assert_that(scored.values, check(probabilities))
        assert_that(scored.dead_letters, equal_to([]), label="NoDeadLetters")


def test_score_emotions_batch_size_does_not_change_results(single_face_crops):
    chunks = [face_chunk("single", 0, single_face_crops[:30]), face_chunk("single", 1, single_face_crops[30:])]

    def same_probabilities(joined):
        problems = []
        for chunk_index, grouped in joined:
            (small,), (large,) = grouped["batch4"], grouped["batch256"]
            if small.shape != large.shape or not np.allclose(small, large, atol=1e-5, rtol=0):
                problems.append(f"chunk {chunk_index}: max |diff| {np.abs(small - large).max()}")
        if sorted(k for k, _ in joined) != [0, 1]:
            problems.append(f"chunks {[k for k, _ in joined]}")
        return problems

    with local_pipeline() as p:
        faces = p | beam.Create(chunks)
        by_batch = {
            name: ((faces | f"Score{name}" >> ScoreEmotions(EmotionConfig(max_batch=size))).values
                   | f"Key{name}" >> beam.Map(lambda s: (s.chunk.chunk_index, s.probs)))
            for name, size in (("batch4", 4), ("batch256", 256))}
        assert_that(by_batch | beam.CoGroupByKey(), check(same_probabilities))


# --- WriteFrames ---------------------------------------------------------------------------

HAPPY = np.float32([0.05, 0.0, 0.05, 0.7, 0.1, 0.05, 0.05])
SAD = np.float32([0.1, 0.05, 0.1, 0.05, 0.6, 0.0, 0.1])


def three_frame_chunk(video_id: str) -> ScoredChunk:
    """Frames 10, 12, 14 of segment 0; frame 12 has no face."""
    crops = np.zeros((2, 64, 64), np.uint8)
    chunk = FaceChunk(
        video_id=video_id, segment_index=0, chunk_index=0, last=True, frame_width=640, frame_height=360,
        frames_decoded=5, frame_index=np.array([10, 12, 14], np.int64),
        timestamp_s=np.array([1.0, 1.2, 1.4]), faces_in_frame=np.array([1, 0, 1], np.int16),
        face_frame=np.array([0, 2], np.int32), face_index=np.array([0, 0], np.int16),
        boxes=np.array([[10, 20, 30, 40], [11, 21, 31, 41]], np.float32),
        scores=np.array([0.9, 0.8], np.float32), crops=crops)
    return ScoredChunk(chunk, np.stack([HAPPY, SAD]), LABELS)


def test_write_frames_writes_rows_with_nulls_for_faceless_frames(tmp_path):
    root = str(tmp_path / "out")
    expected_summary = ChunkSummary(video_id="vid-1", segment_index=0, chunk_index=0, last=True, frames_decoded=5,
                                    frames_sampled=3, frames_with_face=2, label_counts=(0, 0, 0, 1, 1, 0, 0),
                                    last_timestamp_s=1.4, rows_written=3)
    with local_pipeline() as p:
        written = p | beam.Create([three_frame_chunk("vid-1")]) | WriteFrames(root, {"affectflow.run_id": "run-7"})
        assert_that(written.values, equal_to([expected_summary]))
        assert_that(written.dead_letters, equal_to([]), label="NoDeadLetters")

    files = sorted(f.relative_to(root).as_posix() for f in Path(root).rglob("*.parquet"))
    assert files == ["frames/video_id=vid-1/part-00000-00000.parquet"]
    path = Path(root) / files[0]
    table = pq.read_table(path)
    assert table.schema.metadata[b"affectflow.run_id"] == b"run-7"
    assert table.column_names == [f.name for f in frame_schema(LABELS) if f.name != "video_id"]
    assert table.num_rows == 3
    rows = table.to_pylist()
    assert [r["frame_index"] for r in rows] == [10, 12, 14]
    assert [r["timestamp_s"] for r in rows] == [1.0, 1.2, 1.4]
    assert [r["face_found"] for r in rows] == [True, False, True]
    assert [r["faces_in_frame"] for r in rows] == [1, 0, 1]
    assert {(r["segment_index"], r["frame_width"], r["frame_height"]) for r in rows} == {(0, 640, 360)}
    face_columns = ["face_index", "box_x", "box_y", "box_w", "box_h", "detector_score",
                    *[prob_column(l) for l in LABELS], "emotion_label", "emotion_confidence"]
    assert {c: rows[1][c] for c in face_columns} == {c: None for c in face_columns}
    assert table.column("box_x").null_count == 1         # a real null, not 0.0
    for row, probs, box, score in ((rows[0], HAPPY, [10, 20, 30, 40], 0.9), (rows[2], SAD, [11, 21, 31, 41], 0.8)):
        assert row["face_index"] == 0
        assert [row[c] for c in ("box_x", "box_y", "box_w", "box_h")] == box
        assert row["detector_score"] == pytest.approx(score)
        assert [row[prob_column(l)] for l in LABELS] == [float(v) for v in probs]
        assert row["emotion_label"] == LABELS[int(np.argmax(probs))]
        assert row["emotion_confidence"] == float(probs.max())
    assert [rows[0]["emotion_label"], rows[2]["emotion_label"]] == ["happy", "sad"]


def test_write_frames_orders_rows_by_frame_then_face_and_counts_primary_faces(tmp_path):
    root = str(tmp_path / "out")
    # Frame 0 has two faces (given secondary first), frame 1 none, frame 2 one.
    chunk = FaceChunk(
        video_id="multi", segment_index=2, chunk_index=1, last=False, frame_width=640, frame_height=360,
        frames_decoded=3, frame_index=np.array([40, 41, 42], np.int64), timestamp_s=np.array([4.0, 4.1, 4.2]),
        faces_in_frame=np.array([2, 0, 1], np.int16), face_frame=np.array([0, 0, 2], np.int32),
        face_index=np.array([1, 0, 0], np.int16),
        boxes=np.array([[300, 0, 20, 20], [0, 0, 50, 50], [5, 5, 40, 40]], np.float32),
        scores=np.array([0.8, 0.9, 0.95], np.float32), crops=np.zeros((3, 64, 64), np.uint8))
    scored = ScoredChunk(chunk, np.stack([SAD, HAPPY, SAD]), LABELS)
    with local_pipeline() as p:
        summaries = (p | beam.Create([scored]) | WriteFrames(root, {})).values
        assert_that(summaries, equal_to([ChunkSummary("multi", 2, 1, False, 3, 3, 2, (0, 0, 0, 1, 1, 0, 0), 4.2, 4)]))
    table = pq.read_table(Path(root) / "frames" / "video_id=multi" / "part-00002-00001.parquet")
    assert [(r["frame_index"], r["face_index"], r["box_x"], r["emotion_label"]) for r in table.to_pylist()] == [
        (40, 0, 0.0, "happy"), (40, 1, 300.0, "sad"), (41, None, None, None), (42, 0, 5.0, "sad")]


def test_write_frames_skips_the_file_for_an_empty_chunk(tmp_path):
    root = str(tmp_path / "out")
    empty = ScoredChunk(FaceChunk("blank", 1, 3, True, 640, 360, 4, np.zeros(0, np.int64), np.zeros(0),
                                  np.zeros(0, np.int16), np.zeros(0, np.int32), np.zeros(0, np.int16),
                                  np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                                  np.zeros((0, 64, 64), np.uint8)),
                        np.zeros((0, 7), np.float32), LABELS)
    with local_pipeline() as p:
        summaries = (p | beam.Create([empty]) | WriteFrames(root, {})).values
        assert_that(summaries, equal_to([ChunkSummary("blank", 1, 3, True, 4, 0, 0, (0,) * 7, None, 0)]))
    assert list(Path(root).rglob("*.parquet")) == []


# --- CollectVideoResults, WriteVideoRows ---------------------------------------------------

def summary(video_id, segment, chunk, *, last=True, decoded=10, sampled=10, with_face=0, counts=(0,) * 7,
            last_ts=0.9):
    return ChunkSummary(video_id, segment, chunk, last, decoded, sampled, with_face, tuple(counts), last_ts,
                        rows_written=sampled)


def test_video_rows_statuses_errors_and_labels(tmp_path):
    root = str(tmp_path / "out")
    ok, no_face, bad, partial, short, lost = (
        VideoInput(v, f"/videos/{v}.mp4", true_label="happy" if v == "ok" else None)
        for v in ("ok", "no_face", "bad", "partial", "short", "lost"))
    infos = [
        VideoInfo(ok, "a" * 64, 1000, "avc1", 64, 48, 10.0, 20, 10, 2),
        VideoInfo(no_face, "b" * 64, 1000, "avc1", 64, 48, 10.0, 10, 10, 1),
        # 20 frames in segments of 18: segment 1 (frames 18, 19) never reports.
        VideoInfo(partial, "c" * 64, 1000, "avc1", 64, 48, 10.0, 20, 18, 2),
        VideoInfo(short, "d" * 64, 1000, "avc1", 64, 48, 10.0, 100, 100, 1),
    ]
    # ok: 10 frames with a face over two segments, segment 0 in two chunks:
    # angry 1, happy 2, neutral 7 -> top1 neutral; happy 2 >= 0.2 * 10 -> threshold happy.
    summaries = [
        summary("ok", 0, 0, last=False, decoded=5, sampled=5, with_face=5, counts=(1, 0, 0, 1, 0, 0, 3), last_ts=0.4),
        summary("ok", 0, 1, decoded=5, sampled=5, with_face=3, counts=(0, 0, 0, 1, 0, 0, 2), last_ts=0.9),
        summary("ok", 1, 0, decoded=10, sampled=10, with_face=2, counts=(0, 0, 0, 0, 0, 0, 2), last_ts=1.9),
        summary("no_face", 0, 0),
        summary("partial", 0, 0, decoded=18, sampled=18, with_face=18, counts=(0, 0, 0, 18, 0, 0, 0), last_ts=1.7),
        summary("short", 0, 0, decoded=30, sampled=30, with_face=30, counts=(0, 0, 0, 0, 30, 0, 0), last_ts=2.9),
    ]
    failures = [DeadLetter("bad", bad.path, "probe", "DecodeError", "file is empty (0 bytes)")]
    with local_pipeline() as p:
        outcomes = write_video_rows(p, root, [ok, no_face, bad, partial, short, lost], infos=infos,
                                    summaries=summaries, failures=failures)
        assert_that(outcomes, equal_to([
            VideoOutcome("ok", "ok", 20, 10), VideoOutcome("no_face", "no_face", 10, 0),
            VideoOutcome("bad", "failed", 0, 0), VideoOutcome("partial", "failed", 18, 18),
            VideoOutcome("short", "failed", 30, 30), VideoOutcome("lost", "failed", 0, 0)]))

    videos = {r["video_id"]: r for r in pq.read_table(Path(root) / "videos").to_pylist()}
    assert sorted(videos) == ["bad", "lost", "no_face", "ok", "partial", "short"]
    assert {v: r["status"] for v, r in videos.items()} == {
        "ok": "ok", "no_face": "no_face", "bad": "failed", "partial": "failed", "short": "failed", "lost": "failed"}
    assert {v: r["run_id"] for v, r in videos.items()} == dict.fromkeys(videos, "run-1")

    r = videos["ok"]
    assert (r["frames_decoded"], r["frames_sampled"], r["frames_with_face"], r["face_coverage"]) == (20, 20, 10, 0.5)
    assert [r[f"count_{l}"] for l in LABELS] == [1, 0, 0, 2, 0, 0, 7]
    assert r["frac_neutral"] == pytest.approx(0.7)
    assert (r["count_broad_negative"], r["count_broad_positive"], r["count_broad_neutral"]) == (1, 2, 7)
    assert (r["top1_label"], r["threshold_label"], r["threshold_candidate"], r["threshold_candidate_count"],
            r["threshold_denominator"]) == ("neutral", "happy", "happy", 2, 10)
    assert (r["broad_top1_label"], r["broad_threshold_label"]) == ("neutral", "positive")
    assert (r["error"], r["true_label"], r["content_sha256"], r["segments"]) == (None, "happy", "a" * 64, 2)
    assert r["duration_s"] == pytest.approx(2.0)

    r = videos["no_face"]
    assert (r["error"], r["frames_with_face"], r["face_coverage"], r["threshold_denominator"]) == (None, 0, 0.0, 0)
    assert [r[c] for c in LABEL_COLUMNS_NULLED_WHEN_FAILED] == [None] * len(LABEL_COLUMNS_NULLED_WHEN_FAILED)
    assert r["frac_neutral"] is None

    r = videos["bad"]
    assert r["error"] == "probe: DecodeError: file is empty (0 bytes)"
    assert (r["frames_decoded"], r["content_sha256"], r["width"], r["face_coverage"]) == (0, None, None, None)

    assert videos["partial"]["error"] == "aggregate: IncompleteOutput: segments [1] produced no complete frame output"
    assert videos["short"]["error"] == ("decode: TruncatedVideo: decoded 30 of the 100 frames the container header "
                                        "announces; the file is truncated or damaged")
    # A matched input that nothing ever reported on (no probe result, no dead letter) still gets a row.
    assert videos["lost"]["error"] == "aggregate: MissingProbe: the video was never probed"
    for v in ("bad", "partial", "short", "lost"):
        assert [videos[v][c] for c in LABEL_COLUMNS_NULLED_WHEN_FAILED] == [None] * len(LABEL_COLUMNS_NULLED_WHEN_FAILED), v
    # Counts of a failed video are kept (its frames are in the frame table); only its labels are withheld.
    assert videos["partial"]["count_happy"] == 18 and videos["short"]["count_sad"] == 30

    dead = [d for d in pq.read_table(Path(root) / "dead_letters").to_pylist() if d["video_id"] != "lost"]
    assert sorted((d["video_id"], d["stage"], d["error_type"], d["segment_index"], d["run_id"]) for d in dead) == [
        ("bad", "probe", "DecodeError", None, "run-1"),
        ("partial", "aggregate", "IncompleteOutput", None, "run-1"),
        ("short", "decode", "TruncatedVideo", None, "run-1")]
    # Every video has a dead-letter file, empty when nothing failed.
    for v in videos:
        assert (Path(root) / "dead_letters" / f"video_id={v}" / "part-00000.parquet").is_file()
    assert pq.read_table(Path(root) / "dead_letters" / "video_id=ok" / "part-00000.parquet").num_rows == 0


def test_video_rows_have_a_dead_letter_for_every_failed_video(tmp_path):
    root = str(tmp_path / "out")
    lost = VideoInput("lost", "/videos/lost.mp4")
    with local_pipeline() as p:
        outcomes = write_video_rows(p, root, [lost])
        assert_that(outcomes, equal_to([VideoOutcome("lost", "failed", 0, 0)]))
    dead = pq.read_table(Path(root) / "dead_letters").to_pylist()
    assert [(d["video_id"], d["stage"], d["error_type"]) for d in dead] == [("lost", "aggregate", "MissingProbe")]


# --- the stages chained, on a truncated real file --------------------------------------------

def test_truncated_file_is_decoded_as_far_as_it_goes_and_failed(wolfgang, tmp_path):
    """The first 5 % of the Wolfgang clip (its index is at the front, so the start decodes):
    the header still announces 472 frames; what decodes is written, the video is failed."""
    video = media.truncated_copy(wolfgang, tmp_path / "truncated.mp4", fraction=0.05)
    decodable = sum(1 for _ in iter_frames(str(video)))
    assert 0 < decodable < 0.9 * 472
    root = str(tmp_path / "out")
    with local_pipeline() as p:
        planned = p | "Inputs" >> beam.Create([PlannedVideo(VideoInput("trunc", str(video)))])
        probed = planned | ProbeVideos(segment_seconds=5.0)
        faces = probed.infos | SplitIntoWorkUnits() | extract_faces(chunk_frames=8)
        scored = faces.values | ScoreEmotions(EmotionConfig())
        written = scored.values | WriteFrames(root, {})
        results = ({"inputs": planned | beam.Map(lambda v: v.input), "infos": probed.infos,
                    "unchanged": probed.unchanged, "content_hashes": probed.content_hashes,
                    "summaries": written.values,
                    "dead_letters": (probed.dead_letters, faces.dead_letters, scored.dead_letters,
                                     written.dead_letters)}
                   | CollectVideoResults())
        outcomes = results | WriteVideoRows(root, AggregationSettings(LABELS), "run-1")
        assert_that(outcomes, equal_to([VideoOutcome("trunc", "failed", decodable, decodable)]))

    (row,) = pq.read_table(Path(root) / "videos").to_pylist()
    assert (row["frame_count_header"], row["segments"], row["frames_decoded"]) == (472, 4, decodable)
    assert row["error"] == (f"decode: TruncatedVideo: decoded {decodable} of the 472 frames the container header "
                            "announces; the file is truncated or damaged")
    assert row["top1_label"] is None and row["threshold_label"] is None
    frames = pq.read_table(Path(root) / "frames")
    assert sorted(frames.column("frame_index").to_pylist()) == list(range(decodable))
    assert all(frames.column("face_found").to_pylist())


@pytest.mark.parametrize("fps, frames, seconds, expected", [
    (30.0, 480, 10.0, (240, 2)),        # 16 s: two equal 8 s segments, not 10 s + 6 s
    (30.0, 600, 10.0, (300, 2)),        # exactly two full segments
    (30.0, 601, 10.0, (201, 3)),        # one frame over: three segments of at most 10 s
    (25.0, 100, None, (100, 1)),        # segmenting off
    (25.0, 0, 10.0, (1, 1)),            # unknown frame count: one segment to the end of the file
])
def test_segment_bounds_are_equal_and_at_most_segment_seconds(fps, frames, seconds, expected):
    assert segment_bounds(fps, frames, seconds) == expected
