"""`qgen recommend` and the S2 proxy table on hand-built sweeps and datasets: the measured ranking (order, damages, CIs
over seeds or items, verdicts against the best, filters), the token-distance proxy (0 for identical distributions,
ln 2 for disjoint vocabularies, ½ ln 2 for half shared, counts cached), the fallback line, and Spearman's ρ = 1 where
damage grows with distance by construction."""

from __future__ import annotations

import json
import math

import pytest

from analysis_fixture import (
    KL_METRIC,
    KL_WINDOWS,
    add_quantizer,
    register_letters,
    write_fixture,
    write_letters_sweep,
)
from conftest import write_user_dataset
from qgen import cli
from qgen.data import registry

LN2 = math.log(2)
T975 = {1: 12.706205, 2: 4.302653}  # t quantiles: 1 and 2 degrees of freedom


@pytest.fixture
def letters(tmp_home, tmp_path, monkeypatch):
    """Datasets x, y, z registered and prepared in a throwaway QGEN_HOME, with an empty cache; the letters sweep."""
    from qgen.data.prepare import prepare

    monkeypatch.setenv("QGEN_DATASETS_DIR", str(register_letters(tmp_path)))
    monkeypatch.setenv("QGEN_CACHE_DIR", str(tmp_path / "cache"))
    registry.all_datasets.cache_clear()
    for name in ("x", "y", "z"):
        prepare(registry.get(name))
    return write_letters_sweep(tmp_path / "runs")


def recommend(capsys, *args: str) -> str:
    cli.main(["recommend", *args])
    return capsys.readouterr().out


def error_line(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["recommend", *args])
    assert exit_.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("qgen: error")]
    assert len(lines) == 1
    return lines[0]


# -- measured ----------------------------------------------------------------------------------------------------
def test_kl_ranking_with_seed_and_item_intervals(letters, capsys):
    out = json.loads(recommend(capsys, str(letters), "--target", "x", "--json", "--n-boot", "500"))
    assert out["basis"] == "measured" and out["damage"] == "kl" and out["jobs"] == 5
    assert out["headline"].startswith("measured (5 jobs, 1 setting): damage on x = mean KL")
    (setting,) = out["settings"]
    assert setting["task"] == "kl/x" and setting["setting"]["quantizer"] == "rtn"
    x, y, z = setting["rows"]
    assert [r["calib"] for r in (x, y, z)] == ["x", "y", "z"] and [r["rank"] for r in (x, y, z)] == [1, 2, 3]
    # x: seed means 0.105, 0.11 -> 0.1075 ± t(1) * sd/sqrt(2), sd/sqrt(2) = |0.105 - 0.11| / 2
    assert x["damage"] == pytest.approx(0.1075) and x["ci_basis"] == "seeds" and x["seeds"] == 2
    assert (x["ci_low"], x["ci_high"]) == pytest.approx((0.1075 - T975[1] * 0.0025, 0.1075 + T975[1] * 0.0025))
    assert x["items"] == 4 and x["tokens"] == 4 * 511 and x["verdict"] == "best"
    # y - x over seeds (Welch): diff 0.1, both seed variances 1.25e-5 -> se = sqrt(1.25e-5), df = 2
    se = math.sqrt(1.25e-5)
    assert y["damage"] == pytest.approx(0.2075) and y["gap_basis"] == "seeds"
    assert (y["gap_ci_low"], y["gap_ci_high"]) == pytest.approx((0.1 - T975[2] * se, 0.1 + T975[2] * se))
    assert y["verdict"] == "different"
    # z has one seed: its CI and its gap come from the items (windows); x's items are averaged over its seeds
    x_items = [(a + b) / 2 for a, b in zip(KL_WINDOWS["same"][1], KL_WINDOWS["same"][2])]
    diffs = [w - v for w, v in zip(KL_WINDOWS["disjoint"][1], x_items)]
    assert z["damage"] == pytest.approx(0.30) and z["ci_basis"] == "items" and z["seeds"] == 1
    assert min(KL_WINDOWS["disjoint"][1]) <= z["ci_low"] < 0.30 < z["ci_high"] <= max(KL_WINDOWS["disjoint"][1])
    assert z["gap_basis"] == "items" and z["gap"] == pytest.approx(sum(diffs) / 4)
    assert min(diffs) <= z["gap_ci_low"] and z["gap_ci_high"] <= max(diffs) and z["verdict"] == "different"
    table = recommend(capsys, str(letters), "--target", "x", "--n-boot", "500").splitlines()
    assert table[0] == out["headline"] and any(ln.split()[:3] == ["3", "z", "0.3000"] for ln in table)


