"""Runner YAML loading, --set overrides and the checks that run before any work (pipelines.config,
core.settings)."""
from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from core.settings import DEFAULT_BROAD_MAP, JobConfig
from pipelines.cli import main
from pipelines.config import DEFAULT_CONFIG, load_config

DEFAULT_OPTIONS = {"runner": "FnApiRunner", "direct_running_mode": "multi_threading", "direct_num_workers": 0}


def write(tmp_path, text: str):
    path = tmp_path / "runner.yaml"
    path.write_text(text)
    return path


def test_default_yaml_loads():
    """The default config is local.yaml: the in-process FnApiRunner and the settings' defaults."""
    cfg = load_config()
    assert cfg.pipeline_options == DEFAULT_OPTIONS
    assert cfg.beam_args() == ["--runner=FnApiRunner", "--direct_running_mode=multi_threading",
                               "--direct_num_workers=0"]
    job = cfg.job
    assert job.input is None and job.output is None
    assert job.decode.segment_seconds == 10.0 and type(job.decode.segment_seconds) is float
    assert job.decode.sample_fps is None
    assert (job.decode.chunk_frames, job.decode.decoder_threads) == (1024, 1)
    assert (job.faces.detector, job.faces.min_score, job.faces.keep_all_faces) == ("blazeface_short", 0.7, False)
    assert job.emotion.model == "fer_mini_xception"
    assert (job.aggregate.threshold, job.aggregate.fallback) == (0.2, "neutral")
    assert job.aggregate.broad_map == DEFAULT_BROAD_MAP
    assert job.models.paths == {}
    assert job.progress is True


def test_defaults_live_in_the_code_only():
    """local.yaml sets no job default: the settings' declarations are the one source (and docs/configuration.md
    is generated from them)."""
    import yaml
    assert yaml.safe_load(DEFAULT_CONFIG.read_text())["job"] == {}
    assert load_config().job == JobConfig()
    assert load_config().as_dict() == load_config(DEFAULT_CONFIG).as_dict()


def test_set_overrides():
    """--set values (YAML-parsed, job. prefix optional) land in the job and in beam_args()."""
    cfg = load_config(sets=["decode.sample_fps=5", "job.faces.detector=ssd_res10",
                            "pipeline_options.direct_num_workers=2"])
    assert cfg.job.decode.sample_fps == 5.0 and type(cfg.job.decode.sample_fps) is float
    assert cfg.job.faces.detector == "ssd_res10"
    assert cfg.pipeline_options == {**DEFAULT_OPTIONS, "direct_num_workers": 2}
    assert cfg.job.decode.chunk_frames == 1024 and cfg.job.faces.min_score == 0.7


def test_set_null_and_mapping_values():
    """--set values are YAML: null for an optional setting, a flow mapping for a mapping."""
    cfg = load_config(sets=["decode.segment_seconds=null", "models.paths={fer_mini_xception: /w/m.hdf5}",
                            "aggregate.fallback=top1", "faces.keep_all_faces=true"])
    assert cfg.job.decode.segment_seconds is None
    assert cfg.job.models.paths == {"fer_mini_xception": "/w/m.hdf5"}
    assert cfg.job.aggregate.fallback == "top1"
    assert cfg.job.faces.keep_all_faces is True


def test_overrides_mapping():
    """overrides (from --input/--output) set job keys; None values are ignored."""
    cfg = load_config(overrides={"input": "/videos/*.mp4", "output": None, "decode.sample_fps": 2})
    assert (cfg.job.input, cfg.job.output, cfg.job.decode.sample_fps) == ("/videos/*.mp4", None, 2.0)


def test_beam_args_flag_forms():
    """True -> bare flag, False/None dropped, lists repeat the flag."""
    cfg = load_config(sets=["pipeline_options.save_main_session=true", "pipeline_options.streaming=false",
                            "pipeline_options.region=null", "pipeline_options.experiments=[a, b]"])
    assert cfg.beam_args() == ["--runner=FnApiRunner", "--direct_running_mode=multi_threading",
                               "--direct_num_workers=0", "--save_main_session", "--experiments=a", "--experiments=b"]


