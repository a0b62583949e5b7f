"""Studies x environments (qgen.study): every pair composes into valid job configs, writes where its names say,
and expands to the same jobs, with the same configs, as the hand-made experiment grid it replaced
(tests/data/experiment_jobs_before.json, recorded at the commit before: one list of job overrides per experiment
as the old Makefile built it, and the sha256 of each sweep's first job config of each shape). The s1, s2 and
ablation entries were re-recorded on 2026-12-07, when their suites changed on purpose (the BIG-bench datasets that
PyPI withdrew left them; SQuAD -> CoQA domains became S2's QA shift), and every AWQ job's digest the same day, when
AWQ's settings changed (search_samples replaced token_stride; clip_skip moved into the adapter)."""

import hashlib
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from qgen import study
from qgen.errors import QgenError
from qgen.validate import check_job

BEFORE = json.loads((Path(__file__).parent / "data" / "experiment_jobs_before.json").read_text())
STUDIES, ENVS = study.options("study"), study.options("env")
OFFLINE_ONLY = {"smoke", "ablation", "s2_powered"}
PAIRS = [(s, e) for s in STUDIES for e in ENVS if e == "offline" or s not in OFFLINE_ONLY]


@pytest.fixture(autouse=True)
def fixed_dirs(monkeypatch):
    monkeypatch.setenv("QGEN_OUTPUT_DIR", "/OUT")  # the values the recorded configs were composed with
    monkeypatch.setenv("QGEN_HOME", "/HOME")


def _pair(experiment: str) -> tuple[str, str]:
    """The (study, env) an old experiment name became: s2_hub_baichuan2 -> (s2, hub_baichuan2), ablation_* ->
    (ablation, offline)."""
    if experiment.startswith("ablation_"):
        return "ablation", "offline"
    for env in sorted(ENVS, key=len, reverse=True):
        if experiment.endswith(f"_{env}"):
            return experiment.removesuffix(f"_{env}"), env
    raise AssertionError(experiment)


def _digest(cfg) -> str:
    from qgen.data.calibration import identity

    values = OmegaConf.to_container(cfg, resolve=True)
    values.pop("study"), values.pop("env")  # the declaration itself, new beside the job settings
    values["calib"] = identity(values["calib"])  # calib options added since, at their off value: as job ids see it
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name,env", PAIRS)
def test_every_study_composes_in_every_environment(name, env):
    cfg = study.compose(name, env)
    check_job(cfg)
    assert cfg.study.name == name and cfg.env.name == env
    assert str(cfg.paths.output_dir) == f"/OUT/experiments/{name}_{env}"
    assert cfg.model.name == {"offline": "smollm2-135m", "hub": "llama-2-7b", "hub_baichuan2": "baichuan2-7b"}[env]
    if env != "offline":
        assert cfg.eval_suite.limit is None and cfg.runtime.device == "cuda"
    assert cfg.calib.name == cfg.calib.dataset  # rows of the S2/S3 matrices are named after the dataset
    commands = study.commands(name, env, python="python")
    assert commands[-1][:4] == ["python", "-m", "qgen.cli", "report"]
    assert commands[-1][commands[-1].index("--out") + 1] == f"experiments/reports/{name}_{env}"
    report = commands[-1][commands[-1].index("--scenario") + 1:]
    against = list(cfg.study.get("against") or [])
    assert report == list(cfg.study.report) + (["--against", *against] if against else [])


@pytest.mark.parametrize("experiment", sorted(BEFORE))
def test_jobs_and_configs_are_those_of_the_old_experiment(experiment):
    name, env = _pair(experiment)
    cfg = study.compose(name, env)
    jobs = [" ".join(j) for j in study.jobs(cfg)]
    before = BEFORE[experiment]
    old = [j.removeprefix("baseline=false ") for j in before["jobs"]]  # smoke: now declared by the study itself
    if name == "ablation":  # the two ablation experiments are the study's two sweeps
        mine = [j for j in jobs if j.split()[-1].startswith(experiment.replace("ablation_", "calib."))]
        assert mine == old
    else:
        assert jobs == old
    for overrides, digest in before["configs"].items():
        job = study.compose(name, env, overrides.removeprefix("baseline=false ").split())
        if name == "ablation":  # was experiments/ablation; now experiments/<study>_<env> like every study
            assert str(job.paths.output_dir) == "/OUT/experiments/ablation_offline"
            job.paths.output_dir = "/OUT/experiments/ablation"
        assert _digest(job) == digest, (experiment, overrides)


