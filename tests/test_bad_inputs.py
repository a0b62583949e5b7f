"""Bad input, as a new user types it: every config group, broken model folders and broken data files. Each one
must stop with exit code 2 and one line `qgen: error: ...` naming what was wrong and what is allowed — no traceback,
nothing expensive started (no job runs; for the checks that need the model, nothing after loading it), and no
result already written is touched."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from conftest import run_qgen, write_user_dataset

# (command line, a piece of the one line that must come out). {tmp}: the test's temporary folder.
BEFORE_ANYTHING_LOADS = [
    # model
    ("model.dtype=int8", "model.dtype='int8' is not allowed: use one of float32, bfloat16, float16"),
    ("model.trust_remote_code=maybe", "model.trust_remote_code='maybe' is not allowed: use true or false"),
    ("model.asset=nope", "model.asset='nope' is not allowed: use one of smollm2-135m-instruct"),
    ("model=nope", "unknown model option 'nope'"),
    ("model.asset=null model.pretrained=/no/such/model", "model.pretrained='/no/such/model' does not exist"),
    ("model.asset=null model.pretrained=a/b/c", "model.pretrained='a/b/c' is neither a folder nor a hub id"),
    ("model.asset=null model.pretrained='not a hub id!'", "could not parse the override"),
    ("model.asset=null model.pretrained=null", "model.pretrained is null"),
    ("model=tiny-llama model.random_init.hidden_size=0", "model.random_init.hidden_size=0 is not allowed"),
    ("model=tiny-llama +model.random_init.hiden_size=8", "model.random_init.hiden_size is not a setting"),
    ("+model.revison=main", "model.revison is not a setting of model; settings: name, pretrained"),
    # calib
    ("calib.dataset=nope", "calib.dataset='nope': unknown dataset 'nope'"),
    ("calib=nope", "unknown calib option 'nope'"),
    ("calib.dataset=[]", "calib.dataset=[] is not allowed"),
    ("calib.n_samples=0", "calib.n_samples=0 is not allowed: use an integer from 1 to 1000000"),
    ("calib.n_samples=-5", "calib.n_samples=-5 is not allowed"),
    ("calib.seq_len=0", "calib.seq_len=0 is not allowed: use a positive integer"),
    ("calib.seq_len=abc", "calib.seq_len='abc' is not allowed"),
    ("calib.seed=-1", "calib.seed=-1 is not allowed: use an integer from 0 to 4294967295"),
    ("calib.weights=[1,2]", "calib.weights has 2 entries for 1 datasets"),
    ("calib.dataset=[xsum,squad] calib.weights=[1,-1]", "calib.weights.1=-1 is not allowed: use a positive number"),
    ("+calib.min_token=5", "calib.min_token is not a setting of calib"),
    ("calib.min_tokens=-1", "calib.min_tokens=-1 is not allowed: use a positive integer, or null"),
    ("calib.min_tokens=0", "calib.min_tokens=0 is not allowed: use a positive integer, or null"),
    ("calib=self calib.min_tokens=64", "calib.min_tokens=64 has no effect with calib.dataset=self"),
    ("calib.chat_template=maybe", "calib.chat_template='maybe' is not allowed: use true or false"),
    ("calib=self calib.chat_template=true", "calib.chat_template=true has no effect with calib.dataset=self"),
    ("calib.self.temperature=-1", "calib.self.temperature=-1 is not allowed: use a positive number"),
    ("calib.self.temperature=0", "calib.self.temperature=0 is not allowed: use a positive number"),
    ("calib.self.top_p=1.5", "calib.self.top_p=1.5 is not allowed: use a number in (0, 1]"),
    ("calib.self.top_p=0", "calib.self.top_p=0 is not allowed: use a number in (0, 1]"),
    ("calib.self.start=eos", "calib.self.start='eos' is not allowed: use bos or a list of texts (at least 1)"),
    ("calib.self.start=[]", "calib.self.start=[] is not allowed: use bos or a list of texts (at least 1)"),
    ("calib.self.batch_size=0", "calib.self.batch_size=0 is not allowed: use a positive integer"),
    ("+calib.self.temprature=0.5", "calib.self.temprature is not a setting of calib.self; settings: temperature"),
    ("calib.dataset=[xsum,self] calib.weights=[1]", "calib.weights has 1 entries for 2 datasets"),
    ("calib.dataset=[xsum,slef]", "calib.dataset.1='slef': unknown dataset 'slef'"),
    # quantizer and its methods
    ("quantizer=nope", "unknown quantizer option 'nope'"),
    ("quantizer=gptq engine.batch_size=0", "engine.batch_size=0 is not allowed: use a positive integer"),
    ("quantizer=gptq engine.feed=fp", "engine.feed='fp' is not allowed: use one of quantized, full_precision"),
    ("quantizer=gptq engine.true_sequential=maybe", "engine.true_sequential='maybe' is not allowed"),
    ("quantizer=awq+gptq engine.true_sequential=false", "true_sequential=false needs a single method"),
    ("quantizer=gptq quantizer.methods.gptq.damp_percent=0",
     "quantizer.methods.gptq.damp_percent=0 is not allowed: use a number in (0, 10]"),
    ("quantizer=gptq +quantizer.methods.gptqq={}", "quantizer.methods.gptqq is not a quantization method; use awq"),
    ("quantizer=gptq +quantizer.methods.gptq.blocksize=64", "quantizer.methods.gptq.blocksize is not a setting"),
    ("quantizer=gptq quantizer.methods.gptq.desc_act=sometimes", "quantizer.methods.gptq.desc_act='sometimes' is not "
                                                              "allowed: use true or false"),
    ("quantizer=awq quantizer.methods.awq.max_shrink=1.5", "quantizer.methods.awq.max_shrink=1.5 is not allowed: use a "
                                                         "number in [0, 1)"),
    ("quantizer=awq quantizer.methods.awq.n_grid=0", "quantizer.methods.awq.n_grid=0 is not allowed"),
    ("quantizer=smoothquant bits=w8a8 quantizer.methods.smoothquant.static=true",
     "needs bits.act_granularity=per_tensor"),
    ("quantizer=spqr quantizer.methods.spqr.outlier_threshold=-1", "quantizer.methods.spqr.outlier_threshold=-1 is not "
                                                                "allowed"),
    ("quantizer=rotate+rtn quantizer.methods.rotate.seed=-1", "quantizer.methods.rotate.seed=-1 is not allowed: use "
                                                               "an integer from 0 to 4294967295"),
    ("quantizer=rtn +quantizer.methods.rotate={}", "rotate transforms the whole model before any block is quantized: "
                                                   "list it first and follow it with a method that quantizes"),
    ("quantizer=rotate+rtn export=compressed-tensors", "cannot hold rotate weights: the online Hadamard rotation of "
                                                       "down_proj's input is not part of the format"),
    ("quantizer=gptq engine.dtype=int8", "engine.dtype='int8' is not allowed: use one of auto, float32"),
    ("quantizer=gptq engine.dtyp=bfloat16", "engine.dtyp is not a setting of engine; settings: batch_size"),
    ("quantizer=gptq quantizer.batch_size=2", "quantizer.batch_size is not a setting of quantizer; settings: name"),
    # bits
    ("bits.weight_bits=1", "bits.weight_bits=1 is not allowed: use an integer from 2 to 8 (16 only with "
                           "quantizer=none)"),
    ("bits.weight_bits=9", "bits.weight_bits=9 is not allowed"),
    ("bits=fp16", "16 only with quantizer=none"),
    ("bits=w9a16", "unknown bits option 'w9a16'"),
    ("bits.group_size=0", "bits.group_size=0 is not allowed: use a positive integer, or -1 for per channel"),
    ("bits.group_size=-2", "bits.group_size=-2 is not allowed"),
    ("bits.group_size=abc", "bits.group_size='abc' is not allowed"),
    ("bits.act_bits=5", "bits.act_bits=5 is not allowed: use one of 4, 6, 8, 16"),
    ("bits.symmetric=maybe", "bits.symmetric='maybe' is not allowed: use true or false"),
    ("bits.act_granularity=per_row", "bits.act_granularity='per_row' is not allowed: use one of per_token, "
                                     "per_tensor"),
    # eval_suite
    ("eval_suite=nope", "unknown eval_suite option 'nope'"),
    ("eval_suite.tasks=[no_such_task]", "eval_suite.tasks.0='no_such_task' is not allowed: use a qgen task"),
    ("eval_suite.batch_size=0", "eval_suite.batch_size=0 is not allowed: use a positive integer"),
    ("eval_suite.num_fewshot=-1", "eval_suite.num_fewshot=-1 is not allowed: use a non-negative integer, or null"),
    ("eval_suite.limit=0", "eval_suite.limit=0 is not allowed"),
    ("eval_suite.limit=-3", "eval_suite.limit=-3 is not allowed"),
    ("eval_suite=ppl eval_suite.perplexity=[]", "eval_suite=ppl has nothing to score"),
    ("eval_suite.perplexity.0.window=1", "eval_suite.perplexity.0.window=1 is not allowed: use an integer of at "
                                         "least 2"),
    ("eval_suite.perplexity.0.dataset=nope", "eval_suite.perplexity.0.dataset='nope': unknown dataset"),
    ("eval_suite.bootstrap_iters=-1", "eval_suite.bootstrap_iters=-1 is not allowed"),
    ("eval_suite.max_length=0", "eval_suite.max_length=0 is not allowed"),
    # runtime, paths, logger, launcher, export, seed and the other top-level switches
    ("runtime.device=gpu", "runtime.device='gpu' is not allowed: use auto, cpu, cuda, cuda:N or mps"),
    ("runtime.threads=0", "runtime.threads=0 is not allowed: use a positive integer, or null"),
    ("runtime.eval_dtype=int4", "runtime.eval_dtype='int4' is not allowed"),
    ("paths.output_dir={tmp}/a-file/runs", "is a file, not a folder"),
    ("paths.qgen_home={tmp}/a-file", "is a file, not a folder"),
    ("logger=nope", "unknown logger option 'nope'"),
    ("study=nope", "unknown study option 'nope'; available: ablation, crosslingual, s1, s2"),
    ("env=offline", "env=offline needs a study: add study=<name>"),
    ("study=s2 study.sweep.seed=42", "study.sweep.seed=42 is not allowed: use a non-empty list of values"),
    ("study=s2 study.report=[s4]", "study.report.0='s4' is not allowed: use one of s1, s2, s3, ablation"),
    ("logger=wandb logger.mode=sometimes", "logger.mode='sometimes' is not allowed: use one of offline, online"),
    ("logger=wandb logger.tags=5", "logger.tags=5 is not allowed: use a list of strings"),
    ("launcher=nope", "unknown launcher option 'nope'"),
    ("-m launcher=slurm quantizer=rtn", "launcher=slurm needs hydra.launcher.partition"),
    ("-m launcher=slurm hydra.launcher.partition=gpu hydra.launcher.mem_gb=0", "hydra.launcher.mem_gb=0 is not "
                                                                               "allowed"),
    ("export=gguf", "export='gguf' is not allowed: use compressed-tensors, or null"),
    ("quantizer=spqr export=compressed-tensors", "cannot hold spqr weights"),
    ("seed=notanumber", "seed='notanumber' is not allowed: use an integer from 0 to 4294967295"),
    ("seed=-1", "seed=-1 is not allowed"),
    ("baseline=maybe", "baseline='maybe' is not allowed: use true or false"),
    ("resume=2", "resume=2 is not allowed: use true or false"),
    ("+colour=blue", "colour is not a setting; settings: model, calib"),
    # sweeps: the line names the job
    ("-m calib.n_samples=16,0", "job 1 of 2 (calib.n_samples=0 paths.output_dir="),
    ("quantizer=gptq,awq", "names several options: add -m"),
]


@pytest.fixture
def no_job(monkeypatch):
    """main() in this process, with the job itself replaced: reaching it means a bad input got through."""
    import qgen.main

    def started(*a, **k):
        raise AssertionError("the job started: the bad input was not refused before anything loads")

    monkeypatch.setattr(qgen.main, "job", started)
    return qgen.main.main


def _run_main(main, argv: list[str], capsys) -> tuple[int, list[str]]:
    capsys.readouterr()  # what the test's own setup printed
    old = sys.argv
    sys.argv = ["qgen.main", *argv]
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        sys.argv = old
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return exit_info.value.code, [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("args,message", BEFORE_ANYTHING_LOADS, ids=[a for a, _ in BEFORE_ANYTHING_LOADS])
def test_bad_input_is_one_line_before_anything_loads(tmp_path, no_job, capsys, args, message):
    (tmp_path / "a-file").write_text("not a folder")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in _split(args)]
    if not any(a.startswith("paths.output_dir") for a in argv):
        argv.append(f"paths.output_dir={tmp_path}/out")
    code, lines = _run_main(no_job, argv, capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("qgen: error: "), lines
    assert message in lines[0], lines[0]
    assert not (tmp_path / "out").exists()  # nothing was written


def _split(args: str) -> list[str]:
    import shlex

    return shlex.split(args)


def _model_folder(tmp_path: Path, *, drop: tuple[str, ...] = (), config: str | None = None, nan: bool = False):
    """A real (tiny, random) Hugging Face model folder, broken as asked."""
    import torch

    from qgen.models.tiny import tiny_llama

    folder = tmp_path / "model"
    model, tokenizer = tiny_llama({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                                   "num_attention_heads": 2, "num_key_value_heads": 2,
                                   "max_position_embeddings": 1024}, seed=0, dtype=torch.float32)
    if nan:
        with torch.no_grad():
            model.model.layers[0].mlp.up_proj.weight[3, 5] = float("nan")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for pattern in drop:
        for f in folder.glob(pattern):
            f.unlink()
    if config is not None:
        (folder / "config.json").write_text(config)
    return folder


BROKEN_FOLDERS = [
    ({"drop": ("*",)}, "has no config.json"),
    ({"drop": ("tokenizer*", "special_tokens_map.json", "vocab.json")}, "has no tokenizer"),
    ({"drop": ("*.safetensors",)}, "has no weights"),
    ({"config": "{not json"}, "config.json is not valid JSON"),
    ({"config": '{"hidden_size": 64}'}, "config.json names no model_type"),
    ({"config": '{"model_type": "gpt_bigcode"}'}, "architecture 'gpt_bigcode' has no adapter; supported model types"),
]


@pytest.mark.parametrize("broken,message", BROKEN_FOLDERS, ids=[m for _, m in BROKEN_FOLDERS])
def test_a_broken_model_folder_is_refused_before_it_loads(tmp_path, no_job, capsys, broken, message):
    folder = _model_folder(tmp_path, **broken)
    code, lines = _run_main(no_job, ["model.asset=null", f"model.pretrained={folder}", "model.name=mine",
                                     f"paths.output_dir={tmp_path}/out"], capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("qgen: error: "), lines
    assert message in lines[0], lines[0]


BROKEN_DATA = [
    ("name: [unclosed", "mine.yaml could not be read as YAML (line 1): fix the file or remove it from"),
    ("name: mine\ntitle: Mine\n", "lacks"),
]


@pytest.mark.parametrize("text,message", BROKEN_DATA, ids=[m for _, m in BROKEN_DATA])
def test_a_broken_dataset_declaration_is_refused(tmp_path, tmp_home, no_job, capsys, monkeypatch, text, message):
    regdir = tmp_path / "registry"
    regdir.mkdir()
    (regdir / "mine.yaml").write_text(text)
    monkeypatch.setenv("QGEN_DATASETS_DIR", str(regdir))
    code, lines = _run_main(no_job, ["calib.dataset=mine", f"paths.output_dir={tmp_path}/out"], capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("qgen: error: "), lines
    assert message in lines[0], lines[0]


def test_a_dataset_whose_file_is_missing_is_refused(tmp_path, tmp_home, no_job, capsys, monkeypatch):
    regdir = write_user_dataset(tmp_path, "mine", [{"question": "q", "choices": ["a", "b"], "label": 0}])
    (tmp_path / "mine.jsonl").unlink()
    monkeypatch.setenv("QGEN_DATASETS_DIR", str(regdir))
    code, lines = _run_main(no_job, ["calib.dataset=mine", f"paths.output_dir={tmp_path}/out"], capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("qgen: error: "), lines
    assert "mine" in lines[0], lines[0]


# Checks that need the loaded model: a real job process (tiny models load in a second), which must stop right
# after loading — nothing calibrated, quantized or scored — and leave earlier results alone.
AFTER_THE_MODEL_LOADS = [
    ("model=tiny-llama quantizer=gptq calib.seq_len=100000000",
     "calib.seq_len=100000000 is not allowed: tiny-llama has 4096 positions; use at most 4096"),
    ("model=tiny-llama bits.group_size=4096",
     "bits.group_size=4096 is larger than every layer's input width in tiny-llama (192, 384): use at most 384"),
    ("model=tiny-llama eval_suite.perplexity.0.window=8192", "eval_suite.perplexity.0.window=8192 is not allowed"),
    ("NAN_MODEL", "has non-finite weights (NaN or Inf) in model.layers.0.mlp.up_proj.weight"),
    ("model=tiny-llama quantizer=gptq calib.chat_template=true",
     "calib.chat_template=true needs a tokenizer with a chat template, and tiny-llama's has none"),
]


@pytest.mark.parametrize("args,message", AFTER_THE_MODEL_LOADS, ids=[m for _, m in AFTER_THE_MODEL_LOADS])
def test_what_needs_the_model_is_refused_right_after_it_loads(tmp_path, args, message):
    out = tmp_path / "out"
    earlier = out / "runs" / "earlier" / "results.json"  # a result already written
    earlier.parent.mkdir(parents=True)
    earlier.write_text(json.dumps({"status": "completed", "metrics": {"x": {"acc": {"value": 0.5}}}}))
    before = hashlib.sha256(earlier.read_bytes()).hexdigest()
    if args == "NAN_MODEL":
        args = f"model.asset=null model.name=broken model.pretrained={_model_folder(tmp_path, nan=True)}"
    proc = run_qgen(*_split(args), "eval_suite=ppl", f"paths.output_dir={out}", timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("qgen: error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and message in lines[0], proc.stderr[-3000:]
    assert hashlib.sha256(earlier.read_bytes()).hexdigest() == before
    records = [json.loads(p.read_text()) for p in out.rglob("results.json") if p != earlier]
    assert records and all(r["stage"] == "load_model" and r["status"] == "failed" for r in records)
    assert all(set(r["timings"]) == {"load_model"} and not r.get("baseline") for r in records)


def test_there_are_at_least_sixty_bad_inputs():
    assert len(BEFORE_ANYTHING_LOADS) + len(BROKEN_FOLDERS) + len(BROKEN_DATA) + 1 + len(AFTER_THE_MODEL_LOADS) >= 60