@pytest.mark.parametrize("sets, expected", [
    (["decode.sampel_fps=5"], "unknown key decode.sampel_fps; allowed under decode: segment_seconds, sample_fps, "
                              "chunk_frames, decoder_threads"),
    (["job.faces.detectr=ssd_res10"], "unknown key faces.detectr; allowed under faces:"),
    (["inptu=/videos"], "unknown key inptu; allowed under job: input, output, archive_root, decode,"),
    (["decoder.sample_fps=5"], "unknown key decoder"),
])
def test_unknown_keys_are_named_with_the_allowed_ones(sets, expected):
    with pytest.raises(ConfigError) as exc:
        load_config(sets=sets)
    assert expected in str(exc.value)


def test_unknown_key_and_top_level_section_in_a_yaml_file(tmp_path):
    path = write(tmp_path, "job:\n  aggregate:\n    treshold: 0.3\n")
    with pytest.raises(ConfigError, match=r"unknown key aggregate\.treshold"):
        load_config(path)
    path = write(tmp_path, "pipeline_options: {runner: FnApiRunner}\njob: {}\njobs:\n  decode: {sample_fps: 5}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert "unknown top-level key(s) ['jobs']" in str(exc.value) and str(path) in str(exc.value)


def test_partial_yaml_gets_defaults(tmp_path):
    """Keys absent from a custom YAML take the declared defaults."""
    path = write(tmp_path, "pipeline_options:\n  runner: DirectRunner\n  direct_num_workers: 4\n"
                           "job:\n  decode: {sample_fps: 10}\n  aggregate: {threshold: 0.05}\n")
    cfg = load_config(path)
    assert cfg.beam_args() == ["--runner=DirectRunner", "--direct_num_workers=4"]
    expected = JobConfig().model_dump()
    expected["decode"]["sample_fps"] = 10.0
    expected["aggregate"]["threshold"] = 0.05
    assert cfg.job.model_dump() == expected
    assert load_config(write(tmp_path, "")).job == JobConfig()          # an empty file changes nothing


def test_layered_fragment_changes_only_its_keys(tmp_path):
    """A calibration fragment over a runner config: job keys merge, pipeline_options come from the
    last file that has them, a broad_map replaces the default whole."""
    dask = Path(__file__).resolve().parent.parent / "runner_configs" / "dask.yaml"
    fragment = write(tmp_path, "job:\n  aggregate:\n    threshold: 0.15\n    fallback: top1\n"
                               "    broad_map: {happy: pos, surprise: pos, angry: neg, disgust: neg, fear: neg, "
                               "sad: neg, neutral: neu}\n")
    cfg = load_config([dask, fragment])
    assert cfg.pipeline_options["runner"].endswith("DaskRunner")
    assert "direct_running_mode" not in cfg.pipeline_options
    assert (cfg.job.aggregate.threshold, cfg.job.aggregate.fallback) == (0.15, "top1")
    assert cfg.job.aggregate.broad_map["happy"] == "pos" and len(cfg.job.aggregate.broad_map) == 7
    assert cfg.job.decode.segment_seconds == 30.0                 # from dask.yaml
    assert cfg.job.faces.detector == "blazeface_short"            # the default


@pytest.mark.parametrize("setting, expected", [
    # Each of these was accepted before and corrupted the output or wasted hours.
    ("decode.sample_fps=0", "decode.sample_fps = 0: Input should be greater than 0"),
    ("decode.segment_seconds=-1", "decode.segment_seconds = -1: Input should be greater than 0"),
    ("decode.chunk_frames=0", "decode.chunk_frames = 0: Input should be greater than or equal to 1"),
    ("decode.decoder_threads=-1", "decode.decoder_threads = -1: Input should be greater than or equal to 0"),
    ("faces.min_score=5", "faces.min_score = 5: Input should be less than or equal to 1"),
    ("faces.crop_margin=-2", "faces.crop_margin = -2: Input should be greater than or equal to 0"),
    ("faces.crop_margin=-1", "faces.crop_margin = -1: Input should be greater than or equal to 0"),
    ("emotion.max_batch=0", "emotion.max_batch = 0: Input should be greater than or equal to 1"),
    ("faces.detector=nope", "faces.detector = 'nope': not a face_detector in the model registry; known: "),
    ("emotion.model=blazeface_short", "emotion.model = 'blazeface_short': not a emotion in the model registry"),
    ("emotion.runtime=bogus", "emotion.runtime = 'bogus': Input should be 'tflite' or 'keras'"),
    ("aggregate.threshold=7", "aggregate.threshold = 7: Input should be less than or equal to 1"),
    ("aggregate.threshold=0", "aggregate.threshold = 0: Input should be greater than 0"),
    ("aggregate.fallback=random", "aggregate.fallback = 'random': Input should be 'neutral' or 'top1'"),
    ("validation.memory_limit=lots", "validation.memory_limit = 'lots': must be a size such as 512MB or 2GB"),
    ("validation.probability_tolerance=0", "validation.probability_tolerance = 0: Input should be greater than 0"),
    ("validation.max_failed_share_fail=1.5", "validation.max_failed_share_fail = 1.5: Input should be less than"),
    ("validation.box_tolerance_px=-1", "validation.box_tolerance_px = -1: Input should be greater than or equal"),
    ("aggregate.broad_map={happy: all, sad: all, neutral: all}",
     "aggregate.broad_map = {'happy': 'all', 'sad': 'all', 'neutral': 'all'}: must map the labels to at least two"),
    ("features.smoothing.window=4", "features.smoothing.window = 4: must be odd"),
    ("features.feature_set=deep", "features = {'feature_set': 'deep'}: feature_set=deep needs embedding or resnet50"),
    ("faces.keep_all_faces=3", "faces.keep_all_faces = 3: Input should be a valid boolean"),
    ("decode.chunk_frames=abc", "decode.chunk_frames = 'abc': Input should be a valid integer"),
    ("decode.chunk_frames=1.5", "decode.chunk_frames = 1.5: Input should be a valid integer"),
    ("emotion.max_batch=true", "emotion.max_batch = True: Input should be a valid integer"),
    ("aggregate.threshold=high", "aggregate.threshold = 'high': Input should be a valid number"),
    ("faces.min_score=true", "faces.min_score = True: Input should be a valid number"),
    ("faces.detector=5", "faces.detector = 5: Input should be a valid string"),
    ("faces.detector=null", "faces.detector = None: Input should be a valid string"),
    ("decode=5", "decode = 5: Input should be a valid dictionary or instance of DecodeConfig"),
])
def test_bad_values_name_the_key_the_value_and_what_is_allowed(setting, expected):
    with pytest.raises(ConfigError) as exc:
        load_config(sets=[setting])
    assert expected in str(exc.value)


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigError) as exc:
        load_config(sets=["decode.sample_fps=0", "aggregate.threshold=7"])
    assert "decode.sample_fps = 0" in str(exc.value) and "aggregate.threshold = 7" in str(exc.value)