@pytest.fixture
def ab_registered(tmp_home, tmp_path, monkeypatch):
    """The accuracy fixture (analysis_fixture.write_fixture) with its test sets a and b registered."""
    rows = [{"question": f"question {i}", "choices": ["yes", "no"], "label": i % 2} for i in range(10)]
    write_user_dataset(tmp_path, "a", rows, calib_text="{{question}}")
    monkeypatch.setenv("QGEN_DATASETS_DIR", str(write_user_dataset(tmp_path, "b", rows, calib_text="{{question}}")))
    registry.all_datasets.cache_clear()
    return write_fixture(tmp_path / "runs")


def test_accuracy_drop_ranking_per_setting_and_filters(ab_registered, capsys):
    root = str(ab_registered)
    out = json.loads(recommend(capsys, root, "--target", "b", "--json"))
    assert out["damage"] == "acc" and out["jobs"] == 4  # the failed w2a16 job is not read
    best, other = out["settings"][0]["rows"]
    # test b: FP 0.5; calib b scores 0.5 (damage 0), calib a 0.0 (damage 0.5), the same under both seeds
    assert (best["calib"], best["damage"], best["ci_low"], best["ci_high"]) == ("b", 0.0, 0.0, 0.0)
    assert (other["calib"], other["damage"]) == ("a", 0.5) and other["verdict"] == "different"
    assert (other["gap_ci_low"], other["gap_ci_high"]) == pytest.approx((0.5, 0.5))
    # test a: FP 0.75; calib a per seed 0.0, 0.25 (damage 0.125), calib b 0.5, 0.5; Welch df 1, se 0.125
    best, other = json.loads(recommend(capsys, root, "--target", "a", "--json"))["settings"][0]["rows"]
    assert (best["calib"], best["damage"]) == ("a", pytest.approx(0.125))
    assert (best["ci_low"], best["ci_high"]) == pytest.approx((0.125 - T975[1] * 0.125, 0.125 + T975[1] * 0.125))
    assert other["gap"] == pytest.approx(0.375) and other["verdict"] == "too few seeds"
    assert other["gap_ci_low"] == pytest.approx(0.375 - T975[1] * 0.125)

    add_quantizer(ab_registered, "gptq", [1, 1, 1, 1, 0, 0, 0, 0])  # calib a, test b: damage 0 under gptq
    both = json.loads(recommend(capsys, root, "--target", "b", "--json"))["settings"]
    assert sorted(s["setting"]["quantizer"] for s in both) == ["gptq", "rtn"]  # ranked per setting, never pooled
    (gptq,) = json.loads(recommend(capsys, root, "--target", "b", "--quantizer", "gptq", "--json"))["settings"]
    assert [(r["calib"], r["damage"]) for r in gptq["rows"]] == [("a", 0.0)]
    assert "--quantizer awq matches no finished job that scored b" in error_line(capsys, root, "--target", "b",
                                                                                  "--quantizer", "awq")
    assert "there are: w4a16" in error_line(capsys, root, "--target", "b", "--bits", "w2a16")
    assert "--damage kl: no finished job measured KL" in error_line(capsys, root, "--target", "b", "--damage", "kl")


def test_bad_input_is_one_line(ab_registered, tmp_path, capsys):
    assert "unknown dataset 'nope'; registered:" in error_line(capsys, str(ab_registered), "--target", "nope")
    assert "does not exist: give output dirs" in error_line(capsys, str(tmp_path / "missing"), "--target", "a")
    assert "--n-boot=10 is too small" in error_line(capsys, str(ab_registered), "--target", "a", "--n-boot", "10")


# -- proxy -------------------------------------------------------------------------------------------------------
def test_distances_by_construction_and_the_cache(letters, monkeypatch):
    from qgen import cache
    from qgen.data import unigram
    from qgen.models.tiny import byte_tokenizer

    calls = []
    original = unigram.tokenize_documents
    monkeypatch.setattr(unigram, "tokenize_documents", lambda tok, texts: calls.append(1) or original(tok, texts))
    tok = byte_tokenizer()
    target = unigram.part_counts(tok, "x", "eval")
    assert (target.n_docs, target.tokens) == (len(registry.load_split("x", "eval")), 4 * target.n_docs)
    same, half, none = (unigram.estimate(target, unigram.part_counts(tok, c, "calib"), n_boot=200) for c in "xyz")
    assert same.plug_in == 0 and same.distance == 0 and (same.ci_low, same.ci_high) == (0, 0)
    assert none.plug_in == pytest.approx(LN2) and none.distance == pytest.approx(LN2)
    assert half.plug_in == pytest.approx(LN2 / 2) and half.ci_low == pytest.approx(LN2 / 2)
    assert len(calls) == 4 and len([e for e in cache.entries() if e["kind"] == "tokens"]) == 4
    again = unigram.part_counts(tok, "x", "eval")  # a cache hit: nothing tokenized
    assert len(calls) == 4 and (again.docs != target.docs).nnz == 0

    rows = unigram.rank(target, [unigram.part_counts(tok, c, "calib") for c in "zyx"], n_boot=200)
    assert [r.estimate.calib for r in rows] == ["x", "y", "z"]
    assert rows[1].gap == pytest.approx(LN2 / 2) and rows[1].distinguishable and not rows[0].distinguishable