def test_axis_changes_and_bad_declarations():
    cfg = study.compose("s2", "offline")
    sweeps = study.sweeps(cfg, {"seed": "1", "quantizer": "gptq"})
    assert sweeps[0] == ["quantizer=none", "bits=fp16", "seed=1"]
    assert sweeps[1][:3] == ["quantizer=gptq", "bits=w4a16,w3a16", "seed=1"]
    assert sweeps[1][3].startswith("calib.dataset=squad,coqa_wikipedia,")
    ablation = study.sweeps(study.compose("ablation", "offline"), {"calib.n_samples": "8", "engine.batch_size": "2"})
    assert ablation == [["seed=42,567", "calib.n_samples=8", "engine.batch_size=2"],  # only the sweep with that axis
                        ["seed=42,567", "calib.seq_len=128,256,512,1024,2048", "engine.batch_size=2"]]
    with pytest.raises(QgenError, match="is not a study; use one of ablation, "):
        study.compose("nope", "offline")
    with pytest.raises(QgenError, match="--set 'seed' is not allowed"):
        study.parse_changes(["seed"])
    cfg.study.sweep = {"seed": 42}
    with pytest.raises(QgenError, match=r"study.sweep.seed=42 is not allowed: use a non-empty list"):
        check_job(cfg)
    cfg = study.compose("s2", "offline")
    cfg.study.report = ["s4"]
    with pytest.raises(QgenError, match=r"study.report.0='s4' is not allowed"):
        check_job(cfg)


def test_a_study_whose_data_cannot_be_had_stops_before_any_job(tmp_path, monkeypatch):
    """Every dataset a study reads is checked before its first job; a withdrawn archive names them all in one line."""
    import argparse
    import subprocess

    from qgen import assets

    monkeypatch.setenv("QGEN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(assets, "_REFUSED_IN_THIS_PROCESS", {})
    started = []

    def run(cmd, **kw):  # one subprocess module serves both: the registry refuses, a job would be recorded
        if "download" in cmd or "pack" in cmd:
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found\n")
        started.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", run)
    cfg = study.compose("s2", "offline")
    needed = study.datasets(cfg)
    assert {"squad", "sst2", "xsum", "coqa_cnn", "rte"} <= set(needed)  # calibration and tests
    args = argparse.Namespace(action="run", study="s2", env="offline", set=None, override=[], dry_run=False)
    with pytest.raises(assets.ArchiveUnavailable, match=r"unavailable here: .*coqa_cnn.*is not served") as err:
        study.run(args)
    assert "\n" not in str(err.value) and started == []


def test_study_datasets_leave_out_self_generated_calibration():
    """calib.dataset=self is text the model samples, not a registered dataset: nothing to prepare for it."""
    needed = study.datasets(study.compose("s2_sources", "offline"))
    assert "self" not in needed and {"sst2", "imdb", "squad", "xsum"} <= set(needed)


def test_overrides_compose_against_the_changed_axes_first_value():
    """--override values are checked against a config the sweep runs: a rotate setting composes once --set picks
    a rotate quantizer, and a key the composed config lacks is one line naming the override, not a traceback."""
    cmds = study.commands("s2_sources", "offline", {"quantizer": "rotate+gptq", "seed": "42"},
                          ["quantizer.methods.rotate.seed=7"])
    assert "quantizer.methods.rotate.seed=7" in cmds[-2] and "quantizer=rotate+gptq" in cmds[-2]
    expected = r"does not compose with quantizer=gptq quantizer.methods.rotate.seed=7: .*rotate"
    with pytest.raises(QgenError, match=expected) as err:
        study.commands("s2_sources", "offline", {"quantizer": "gptq"}, ["quantizer.methods.rotate.seed=7"])
    assert "\n" not in str(err.value)
