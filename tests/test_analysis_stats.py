"""The paired bootstrap and the seed statistics, on inputs whose answer is known."""

import math

import numpy as np
import pandas as pd
import pytest

from qgen.analysis.stats import paired_bootstrap, seed_summary
from qgen.errors import QgenError


def test_identical_configs_are_not_significant():
    a = np.array([1, 0, 1, 1, 0, 1, 0, 0] * 10)
    r = paired_bootstrap(a, a.copy(), n_boot=500)
    assert r.diff == 0 and r.ci_low == 0 and r.ci_high == 0
    assert r.ci_low <= 0 <= r.ci_high and not r.significant and r.p_value == 1.0


def test_strictly_better_on_every_item_is_significant():
    b = np.linspace(0, 1, 50)
    r = paired_bootstrap(b + 0.1, b, n_boot=500)
    assert r.diff == pytest.approx(0.1)
    assert r.ci_low == pytest.approx(0.1) and r.ci_high == pytest.approx(0.1)
    assert r.significant and r.p_value == 0.0
    worse = paired_bootstrap(b, b + 0.1, n_boot=500)
    assert worse.significant and worse.ci_high < 0


def test_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 2, 400), rng.integers(0, 2, 400)
    r = paired_bootstrap(a, b, n_boot=4000, seed=3)
    d = a - b
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))
    assert r.diff == pytest.approx(d.mean())
    assert (r.ci_high - r.ci_low) / 2 == pytest.approx(half, rel=0.1)
    assert r.ci_low < d.mean() < r.ci_high


def test_one_noisy_win_is_not_significant():
    # d = [0, 1, 0.5, 0]: a resample of only the two zero items (p = 1/16 > 2.5%) gives mean 0.
    r = paired_bootstrap([1, 1, 0.5, 0], [1, 0, 0, 0], n_boot=4000)
    assert r.diff == pytest.approx(0.375) and r.ci_low == 0 and not r.significant


def test_bad_input_is_one_line_error():
    with pytest.raises(QgenError, match="equal-length"):
        paired_bootstrap([1, 2], [1])
    with pytest.raises(QgenError, match="at least one item"):
        paired_bootstrap([], [])


def test_seed_summary():
    s = seed_summary(pd.Series([0.75, 0.5]))
    assert s["mean"] == 0.625 and s["std"] == pytest.approx(math.sqrt(2) * 0.125) and s["n_seeds"] == 2
    one = seed_summary(pd.Series([0.3]))
    assert one["mean"] == 0.3 and math.isnan(one["std"])