def test_a_spread_out_candidate_gets_an_interval(letters, tmp_path, monkeypatch):
    """Rows of different compositions: resamples differ, the interval has width and holds the corrected value."""
    from qgen.data import unigram
    from qgen.data.prepare import prepare
    from qgen.models.tiny import byte_tokenizer

    rows = [{"text": "a" * (1 + i % 5) + "e" * (1 + i % 3) + "k" * (i % 2) + str(i)} for i in range(40)]
    monkeypatch.setenv("QGEN_DATASETS_DIR", str(write_user_dataset(tmp_path, "v", rows, task_type="corpus",
                                                                   calib_text="{{text}}")))
    registry.all_datasets.cache_clear()
    prepare(registry.get("v"))
    tok = byte_tokenizer()
    e = unigram.estimate(unigram.part_counts(tok, "x", "eval"), unigram.part_counts(tok, "v", "calib"), n_boot=300)
    assert 0 < e.ci_low < e.distance < e.ci_high < LN2
    assert e.distance == pytest.approx(2 * e.plug_in - e.boot.mean())  # the bootstrap's bias correction


def test_fallback_to_the_proxy_says_so(letters, capsys):
    out = recommend(capsys, str(letters), "--target", "z", "--n-boot", "200").splitlines()
    assert out[0] == "proxy: JS divergence of unigram token distributions (no finished sweep covers z)"
    assert "tokenizer: tiny-llama's" in out[1] and "candidates: the calibration text of 3 datasets" in out[1]
    ranked = [ln.split() for ln in out[3:6]]
    assert [r[1] for r in ranked] == ["z", "x", "y"] and ranked[0][2:4] == ["(target's", "own)"]
    assert [r[-1] for r in ranked] == ["–", "yes", "yes"]
    forced = json.loads(recommend(capsys, str(letters), "--target", "x", "--proxy", "--candidates", "y", "z",
                                  "--n-boot", "200", "--json"))
    assert forced["headline"].endswith("(asked for with --proxy)") and forced["basis"] == "proxy"
    assert [(r["calib"], round(r["distance"], 6)) for r in forced["rows"]] == [("y", round(LN2 / 2, 6)),
                                                                              ("z", round(LN2, 6))]
    assert "unknown --model 'nope'" in error_line(capsys, str(letters), "--target", "z", "--model", "nope")


# -- the S2 report's proxy table ---------------------------------------------------------------------------------
def test_s2_proxy_table_spearman_one(letters, tmp_path):
    import pandas as pd

    from qgen.analysis.report import Options, build

    # the default score (acc) is no metric of this KL-only sweep, and needs to be none: nothing scored accuracy
    build(Options(roots=[str(letters)], out_dir=tmp_path / "r", scenarios=("s2",), n_boot=300, figures=False))
    page = (tmp_path / "r" / "s2.md").read_text()
    assert "S2: does the token-distance proxy track the measured damage?" in page
    table = pd.read_csv(tmp_path / "r" / "csv" / "s2_proxy.csv")
    kl = table[table["metric"] == KL_METRIC].set_index("scope")
    assert kl.loc["all cells", "n"] == 6 and kl.loc["within test sets", "n"] == 2
    for scope in ("all cells", "within test sets"):
        assert kl.loc[scope, "rho"] == pytest.approx(1.0) and kl.loc[scope, "p_exact"]
        assert (kl.loc[scope, "ci_low"], kl.loc[scope, "ci_high"]) == pytest.approx((1.0, 1.0))
    # permutation p-values: 6 cells in 3 tied pairs (distance 0, ½ ln 2, ln 2, each twice), damage tied alike: of the
    # 720 orders of the damages, 8 keep the pairs (ρ = 1) and 8 reverse them (ρ = -1); within the two test sets of 3
    # cells, 2 of the 3! x 3! joint orders give |ρ| = 1 (both kept, both reversed)
    assert kl.loc["all cells", "p_value"] == pytest.approx(16 / 720)
    assert kl.loc["within test sets", "p_value"] == pytest.approx(2 / 36)
    assert ("| tiny-llama rtn w4a16 n=8 len=64 | kl_mean_nonoverlap_w512_top64 | all cells | 6 cells | +1.000 | "
            "[+1.0000, +1.0000] | 0.022 | 0 |") in page