def test_set_syntax_errors():
    with pytest.raises(ConfigError, match="--set takes key=value, got 'decode.sample_fps'"):
        load_config(sets=["decode.sample_fps"])
    with pytest.raises(ConfigError, match=r"emotion.model = \{'x': 1\}: Input should be a valid string"):
        load_config(sets=["emotion.model.x=1"])


def test_missing_and_malformed_config_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")
    broken = write(tmp_path, "job:\n  decode: {sample_fps: 5\n")
    with pytest.raises(ConfigError, match=f"config file {broken} is not valid YAML"):
        load_config(broken)


@pytest.mark.parametrize("args", [
    ["--set", "decode.sample_fps=0"],
    ["--set", "faces.crop_margin=-1"],
    ["--set", "validation.memory_limit=lots"],
    ["--config", "BROKEN"],
])
def test_a_bad_config_exits_2_before_anything_is_written(tmp_path, capsys, args):
    """Exit 2 with the key (or the file) named, and no output folder created."""
    broken = write(tmp_path, "job: [unclosed\n")
    args = [str(broken) if a == "BROKEN" else a for a in args]
    out = tmp_path / "out"
    assert main(["run", "--input", str(tmp_path), "--output", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert "affectflow run: error:" in err and (args[1].split("=")[0] in err or str(broken) in err)
    assert not out.exists()


def test_the_default_runner_never_tries_prism(monkeypatch):
    """Beam 2.77's DirectRunner would download the Prism runner binary from GitHub and run the
    job on it; the default config names the FnApiRunner, its batch engine, directly."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability import prism_runner
    tried = []
    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", lambda *a, **k: tried.append(a))
    with beam.Pipeline(options=PipelineOptions(load_config().beam_args())) as p:
        _ = p | beam.Create([1, 2, 3]) | beam.Map(lambda x: x * 2)
    assert tried == []
    # The check is live: the DirectRunner does go to Prism first.
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:   # falls back after the try
        _ = p | beam.Create([1, 2, 3]) | beam.Map(lambda x: x * 2)
    assert len(tried) == 1
