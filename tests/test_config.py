"""Every config-group option composes and validates; bad input is one clear line, before the model loads."""

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import CONF, run_qgen
from qgen import conf_store
from qgen.errors import QgenError
from qgen.validate import GROUPS, check_job, group_options, hydra_launchers

conf_store.register()  # as the entry point does: method and engine settings, calib=<any registered dataset>


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in group_options(g)])
def test_every_group_option_composes_and_validates(group, option):
    from hydra.core.hydra_config import HydraConfig

    if (group, option) == ("launcher", "ray") and "ray" not in hydra_launchers():
        pytest.skip("the Ray launcher plugin is an optional extra (qgen[ray])")
    extra = ["quantizer=none"] if (group, option) == ("bits", "fp16") else []
    extra += ["study=s1"] if group == "env" else []  # an environment is where a study runs
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"{group}={option}", *extra], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # what Hydra does for a job: ${hydra:...} then resolves
    if group != "launcher":
        assert cfg[group] is not None
    if group != "model" or option in ("smollm2-135m", "tiny-llama"):
        check_job(cfg)  # hub-only models are validated by id, which needs no network
    job_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    OmegaConf.to_container(job_cfg, resolve=True)  # every interpolation of the job config resolves


@pytest.mark.parametrize("override,message", [
    ("bits.weight_bits=1", "bits.weight_bits=1 is not allowed: use an integer from 2 to 8"),
    ("bits.weight_bits=9", "bits.weight_bits=9 is not allowed"),
    ("bits=fp16", "16 only with quantizer=none"),
    ("bits.group_size=0", "bits.group_size=0 is not allowed: use a positive integer, or -1"),
    ("bits.group_size=-2", "bits.group_size=-2 is not allowed"),
    ("bits.group_size=abc", "bits.group_size='abc' is not allowed"),
    ("bits.act_bits=5", "bits.act_bits=5 is not allowed"),
    ("model.dtype=int8", "model.dtype='int8' is not allowed"),
    ("model.pretrained=/no/such/model", "model.pretrained='/no/such/model' does not exist"),
    ("calib.dataset=nope", "unknown dataset 'nope'"),
    ("calib.n_samples=0", "calib.n_samples=0 is not allowed"),
    ("export=gguf", "export='gguf' is not allowed: use compressed-tensors, or null"),
    ("quantizer=spqr export=compressed-tensors", "cannot hold spqr weights"),
    ("quantizer=smoothquant bits=w8a8 export=compressed-tensors", "writes weight-only checkpoints"),
    ("quantizer=none bits=fp16 export=compressed-tensors", "quantizer=none quantizes nothing"),
    ("quantizer=gptq quantizer.methods.gptq.desc_act=true export=compressed-tensors", "set static_groups=true"),
    ("quantizer=gptq engine.batch_size=0", "engine.batch_size=0 is not allowed: use a positive integer"),
    ("quantizer=gptq engine.feed=fp", "engine.feed='fp' is not allowed: use one of quantized, full_precision"),
    ("quantizer=gptq engine.true_sequential=maybe", "engine.true_sequential='maybe' is not allowed"),
    ("quantizer=awq+gptq engine.true_sequential=false", "true_sequential=false needs a single method"),
])
def test_bad_values_are_rejected_with_one_line(override, message):
    overrides = override.split()
    if override.startswith("model.pretrained"):
        overrides = ["model.asset=null", override]
    with pytest.raises(QgenError) as err:
        check_job(_compose(*overrides))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_quantizer_none_accepts_any_bits():
    check_job(_compose("quantizer=none", "bits=w2a16"))
    check_job(_compose("quantizer=none", "bits=fp16"))


@pytest.mark.parametrize("args,message", [
    (["quantizer=nope"], "qgen: error: unknown quantizer option 'nope'; available: "),
    (["-m", "bits=w4a16,w9a16"], "qgen: error: unknown bits option 'w9a16'; available:"),
    (["-m", "launcher=ray"], "qgen: error: launcher=ray needs the Ray launcher plugin: pip install 'qgen[ray]'"),
    (["model.asset=null", "model.pretrained=./missing-model"],
     "qgen: error: model.pretrained='./missing-model' does not exist"),
])
def test_command_line_errors_exit_nonzero_with_one_line(tmp_path, args, message):
    proc = run_qgen(*args, f"paths.output_dir={tmp_path}", timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(message), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    # nothing was loaded or evaluated: no results were written for a rejected job
    assert not list(tmp_path.rglob("results.json"))


def test_readme_config_table_is_the_schema():
    from qgen.schema import readme_with_table

    readme = (CONF.parent / "README.md").read_text()
    assert readme_with_table(readme) == readme, "run `python -m qgen.schema README.md` after changing the schema"


def test_spec_words_and_refusals():
    from qgen.spec import Bool, Choice, Float, Int, ListOf, Section, Str

    assert Int(2, 8).allowed() == "an integer from 2 to 8"
    assert Float(0, 1, hi_open=True, nullable=True).allowed() == "a number in [0, 1), or null"
    assert ListOf(item=Str()).allowed() == "a list of strings"
    section = Section(fields={"n": Int(1, default=3), "on": Bool(), "how": Choice(values=("a", "b"), optional=True)})
    assert section.validate({"on": True}) == {"n": 3, "on": True}
    for bad, message in [({"on": "yes"}, "on='yes' is not allowed: use true or false"),
                         ({"on": True, "n": True}, "n=True is not allowed: use a positive integer"),
                         ({"on": True, "n": 2.0}, "n=2.0 is not allowed: use a positive integer"),
                         ({"on": True, "how": "c"}, "how='c' is not allowed: use one of a, b"),
                         ({"on": True, "x": 1}, "x is not a setting; settings: n, on, how"),
                         ({}, "on is missing: set it to true or false")]:
        with pytest.raises(QgenError) as err:
            section.validate(bad)
        assert str(err.value) == message
    assert Float(0, lo_open=True, infinite=True).check("t", float("inf")) == float("inf")
    with pytest.raises(QgenError, match="t=nan is not allowed"):
        Float(0).check("t", float("nan"))
