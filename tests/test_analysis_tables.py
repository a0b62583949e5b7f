"""Tidy table, S1 and S2 numbers, and the Markdown/LaTeX/CSV renderings, against the hand-computed fixture."""

import math

import pandas as pd
import pytest

from analysis_fixture import GROUPS, write_fixture
from qgen.analysis import groups, matrix, s1
from qgen.analysis.tidy import Samples, load
from qgen.errors import QgenError
from qgen.record.reader import tidy_results


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_fixture(tmp_path_factory.mktemp("fixture"))


@pytest.fixture(scope="module")
def frame(root):
    return load([root], groups=GROUPS)


def test_tidy_rows_carry_config_and_fp_baseline(root):
    df = tidy_results(root)
    assert set(df["status"]) == {"completed"}  # the failed job is left out
    assert len(df["dir"].unique()) == 6
    row = df[(df["calib"] == "a") & (df["seed"] == 2) & (df["task"] == "qgen_a") & (df["metric"] == "acc")].iloc[0]
    assert (row["model"], row["quantizer"], row["bits"], row["n_samples"], row["seq_len"]) == ("m", "rtn", "w4a16",
                                                                                              128, 512)
    assert row["value"] == 0.5 and row["fp_value"] == 0.75 and row["fp_source"] == "own"
    # calib b jobs have no baseline of their own: the FP job of the same seed supplies it
    row_b = df[(df["calib"] == "b") & (df["task"] == "ppl/wiki") & (df["metric"] == "ppl_nonoverlap_w512")]
    assert set(row_b["fp_source"]) == {"fp_job"} and set(row_b["fp_value"]) == {10.0}
    fp = df[df["quantizer"] == "none"]
    assert set(fp["bits"]) == {"fp16"} and set(fp["fp_source"]) == {"self"}


def test_s1_changes_and_significance(frame):
    tables, stats = s1.tables(frame, Samples(), n_boot=2000)
    q = stats[stats["quantizer"] == "rtn"].set_index(["calib", "task"])
    assert q.loc[("a", "qgen_a"), "mean"] == pytest.approx(0.625)
    assert q.loc[("a", "qgen_a"), "std"] == pytest.approx(0.1767767, abs=1e-6)
    assert q.loc[("a", "qgen_a"), "delta_mean"] == pytest.approx(-0.125)
    assert q.loc[("a", "qgen_a"), "rel_change_pct"] == pytest.approx(-100 / 6)
    assert q.loc[("a", "ppl/wiki"), "delta_mean"] == pytest.approx(3.0)
    assert q.loc[("a", "ppl/wiki"), "rel_change_pct"] == pytest.approx(30.0)
    assert q.loc[("b", "qgen_a"), "rel_change_pct"] == pytest.approx(-200 / 3)
    # calib a loses every one of task b's 4 correct items: significant; calib b equals FP on b: not
    assert q.loc[("a", "qgen_b"), "significant"] and q.loc[("a", "qgen_b"), "ci_high"] < 0
    assert not q.loc[("b", "qgen_b"), "significant"] and q.loc[("b", "qgen_b"), "ci_low"] == 0
    assert not q.loc[("a", "qgen_a"), "significant"]
    assert not q.loc[("a", "ppl/wiki"), "tested"]  # no per-item scores for perplexity
    names = [t.name for t in tables]
    assert names == ["s1_values", "s1_change", "s1_families", "s1_power"]
    # power: task b has 8 items; calib a flips 4 of them (different), calib b none (the floor z^2/n = 0.981)
    z2 = (1.959964 + 0.841621) ** 2
    assert q.loc[("a", "qgen_b"), "items"] == 8 and q.loc[("a", "qgen_b"), "verdict"] == "different"
    assert q.loc[("b", "qgen_b"), "mde"] == pytest.approx(z2 / 8, abs=1e-4)
    assert q.loc[("b", "qgen_b"), "verdict"] == "no difference"
    power = tables[3].data.set_index(["calib", "task"])
    assert power.loc[("a", "qgen_b"), "mde"] == pytest.approx(z2 / 8, abs=1e-4)  # 2.80 sqrt(0.5/8) = 0.70 < floor
    fam = tables[2].data.set_index(["calib", "family"])
    assert fam.loc[("a", "fam"), "delta"] == pytest.approx((-0.125 - 0.5) / 2)
    assert fam.loc[("a", "fam"), "rel"] == pytest.approx(100 * (-0.3125) / ((0.75 + 0.5) / 2))  # of the FP mean
    md = tables[1].markdown()
    assert "-0.500 ± 0.000 (-100.0%) [n=8]\\*" in md and "+3.000 ± 1.414 (+30.0%) [n=1000]" in md
    assert "0.625 ± 0.177 [n=4]" in tables[0].markdown()


