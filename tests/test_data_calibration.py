"""Calibration from registered datasets: `calib=<any dataset>` composes, mixtures follow their weights, and a
prepared calibration set loads fast."""

from __future__ import annotations

import time

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from qgen import conf_store
from qgen.data import calib_configs, registry
from qgen.data.calibration import build_calibration
from qgen.models.tiny import byte_tokenizer


@pytest.fixture(scope="module")
def composed():
    conf_store.register()

    def run(*overrides):
        with initialize_config_dir(config_dir=str(calib_configs.CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    return run


def test_any_registered_dataset_is_a_calib_option(composed):
    default = composed()
    assert default.calib.dataset == "xsum"
    for name in ("squad", "mmlu_stem", "c4", "multiemo_de"):
        cfg = composed(f"calib={name}")
        assert cfg.calib.dataset == cfg.calib.name == name
        assert cfg.calib.n_samples == default.calib.n_samples and cfg.calib.seed == cfg.seed
    assert set(calib_configs.dataset_options()) | {"xsum"} >= set(registry.all_datasets())


def test_mixture_config_file(composed):
    cfg = composed("calib=mix_xsum_squad", "calib.n_samples=8", "calib.seq_len=64")
    assert list(cfg.calib.dataset) == ["xsum", "squad"] and list(cfg.calib.weights) == [3, 1]


@pytest.mark.asset
def test_mixture_takes_weighted_shares(composed):
    for name in ("xsum", "squad"):
        if not (registry.get(name).folder / "calib.jsonl").is_file():
            pytest.skip(f"{name} is not prepared; run `make assets`")
    cfg = composed("calib=mix_xsum_squad", "calib.n_samples=8", "calib.seq_len=64").calib
    calib = build_calibration(cfg, byte_tokenizer())
    assert tuple(calib.input_ids.shape) == (8, 64)
    assert [(s["dataset"], s["windows"]) for s in calib.info["sources"]] == [("xsum", 6), ("squad", 2)]
    again = build_calibration(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), byte_tokenizer())
    assert again.info["tokens_sha256"] == calib.info["tokens_sha256"]  # seeded: reproducible


@pytest.mark.asset
def test_prepared_calibration_set_loads_under_a_second():
    if not (registry.get("xsum").folder / "calib.jsonl").is_file():
        pytest.skip("xsum is not prepared; run `make assets`")
    start = time.perf_counter()
    rows = registry.load_split("xsum", "calib")
    texts = [registry.render(registry.get("xsum").calib_text, r) for r in rows]
    assert time.perf_counter() - start < 1.0 and len(texts) == 800


def test_command_line_calib_options_are_checked_in_one_line():
    from qgen.errors import QgenError
    from qgen.validate import check_overrides

    check_overrides(["-m", "calib=c4,wiki,squad"])  # a sweep over registered datasets
    with pytest.raises(QgenError, match=r"add -m .*calib.dataset=\[c4,wiki\]"):
        check_overrides(["calib=c4,wiki"])
    with pytest.raises(QgenError, match="unknown calib option 'c5'"):
        check_overrides(["-m", "calib=c4,c5"])


# -- calib=self, calib.min_tokens, calib.chat_template in the job -----------------------------------------------

def test_self_is_an_option_and_a_mixture_member(composed):
    from qgen.validate import check_job

    cfg = composed("calib=self")
    assert cfg.calib.dataset == cfg.calib.name == "self" and cfg.calib.n_samples == composed().calib.n_samples
    assert dict(cfg.calib.self) == {"temperature": 1.0, "top_p": 1.0, "start": "bos", "batch_size": 16}
    check_job(cfg)
    mixed = composed("calib.dataset=[xsum,self]", "calib.weights=[3,1]", "calib.self.temperature=0.7")
    check_job(mixed)
    assert mixed.calib.self.temperature == 0.7 and mixed.calib.min_tokens is None and not mixed.calib.chat_template
    # every dataset option and every calib file carries the settings the schema declares, with its defaults
    for option in ("squad", "mix_xsum_squad"):
        assert composed(f"calib={option}").calib.self == cfg.calib.self


@pytest.fixture
def job_of(composed, tmp_path):
    """A Job of tiny-llama calibrating for GPTQ, its model loaded (nothing calibrated or quantized yet)."""
    from qgen.job import Job

    def make(*overrides):
        cfg = composed("model=tiny-llama", "quantizer=gptq", "calib.n_samples=2", "calib.seq_len=16",
                       f"paths.output_dir={tmp_path}", *overrides)
        out = tmp_path / f"job{len(list(tmp_path.glob('job*')))}"
        out.mkdir()
        job = Job(cfg, out)
        job.load_model()
        return job
    return make


TEMPLATE = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}[/{{ m['role'] }}]{% endfor %}"