def test_s2_report_without_prepared_datasets_notes_why(tmp_path):
    from qgen.analysis.report import Options, build

    build(Options(roots=[str(write_fixture(tmp_path / "runs"))], out_dir=tmp_path / "r", scenarios=("s2",),
                  n_boot=200, figures=False))
    page = (tmp_path / "r" / "s2.md").read_text()
    assert "No token-distance proxy table: no cell has a proxy distance (a is not a registered dataset; b is not " \
           "a registered dataset)." in page


def test_rank_correlation_small_and_large():
    from qgen.analysis.stats import rank_correlation

    # 3 test sets of 2 calibration sets, all ordered alike: the bootstrap over test sets cannot vary, the exact
    # permutation p-value can: 2 of the 2^3 within-set orders give |ρ| = 1
    r = rank_correlation([0.1, 0.2, 0.3, 0.5, 0.2, 0.9], [1, 2, 5, 6, 0, 3], groups=["s", "s", "q", "q", "i", "i"],
                         n_boot=200)
    assert (r.n, r.rho, r.ci_low, r.ci_high) == (3, 1.0, 1.0, 1.0) and r.exact and r.p_value == pytest.approx(0.25)
    # 10 pairs (10! orders): Monte Carlo; only the identity and its reverse reach |ρ| = 1
    r = rank_correlation(range(10), [v * v for v in range(10)], n_boot=200)
    assert r.rho == 1.0 and not r.exact and r.p_value == pytest.approx(1 / 201)
    assert math.isnan(rank_correlation([1, 1, 1], [1, 2, 3], n_boot=100).rho)


def test_s1_of_a_kl_only_sweep_has_no_empty_change_tables(letters, tmp_path):
    """KL is measured against FP already: an S1 report of a KL-only sweep lists the values and the method claims,
    without an FP row or change-vs-FP tables whose every cell would be '–'."""
    from qgen.analysis.report import Options, build

    build(Options(roots=[str(letters)], out_dir=tmp_path / "r", scenarios=("s1",), n_boot=300, figures=False))
    page = (tmp_path / "r" / "s1.md").read_text()
    assert "S1: scores per task" in page and "0.1075" in page
    assert "change against full precision" not in page and "FP (baselines)" not in page
    build(Options(roots=[str(letters)], out_dir=tmp_path / "r2", scenarios=("s2",), n_boot=300, figures=False))
    assert "FP (reference)" not in (tmp_path / "r2" / "s2.md").read_text()  # nor an FP row of '–' in S2 matrices


def test_s2_against_a_reference_calibration_set(letters, tmp_path):
    """--against z: every other calibration row against z on each test set, gap positive where the row does better
    (lower KL): calib x on test x 0.1075 vs z's 0.30 -> +0.1925; z has one seed, so the item bootstrap decides."""
    import pandas as pd

    from qgen.analysis.report import Options, build
    from qgen.errors import QgenError

    build(Options(roots=[str(letters)], out_dir=tmp_path / "r", scenarios=("s2",), n_boot=300, figures=False,
                  against=("z",)))
    table = pd.read_csv(tmp_path / "r" / "csv" / "s2_against_z.csv").set_index(["calib", "test"])
    assert sorted(table.index) == [("x", "x"), ("x", "y"), ("y", "x"), ("y", "y")]
    assert table.loc[("x", "x"), "gap"] == pytest.approx(0.30 - 0.1075)
    assert table.loc[("y", "x"), "gap"] == pytest.approx(0.30 - 0.2075)
    assert bool(table.loc[("x", "x"), "in_distribution"]) and not bool(table.loc[("y", "x"), "in_distribution"])
    assert set(table["seed_verdict"]) == {"not tested"} and table["significant"].all()
    with pytest.raises(QgenError, match=r"--against nope: no matrix has a 'nope' calibration row; its rows: x, y, z"):
        build(Options(roots=[str(letters)], out_dir=tmp_path / "r2", scenarios=("s2",), n_boot=300, figures=False,
                      against=("nope",)))