def test_family_means_count_a_group_once():
    """MMLU next to its categories: the family mean reads the group's aggregate, not the group and its members."""
    head = dict.fromkeys(s1.ROW_KEYS, "x") | {"quantizer": "gptq", "n_seeds": 1, "significant": False,
                                                "family": "multiple_choice", "dirs": ("job",)}
    rows = [("qgen_mmlu", -0.1, 0.3), ("qgen_mmlu_stem", -0.4, 0.3), ("qgen_mmlu_other", -0.4, 0.3),
            ("qgen_arc_easy", 0.0, 0.5)]
    stats = pd.DataFrame([head | {"task": t, "delta_mean": d, "fp_mean": fp} for t, d, fp in rows])
    fam = s1.family_table(stats).data.iloc[0]
    assert fam["tasks"] == 2 and fam["delta"] == pytest.approx(-0.05) and fam["rel"] == pytest.approx(-12.5)
    alone = s1.family_table(stats[stats["task"] != "qgen_mmlu"]).data.iloc[0]  # categories without the group
    assert alone["tasks"] == 3 and alone["delta"] == pytest.approx(-0.8 / 3)


def test_s2_matrix_win_count_and_gap(frame):
    mats = [m for m in matrix.build(frame, GROUPS) if m.metric == "acc"]
    assert len(mats) == 1
    m = mats[0]
    assert list(m.mean.index) == ["a", "b"] and list(m.mean.columns) == ["a", "b"]
    assert m.mean.loc["a", "a"] == pytest.approx(0.625) and m.mean.loc["a", "b"] == 0.0
    assert m.mean.loc["b", "a"] == 0.25 and m.mean.loc["b", "b"] == 0.5
    assert m.fp["a"] == 0.75 and m.fp["b"] == 0.5
    claims = matrix.comparisons(m, Samples(), n_boot=2000, alpha=0.05).set_index("test")
    assert claims.loc["a", "gap"] == pytest.approx(0.375) and claims.loc["b", "gap"] == pytest.approx(0.5)
    assert not claims.loc["a", "significant"] and claims.loc["b", "significant"]
    assert m.sig == {("b", "b")}
    wins = matrix.win_table(claims.reset_index(), "w", "wins").data.iloc[-1]
    assert (wins["pairs"], wins["id_wins"], wins["significant_wins"], wins["significant_losses"]) == (2, 2, 1, 0)
    assert (wins["tests"], wins["id_best"], wins["id_best_significant"]) == (2, 2, 1)
    assert wins["mean_gap_to_best_ood"] == pytest.approx(0.4375)
    t = matrix.matrix_table(m, "s2_fam")
    md, tex = t.markdown(), t.latex()
    assert "**0.625 ± 0.177 [n=4]**" in md and "**0.500 ± 0.000 [n=8]**\\*" in md and "| a (ID) | b |" in md
    assert r"\textbf{0.500 $\pm$ 0.000 [n=8]}$^{*}$" in tex and r"\toprule" in tex
    # power: ID-vs-OOD on b pairs 8 items, 4 of them discordant (calib a: all wrong; calib b: FP's answers)
    assert claims.loc["b", "n_items"] == 8 and claims.loc["b", "verdict"] == "different"
    assert claims.loc["b", "mde"] == pytest.approx((1.959964 + 0.841621) ** 2 / 8, abs=1e-4)
    assert wins["verdict_different"] == 1 and wins["metric"] == "acc"
    data = t.data.set_index(["calib", "test"])
    assert data.loc[("a", "a"), "in_distribution_cell"] and not data.loc[("a", "b"), "in_distribution_cell"]
    assert data.loc[("b", "b"), "significant_vs_best_ood"]


