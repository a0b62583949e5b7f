"""Seed-level statistics of ID-vs-OOD claims: a Welch t-test over the calibration draws (seeds), hand-computed, and
the S2 claim verdict it decides when both cells ran with at least 2 seeds."""

import math

import pandas as pd
import pytest

from qgen.analysis import matrix
from qgen.analysis.stats import DIFFERENT, TOO_FEW_SEEDS, seed_comparison, seeds_needed
from qgen.analysis.tidy import Samples

T975 = {2: 4.302653, 4: 2.776445}  # t quantiles, 2 and 4 degrees of freedom
T80 = {2: 1.060660, 4: 0.940965}


def test_welch_interval_mde_and_verdict_by_hand():
    # a: mean 1.0, var 0.01; b: mean 0.5, var 0.01; 3 seeds each -> se = sqrt(0.02 / 3), Welch df = 4
    r = seed_comparison([1.0, 1.1, 0.9], [0.5, 0.6, 0.4])
    se = math.sqrt(0.02 / 3)
    assert (r.seeds_a, r.seeds_b) == (3, 3) and r.df == pytest.approx(4.0)
    assert r.diff == pytest.approx(0.5) and r.se == pytest.approx(se)
    assert r.ci_low == pytest.approx(0.5 - T975[4] * se, abs=1e-6)
    assert r.ci_high == pytest.approx(0.5 + T975[4] * se, abs=1e-6)
    assert r.mde == pytest.approx((T975[4] + T80[4]) * se, abs=1e-6)
    assert r.verdict == DIFFERENT and r.significant
    # 2 seeds (df 2): (4.303 + 1.061) * 0.1 = 0.536 > 0.5; 3 seeds: 0.304 <= 0.5
    assert r.seeds_for_diff == 3 == seeds_needed(0.01, 0.01, 0.5)


def test_one_side_spread_only_and_too_few_seeds():
    # a var 1 over 3 seeds, b constant: se = sqrt(1/3), df = 2; CI 2 +- 4.303 * 0.577 includes 0, exceeds the MDE
    r = seed_comparison([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert r.df == pytest.approx(2.0) and r.ci_low == pytest.approx(2 - T975[2] / math.sqrt(3), abs=1e-6)
    assert not r.significant and r.verdict == TOO_FEW_SEEDS
    assert seed_comparison([1.0], [0.0, 1.0]) is None  # one seed: no spread to test against
    assert math.isnan(seeds_needed(0.0, 0.0, 0.1)) and math.isinf(seeds_needed(1.0, 1.0, 1e-3))


def _frame(values: dict) -> pd.DataFrame:
    """Perplexity rows (no per-item scores) of calib x test x seed."""
    rows = [{"model": "m", "quantizer": "gptq", "bits": "w3", "n_samples": 8, "seq_len": 512, "suite": "s",
             "limit": "all", "calib_dataset": calib, "task": f"ppl/{test}", "metric": "ppl_nonoverlap_w512",
             "value": v, "fp_value": 4.0, "primary": True, "dir": f"{calib}_s{seed}", "seed": seed}
            for (calib, test), vals in values.items() for seed, v in zip((1, 2, 3), vals)]
    return pd.DataFrame(rows)


def test_claim_verdict_comes_from_the_seeds():
    groups = {"f": {"in_distribution": "x", "members": ["x", "y"]}}
    df = _frame({("x", "x"): [5.0, 5.1, 4.9], ("y", "x"): [6.0, 6.1, 5.9],  # consistent: ID better by 1
                 ("x", "y"): [7.0, 9.0, 8.0], ("y", "y"): [6.0, 6.0, 6.1]})  # ID better by 2, seeds spread 1
    m = matrix.build(df, groups)[0]
    c = matrix.comparisons(m, Samples(), 100, 0.05).set_index("test")
    assert c.loc["x", "gap"] == pytest.approx(1.0)  # lower perplexity is better: sign flipped
    assert c.loc["x", "seed_ci_low"] > 0 and c.loc["x", "verdict"] == DIFFERENT and c.loc["x", "significant"]
    assert c.loc["x", "item_verdict"] == "not tested"  # perplexity has no per-item scores
    assert c.loc["y", "verdict"] == TOO_FEW_SEEDS and not c.loc["y", "significant"]
    assert (c.loc["y", "seeds_a"], c.loc["y", "seeds_b"]) == (3, 3)
    assert m.sig == {("x", "x")}
    md = matrix.claims_table(c.reset_index(), "claims", "t").markdown()
    assert "too few seeds" in md and "3 / 3" in md
    wins = matrix.win_table(c.reset_index(), "w", "wins").data.iloc[-1]
    assert wins["significant_wins"] == 1 and wins["verdict_too_few_seeds"] == 1
