"""Runner YAML loading, --set overrides and validation (pipelines.config)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from pipelines.config import DEFAULT_CONFIG, ConfigError, JobConfig, load_config
from transforms.aggregate import DEFAULT_BROAD_MAP


def write(tmp_path, text: str):
    path = tmp_path / "runner.yaml"
    path.write_text(text)
    return path


def test_default_yaml_loads():
    """The default config is local.yaml: DirectRunner and the documented job settings."""
    cfg = load_config()
    assert cfg.pipeline_options == {"runner": "DirectRunner", "direct_running_mode": "multi_threading",
                                    "direct_num_workers": 0, "allow_unsafe_triggers": True}
    assert cfg.beam_args() == ["--runner=DirectRunner", "--direct_running_mode=multi_threading",
                               "--direct_num_workers=0", "--allow_unsafe_triggers"]
    job = cfg.job
    assert job.input is None and job.output is None
    assert job.decode.segment_seconds == 10.0 and type(job.decode.segment_seconds) is float
    assert job.decode.sample_fps is None
    assert job.decode.chunk_frames == 1024
    assert job.decode.decoder_threads == 1
    assert job.faces.detector == "blazeface_short"
    assert job.faces.min_score == 0.7
    assert job.faces.keep_all_faces is False
    assert job.emotion.model == "fer_mini_xception"
    assert job.aggregate.threshold == 0.2
    assert job.aggregate.fallback == "neutral"
    assert job.aggregate.broad_map == DEFAULT_BROAD_MAP
    assert job.models.paths == {}
    assert job.progress is True


def test_default_path_equals_explicit_path():
    """load_config() and load_config(DEFAULT_CONFIG) are the same configuration."""
    assert load_config().as_dict() == load_config(DEFAULT_CONFIG).as_dict()


def test_yaml_job_section_matches_dataclass_defaults():
    """runner_configs/local.yaml's job section and the JobConfig defaults cannot drift apart.

    input and output have no default (they are given per run) and are absent from the YAML."""
    raw_job = yaml.safe_load(DEFAULT_CONFIG.read_text())["job"]
    defaults = dataclasses.asdict(JobConfig())
    assert {k: v for k, v in defaults.items() if k not in raw_job} == {"input": None, "output": None}
    assert raw_job == {k: defaults[k] for k in raw_job}
    assert dataclasses.asdict(load_config().job) == defaults


def test_set_overrides():
    """--set values (YAML-parsed, job. prefix optional) land in the job and in beam_args()."""
    cfg = load_config(sets=["decode.sample_fps=5", "job.faces.detector=ssd_res10",
                            "pipeline_options.direct_num_workers=2"])
    assert cfg.job.decode.sample_fps == 5.0 and type(cfg.job.decode.sample_fps) is float
    assert cfg.job.faces.detector == "ssd_res10"
    assert cfg.pipeline_options == {"runner": "DirectRunner", "direct_running_mode": "multi_threading",
                                    "direct_num_workers": 2, "allow_unsafe_triggers": True}
    assert cfg.beam_args() == ["--runner=DirectRunner", "--direct_running_mode=multi_threading",
                               "--direct_num_workers=2", "--allow_unsafe_triggers"]
    # untouched settings keep the YAML values
    assert cfg.job.decode.chunk_frames == 1024
    assert cfg.job.faces.min_score == 0.7


def test_set_null_and_mapping_values():
    """--set values are YAML: null for an Optional, a flow mapping for a dict."""
    cfg = load_config(sets=["decode.segment_seconds=null", "models.paths={fer_mini_xception: /w/m.hdf5}",
                            "aggregate.fallback=top1", "faces.keep_all_faces=true"])
    assert cfg.job.decode.segment_seconds is None
    assert cfg.job.models.paths == {"fer_mini_xception": "/w/m.hdf5"}
    assert cfg.job.aggregate.fallback == "top1"
    assert cfg.job.faces.keep_all_faces is True


def test_overrides_mapping():
    """overrides (from --input/--output) set job keys; None values are ignored."""
    cfg = load_config(overrides={"input": "/videos/*.mp4", "output": None, "decode.sample_fps": 2})
    assert cfg.job.input == "/videos/*.mp4"
    assert cfg.job.output is None
    assert cfg.job.decode.sample_fps == 2.0


def test_beam_args_flag_forms():
    """True -> bare flag, False/None dropped, lists repeat the flag."""
    cfg = load_config(sets=["pipeline_options.save_main_session=true", "pipeline_options.streaming=false",
                            "pipeline_options.region=null", "pipeline_options.experiments=[a, b]"])
    assert cfg.beam_args() == ["--runner=DirectRunner", "--direct_running_mode=multi_threading",
                               "--direct_num_workers=0", "--allow_unsafe_triggers", "--save_main_session", "--experiments=a",
                               "--experiments=b"]


def test_unknown_key_in_nested_section():
    """A typo inside a job section is rejected naming the full dotted key."""
    with pytest.raises(ConfigError) as exc:
        load_config(sets=["decode.sampel_fps=5"])
    message = str(exc.value)
    assert "decode.sampel_fps" in message
    assert "allowed under decode: chunk_frames, decoder_threads, sample_fps, segment_seconds" in message


def test_unknown_key_in_nested_section_with_job_prefix():
    """job.faces.detectr is reported as faces.detectr (the job. prefix is optional everywhere)."""
    with pytest.raises(ConfigError, match=r"unknown key\(s\) faces\.detectr"):
        load_config(sets=["job.faces.detectr=ssd_res10"])


def test_unknown_key_directly_in_job():
    """A typo directly under job is rejected by name, with the allowed job keys."""
    with pytest.raises(ConfigError) as exc:
        load_config(sets=["inptu=/videos"])
    message = str(exc.value)
    assert "unknown key(s) inptu;" in message
    assert ("allowed under job: aggregate, decode, emotion, faces, features, input, models, output, progress, "
            "validation") in message


def test_unknown_section_in_job():
    """An unknown job section (here reached through a dotted key) is named."""
    with pytest.raises(ConfigError, match=r"unknown key\(s\) decoder"):
        load_config(sets=["decoder.sample_fps=5"])


def test_unknown_key_in_yaml_file(tmp_path):
    """Unknown keys in the YAML itself are rejected the same way, with the dotted key."""
    path = write(tmp_path, "pipeline_options: {runner: DirectRunner}\njob:\n  aggregate:\n    treshold: 0.3\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) aggregate\.treshold"):
        load_config(path)


def test_unknown_top_level_section_rejected(tmp_path):
    """A runner YAML has pipeline_options and job and nothing else."""
    path = write(tmp_path, "pipeline_options: {runner: DirectRunner}\njob: {}\njobs:\n  decode: {sample_fps: 5}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    message = str(exc.value)
    assert "unknown top-level key(s) ['jobs']" in message
    assert str(path) in message


def test_partial_yaml_gets_defaults(tmp_path):
    """Keys absent from a custom YAML take the dataclass defaults."""
    path = write(tmp_path, "pipeline_options:\n  runner: DirectRunner\n  direct_num_workers: 4\n"
                           "job:\n  decode: {sample_fps: 10}\n  aggregate: {threshold: 0.05}\n")
    cfg = load_config(path)
    assert cfg.beam_args() == ["--runner=DirectRunner", "--direct_num_workers=4"]
    assert cfg.job.decode.sample_fps == 10.0
    assert cfg.job.aggregate.threshold == 0.05
    expected = dataclasses.asdict(JobConfig())
    expected["decode"]["sample_fps"] = 10.0
    expected["aggregate"]["threshold"] = 0.05
    assert dataclasses.asdict(cfg.job) == expected


def test_empty_yaml_is_all_defaults(tmp_path):
    """An empty file layered on local.yaml changes nothing."""
    cfg = load_config(write(tmp_path, ""))
    assert cfg.pipeline_options == load_config().pipeline_options
    assert dataclasses.asdict(cfg.job) == dataclasses.asdict(JobConfig())


def test_layered_fragment_changes_only_its_keys(tmp_path):
    """A calibration fragment over a runner config: job keys merge, pipeline_options come from the
    last file that has them, a broad_map replaces the default whole."""
    dask = Path(__file__).resolve().parent.parent / "runner_configs" / "dask.yaml"
    fragment = write(tmp_path, "job:\n  aggregate:\n    threshold: 0.15\n    fallback: top1\n"
                               "    broad_map: {happy: pos, neutral: neu}\n")
    cfg = load_config([dask, fragment])
    assert cfg.pipeline_options["runner"].endswith("DaskRunner")
    assert "direct_running_mode" not in cfg.pipeline_options
    assert (cfg.job.aggregate.threshold, cfg.job.aggregate.fallback) == (0.15, "top1")
    assert cfg.job.aggregate.broad_map == {"happy": "pos", "neutral": "neu"}
    assert cfg.job.decode.segment_seconds == 30.0                 # from dask.yaml
    assert cfg.job.faces.detector == "blazeface_short"            # from local.yaml


def test_missing_config_file(tmp_path):
    """A config path that does not exist is a ConfigError naming it."""
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_config(missing)


def test_bool_setting_rejects_integer():
    """faces.keep_all_faces=3 is not true/false."""
    with pytest.raises(ConfigError, match="faces.keep_all_faces must be true or false, got 3"):
        load_config(sets=["faces.keep_all_faces=3"])


def test_int_setting_rejects_string():
    """decode.chunk_frames=abc is not an integer."""
    with pytest.raises(ConfigError, match="decode.chunk_frames must be an integer, got 'abc'"):
        load_config(sets=["decode.chunk_frames=abc"])


def test_int_setting_rejects_float_and_bool():
    """chunk_frames=1.5 and emotion.max_batch=true are not integers."""
    with pytest.raises(ConfigError, match="decode.chunk_frames must be an integer, got 1.5"):
        load_config(sets=["decode.chunk_frames=1.5"])
    with pytest.raises(ConfigError, match="emotion.max_batch must be an integer, got True"):
        load_config(sets=["emotion.max_batch=true"])


def test_float_setting_rejects_string():
    """aggregate.threshold=high is not a number."""
    with pytest.raises(ConfigError, match="aggregate.threshold must be a number, got 'high'"):
        load_config(sets=["aggregate.threshold=high"])


def test_float_setting_rejects_bool():
    """faces.min_score=true is not a number."""
    with pytest.raises(ConfigError, match="faces.min_score must be a number"):
        load_config(sets=["faces.min_score=true"])


def test_str_setting_rejects_number_and_null():
    """faces.detector=5 is not a string; a non-Optional setting cannot be null."""
    with pytest.raises(ConfigError, match="faces.detector must be a string, got 5"):
        load_config(sets=["faces.detector=5"])
    with pytest.raises(ConfigError, match="faces.detector must not be null"):
        load_config(sets=["faces.detector=null"])


def test_section_must_be_mapping():
    """decode=5 replaces a section with a scalar: rejected naming the section."""
    with pytest.raises(ConfigError, match="decode must be a mapping, got int"):
        load_config(sets=["decode=5"])


def test_set_without_equals():
    """--set needs key=value."""
    with pytest.raises(ConfigError, match="--set takes key=value, got 'decode.sample_fps'"):
        load_config(sets=["decode.sample_fps"])


def test_set_through_a_scalar():
    """emotion.model.x=1: emotion.model is a string, not a section."""
    with pytest.raises(ConfigError, match="cannot set job.emotion.model.x: model is not a section"):
        load_config(sets=["emotion.model.x=1"])


@pytest.mark.parametrize("setting, message", [
    ("decode.decoder_threads=-1", "decode.decoder_threads must be >= 0"),
    ("validation.probability_tolerance=0", "probability_tolerance must be > 0"),
    ("validation.max_failed_share_fail=1.5", "max_failed_share_fail must be in [0, 1]"),
    ("validation.box_tolerance_px=-1", "box_tolerance_px must be >= 0"),
])
def test_bad_settings_fail_when_the_config_loads(setting, message):
    """Before any video is decoded: a usage error (exit 2), not a finished run marked invalid."""
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, None, [setting])


def test_the_default_runner_never_tries_prism(tmp_path, monkeypatch):
    """Beam 2.77's DirectRunner would download the Prism runner binary from GitHub and run the
    job on it; the default config keeps it on the FnApiRunner (runner_configs/local.yaml)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability import prism_runner
    tried = []
    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", lambda *a, **k: tried.append(a))
    with beam.Pipeline(options=PipelineOptions(load_config().beam_args())) as p:
        _ = p | beam.Create([1, 2, 3]) | beam.Map(lambda x: x * 2)
    assert tried == []
    # The check is live: without the option the DirectRunner does go to Prism first.
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:   # falls back after the try
        _ = p | beam.Create([1, 2, 3]) | beam.Map(lambda x: x * 2)
    assert len(tried) == 1