def test_ppl_matrix_gap_sign_is_flipped():
    df = pd.DataFrame({
        "model": "m", "quantizer": "rtn", "bits": "w4", "n_samples": 1, "seq_len": 1, "suite": "s", "limit": "all",
        "calib_dataset": ["x", "y", "x", "y"], "task": ["ppl/x", "ppl/x", "ppl/y", "ppl/y"],
        "metric": "ppl_nonoverlap_w512", "value": [5.0, 7.0, 9.0, 8.0], "fp_value": [4.0, 4.0, 6.0, 6.0],
        "primary": True, "dir": ["d1", "d2", "d1", "d2"], "seed": 1})
    m = matrix.build(df, {"f": {"in_distribution": "x", "members": ["x", "y"]}})[0]
    c = matrix.comparisons(m, Samples(), 100, 0.05).set_index("test")
    assert c.loc["x", "gap"] == 2.0 and c.loc["x", "outcome"] == "win"  # lower perplexity with ID calibration
    assert c.loc["y", "gap"] == 1.0 and math.isnan(c.loc["y", "ci_low"])


def test_groups_schema_errors():
    assert groups.parse('{"f": {"in_distribution": "a", "members": ["a", "b"]}}') == {
        "f": {"in_distribution": "a", "members": ["a", "b"]}}
    with pytest.raises(QgenError, match="not one of its members"):
        groups.parse("f: {in_distribution: c, members: [a, b]}")
    with pytest.raises(QgenError, match="non-empty list 'members'"):
        groups.parse("f: {in_distribution: a}")
    with pytest.raises(QgenError, match="differs between jobs"):
        groups.from_configs({"j1": {"eval_suite": {"groups": {"f": {"members": ["a"]}}}},
                             "j2": {"eval_suite": {"groups": {"f": {"members": ["b"]}}}}})


def test_datasets_suite_schemas():
    # conf/eval_suite/s2_shift.yaml lists the in-distribution member and its shifts
    g = groups.parse("qa: {in_distribution: squad, shifted: [squadshifts_nyt, squadshifts_reddit]}")
    assert g == {"qa": {"in_distribution": "squad", "members": ["squad", "squadshifts_nyt", "squadshifts_reddit"]}}
    # conf/eval_suite/s3_subjects.yaml has categories and no groups
    s3 = groups.from_configs({"j": {"eval_suite": {"name": "s3_subjects", "categories": ["mmlu_stem", "mmlu_other"]}}})
    assert s3 == {"subjects": {"in_distribution": None, "members": ["mmlu_stem", "mmlu_other"]}}


def test_primary_metric_falls_back_per_task():
    from qgen.analysis.tidy import primary_metrics

    got = primary_metrics({"qgen_squad": {"exact_match", "f1", "n_items"}, "qgen_a": {"acc", "acc_norm"},
                           "ppl/w": {"ppl_nonoverlap_w512", "tokens"}, "qgen_x": {"n_items"}}, "acc_norm")
    assert got == {"qgen_squad": "f1", "qgen_a": "acc_norm", "ppl/w": "ppl_nonoverlap_w512", "qgen_x": None}


def test_methods_compared_pairwise(tmp_path):
    from analysis_fixture import add_quantizer

    root = write_fixture(tmp_path)
    add_quantizer(root, "gptq", [1] * 8)
    tables, _ = s1.tables(load([root], groups=GROUPS), Samples(), n_boot=1000)
    methods = next(t for t in tables if t.name == "s1_methods").data.set_index("task")
    assert list(methods["a"].unique()) == ["gptq"] and list(methods["b"].unique()) == ["rtn"]
    assert methods.loc["qgen_b", "diff"] == 1.0 and methods.loc["qgen_b", "significant"]
    assert methods.loc["qgen_b", "better"] == "gptq"
    assert methods.loc["qgen_a", "diff"] == 0 and methods.loc["qgen_a", "better"] == "tie"
    assert not methods.loc["qgen_a", "significant"]
    assert methods.loc["ppl/wiki", "better"] == "tie" and math.isnan(methods.loc["ppl/wiki", "ci_low"])