def test_calibration_key_follows_every_setting(job_of):
    from qgen.cache import make_key

    def key(*overrides, template=None):
        job = job_of(*overrides)
        if template:  # tiny-llama's tokenizer has none (the job refuses chat_template=true as it loads): give one
            job.tokenizer.chat_template = template
            job.cfg.calib.chat_template = True
        return make_key("calibration", job.calibration_identity())

    sampled = ["calib=self", "calib.self.temperature=0.5", "calib.self.top_p=0.9", "calib.self.start=[Hello]",
               "calib.self.batch_size=2", "calib.seed=7", "model.random_init.hidden_size=96",
               "calib.dataset=[xsum,self]"]
    keys = [key(*(["calib=self"] if o != "calib=self" else []), o) for o in sampled]
    assert len(set(keys)) == len(sampled)  # each setting, and the model sampled from, makes its own entry
    assert key("calib=self") == keys[0]  # and the same ones the same
    # a dataset calibration: min_tokens and the chat template (on, and which) decide it; sampling settings do not
    plain = key("calib=xsum")
    assert plain == key("calib=xsum", "calib.self.temperature=0.5", "model.random_init.hidden_size=96")
    assert len({plain, key("calib=xsum", "calib.min_tokens=64"),
                key("calib=xsum", template=TEMPLATE), key("calib=xsum", template=TEMPLATE.replace("[/", "[end "))}) == 4


def test_jobs_that_use_no_new_option_keep_their_ids(job_of, composed):
    """The settings at their off value are not part of the calibration key or the job id: jobs and cache entries
    from before they existed are found again."""
    from omegaconf import OmegaConf

    from qgen.record.results import job_id

    job = job_of("calib=mix_xsum_squad")
    assert job.calibration_identity()["calib"] == {"name": "mix_xsum_squad", "dataset": ["xsum", "squad"],
                                                   "weights": [3, 1], "n_samples": 2, "seq_len": 16, "seed": 42}
    cfg = composed("calib=mix_xsum_squad")
    earlier = OmegaConf.to_container(cfg)
    for key in ("min_tokens", "chat_template", "self"):
        del earlier["calib"][key]
    assert job_id(OmegaConf.create(earlier)) == job_id(cfg)
    assert job_id(composed("calib=mix_xsum_squad", "calib.min_tokens=8")) != job_id(cfg)


def test_self_calibration_samples_the_full_precision_model_once(job_of):
    import torch

    from qgen.data.calibration import build_calibration

    job = job_of("calib=self")
    fp = {k: v.clone() for k, v in job.model.state_dict().items()}
    calib, key = job.calibration()
    assert job.record.data["cache"]["calibration"]["status"] == "miss"
    assert [s["dataset"] for s in job.record.data["calibration"]["sources"]] == ["self"]
    assert calib.input_ids.shape == (2, 16)
    assert all(torch.equal(v, fp[k]) for k, v in job.model.state_dict().items())  # sampling changed no weight
    assert next(job.model.parameters()).device.type == "cpu"  # and left the model where it was
    again = job_of("calib=self")
    calib2, key2 = again.calibration()
    assert key2 == key and again.record.data["cache"]["calibration"]["status"] == "hit"
    assert torch.equal(calib2.input_ids, calib.input_ids)
    assert torch.equal(build_calibration(job.cfg.calib, job.tokenizer, job.model).input_ids, calib.input_ids)