def test_a_job_found_twice_counts_once(tmp_path):
    import shutil

    root = write_fixture(tmp_path / "runs")
    shutil.copytree(root / "multiruns" / "q" / "rtn_a_s1", root / "multiruns" / "rerun" / "rtn_a_s1")
    df = tidy_results(root)
    rows = df[(df["calib"] == "a") & (df["task"] == "qgen_a") & (df["metric"] == "acc")]
    assert len(rows) == 2 and sorted(rows["seed"]) == [1, 2]


def test_summary_table_shows_the_fp_model_once_per_seed(tmp_path):
    """`qgen results`: the in-job FP baselines of jobs calibrated on different sets are one FP model, so the
    table has one FP row per seed (merged with the quantizer=none jobs), not one per calibration set."""
    from qgen.record.reader import read_results, summary_table

    table = summary_table(read_results(write_fixture(tmp_path)))
    fp = table[table["quantizer"] == "fp (none)"]
    assert sorted(fp["seed"]) == [1, 2] and set(fp["calib"]) == {"none"}
    assert list(fp["a acc"]) == [0.75, 0.75]
    quantized = table[table["quantizer"] == "rtn"]
    assert sorted(zip(quantized["bits"], quantized["calib"], quantized["seed"])) == [
        ("w2a16", "a", 1), ("w4a16", "a", 1), ("w4a16", "a", 2), ("w4a16", "b", 1), ("w4a16", "b", 2)]


def test_data_free_jobs_are_labelled_without_calibration(tmp_path):
    """A job that records it read no calibration (a data-free quantizer) shows calibration 'none', whatever calib
    set its config composed, so its seeds do not pose as calibration-set rows."""
    import json

    root = write_fixture(tmp_path)
    path = root / "multiruns" / "q" / "rtn_a_s1" / "results.json"
    data = json.loads(path.read_text())
    data["calibration"] = {"used": False, "reason": "quantizer rtn is data-free"}
    path.write_text(json.dumps(data))
    df = tidy_results(root)
    labels = df.groupby(df["dir"].str.endswith("rtn_a_s1"))["calib"].agg(set)
    assert labels[True] == {"none"} and "none" not in labels[False]
    # and S2 compares calibration sets: a job without one is no row of its matrices
    assert all("none" not in m.mean.index for m in matrix.build(load([root], groups=GROUPS), GROUPS))


def test_s1_significance_from_in_job_baselines_without_fp_jobs(tmp_path):
    """No quantizer=none job: the quantized jobs' own baseline_samples.jsonl supply the FP items."""
    import json
    import shutil

    from analysis_fixture import FP_ITEMS

    root = write_fixture(tmp_path)
    shutil.rmtree(root / "multiruns" / "fp")
    for job in (root / "multiruns" / "q").glob("rtn_a_s*"):
        with open(job / "baseline_samples.jsonl", "w") as f:
            for task, values in FP_ITEMS.items():
                f.writelines(json.dumps({"task": task, "doc_id": i, "acc": v}) + "\n" for i, v in enumerate(values))
    _, stats = s1.tables(load([root], groups=GROUPS), Samples(), n_boot=2000)
    q = stats[stats["quantizer"] == "rtn"].set_index(["calib", "task"])
    # the same answer as against the FP jobs (test above): calib a loses task b's 4 correct items
    assert q.loc[("a", "qgen_b"), "tested"] and q.loc[("a", "qgen_b"), "significant"]
    assert q.loc[("a", "qgen_b"), "ci_high"] < 0
    assert q.loc[("a", "qgen_a"), "tested"] and not q.loc[("a", "qgen_a"), "significant"]
    # calib b jobs recorded no baseline items and there is no FP job: nothing to test against
    assert not q.loc[("b", "qgen_b"), "tested"]
