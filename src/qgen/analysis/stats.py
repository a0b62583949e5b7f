"""Statistics behind every claim in the report: mean ± std across seeds, and a paired bootstrap over evaluation
items for "configuration A beats configuration B", with the power of that comparison.

The bootstrap resamples *items* (the same items scored under both configurations): with per-item scores a_i, b_i
(each averaged over the seeds a configuration was run with), d_i = a_i - b_i, it draws `n_boot` resamples of the
items with replacement and takes the percentile interval of the resampled mean differences. A difference is
significant when that interval excludes 0. The p-value is the two-sided bootstrap p: twice the share of resampled
means on the far side of 0 (capped at 1).

Power. Every paired comparison also states its minimum detectable difference (MDE): the true mean difference its
paired test would detect with 80 % power at two-sided α = 0.05, with z = z_{1-α/2} + z_{0.8} = 1.960 + 0.842 = 2.802:

- binary per-item scores (every a_i, b_i is 0 or 1; d_i is -1, 0 or 1, McNemar's setting): with p_disc the observed
  share of discordant items (a_i != b_i), MDE = max(z·sqrt(p_disc / n), z² / n). The first term is the usual
  plug-in (Var d ≈ p_disc under no difference); the second is the floor that a true difference δ needs at least
  δ·n discordant items, so that Var d ≥ δ - δ², which gives δ ≈ z²/n as the smallest detectable δ when few or no
  items were discordant (without it, n identical answers would claim an MDE of 0);
- any other scores (seed-averaged items, per-window KL): MDE = z·s_d / sqrt(n), s_d the standard deviation of the
  paired differences (ddof = 1; NaN for a single item).

A comparison's verdict is `different` when the CI excludes 0; `no difference` (an equivalence-style statement) when
it does not and the CI excludes every difference at least as large as the MDE (-MDE < ci_low and ci_high < MDE);
otherwise `too few items` to tell: a difference of the detectable size is still inside the CI. Binary scores with
an MDE of 1 or more (7 items or fewer) are always `too few items`: no difference could be detected on them.

Seeds. The item bootstrap holds each configuration's calibration draw fixed: it says whether *these* quantized
models differ on the test items. Whether a calibration *set* helps is a claim over its draws (the seed picks the
calibration windows), so where both configurations ran with at least 2 seeds, `seed_comparison` adds a Welch t-test
over the per-seed values (each seed's value is that job's mean over the same test items; the seeds of two calibration
sets are independent draws, so they are not paired): the difference of the seed means, its 95 % t-interval with
Welch–Satterthwaite degrees of freedom, and its MDE = (t_{1-α/2,df} + t_{0.8,df})·se. Its verdict is `different`,
`no difference` (CI inside ±MDE) or `too few seeds`. `seeds_needed` gives the number of seeds per configuration that
would detect a given difference at 80 % power from the observed seed spreads. The item set is fixed in this test;
the item bootstrap covers item sampling.

Damage (`damage`): a quantized value's departure from FP in the harmful direction, what `qgen recommend` ranks
calibration sets by and the S2 proxy table correlates with a token distance. `seed_interval`: the t-interval of a
mean over seeds. `rank_correlation`: Spearman's ρ with a percentile bootstrap CI, over pairs or within groups.

Answer flips (Dutta et al. 2024): for binary per-item scores of a reference (the FP model) and a candidate (the
quantized model) on the same items, `flip_table` counts correct→wrong and wrong→correct items, their rates, and
paired-bootstrap CIs of both rates (the same item resampling as above).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np
import pandas as pd

from qgen.errors import QgenError

POWER = 0.8
DIFFERENT, NO_DIFFERENCE, TOO_FEW = "different", "no difference", "too few items"
TOO_FEW_SEEDS = "too few seeds"
VERDICTS = (DIFFERENT, NO_DIFFERENCE, TOO_FEW, TOO_FEW_SEEDS)


def z_power(alpha: float = 0.05, power: float = POWER) -> float:
    """z_{1-alpha/2} + z_{power}: 2.802 for alpha 0.05 and 80 % power."""
    return NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)


def is_binary(*arrays) -> bool:
    return all(np.isin(np.asarray(x, dtype=float), (0.0, 1.0)).all() for x in arrays)


def min_detectable_difference(a, b, alpha: float = 0.05, power: float = POWER) -> dict:
    """{mde, sd_diff, discordant} of the paired comparison of per-item scores a and b (formulas: module docstring)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d, n, z = a - b, len(a), z_power(alpha, power)
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    if n and is_binary(a, b):
        disc = float(np.mean(a != b))
        return {"mde": max(z * math.sqrt(disc / n), z * z / n), "sd_diff": sd, "discordant": disc}
    return {"mde": z * sd / math.sqrt(n) if n > 1 else math.nan, "sd_diff": sd, "discordant": math.nan}


def verdict(ci_low: float, ci_high: float, mde: float, max_difference: float | None = None) -> str:
    """different (CI excludes 0), no difference (CI inside ±MDE) or too few items (module docstring); with
    `max_difference` (1 for binary scores), an MDE that large means no possible difference is detectable."""
    if ci_low > 0 or ci_high < 0:
        return DIFFERENT
    if max_difference is not None and not mde < max_difference:
        return TOO_FEW
    if not math.isnan(mde) and -mde < ci_low and ci_high < mde:
        return NO_DIFFERENCE
    return TOO_FEW


@dataclass(frozen=True)
class PairedResult:
    n_items: int
    mean_a: float
    mean_b: float
    diff: float  # mean(a - b); positive: A scored higher
    ci_low: float
    ci_high: float
    p_value: float
    significant: bool
    sd_diff: float = math.nan  # sd of the paired differences (ddof=1)
    discordant: float = math.nan  # share of items scored differently (binary scores only, else NaN)
    mde: float = math.nan  # minimum detectable difference at 80 % power, two-sided alpha (module docstring)
    verdict: str = TOO_FEW

    def as_dict(self) -> dict:
        return asdict(self)


def paired_bootstrap(a, b, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> PairedResult:
    """Paired bootstrap of mean(a - b) over items; a[i] and b[i] must score the same item."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise QgenError(f"paired bootstrap needs two equal-length 1-D score arrays, got shapes {a.shape} and {b.shape}")
    if len(a) == 0:
        raise QgenError("paired bootstrap needs at least one item scored under both configurations")
    if not 0 < alpha < 1:
        raise QgenError(f"alpha={alpha!r} is not allowed: use a number between 0 and 1")
    d = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(int(n_boot), len(d)))
    means = d[idx].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    observed = float(d.mean())
    if observed == 0 and np.all(means == 0):
        p = 1.0
    else:
        p = min(1.0, 2 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0))))
    power = min_detectable_difference(a, b, alpha)
    return PairedResult(n_items=len(d), mean_a=float(a.mean()), mean_b=float(b.mean()), diff=observed,
                        ci_low=float(low), ci_high=float(high), p_value=p,
                        significant=bool(low > 0 or high < 0), **power,
                        verdict=verdict(float(low), float(high), power["mde"],
                                        1.0 if is_binary(a, b) else None))


def result_fields(res: PairedResult | None) -> dict:
    """The columns a report table keeps of a comparison (NaN, not tested, when there are no per-item scores)."""
    if res is None:
        return {"ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan, "n_items": math.nan,
                "significant": False, "mde": math.nan, "verdict": "not tested", "tested": False}
    return {"ci_low": res.ci_low, "ci_high": res.ci_high, "p_value": res.p_value, "n_items": res.n_items,
            "significant": bool(res.significant), "mde": res.mde, "verdict": res.verdict, "tested": True}


@dataclass(frozen=True)
class SeedResult:
    """Welch t-test of configuration A against B over their seeds (module docstring)."""
    seeds_a: int
    seeds_b: int
    diff: float  # mean over A's seeds - mean over B's seeds
    se: float
    df: float
    ci_low: float
    ci_high: float
    mde: float
    significant: bool
    verdict: str
    seeds_for_diff: float  # seeds per configuration that would detect |diff| at 80 % power (inf: none would)


def _t(q: float, df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(q, df))


def _welch(var_a: float, var_b: float, k_a: int, k_b: int) -> tuple[float, float]:
    """(se, df) of a difference of two means with per-seed variances var_a, var_b over k_a, k_b seeds."""
    va, vb = var_a / k_a, var_b / k_b
    se = math.sqrt(va + vb)
    if se == 0:
        return 0.0, float(k_a + k_b - 2)
    return se, (va + vb) ** 2 / (va**2 / (k_a - 1) + vb**2 / (k_b - 1))


def seeds_needed(var_a: float, var_b: float, delta: float, alpha: float = 0.05, power: float = POWER,
                 cap: int = 1000) -> float:
    """Smallest number of seeds k >= 2 per configuration at which the Welch test detects `delta` with `power`,
    given the per-seed variances; inf when `cap` seeds would not, NaN when delta or both variances are 0."""
    if not delta > 0 or not (var_a + var_b) > 0:
        return math.nan
    for k in range(2, cap + 1):
        se, df = _welch(var_a, var_b, k, k)
        if (_t(1 - alpha / 2, df) + _t(power, df)) * se <= delta:
            return float(k)
    return math.inf


def seed_comparison(a, b, alpha: float = 0.05, power: float = POWER) -> SeedResult | None:
    """Welch t-test of the per-seed values a against b (module docstring); None unless both have >= 2 seeds."""
    a = np.asarray(pd.Series(a).dropna(), dtype=float)
    b = np.asarray(pd.Series(b).dropna(), dtype=float)
    if len(a) < 2 or len(b) < 2:
        return None
    var_a, var_b = float(a.var(ddof=1)), float(b.var(ddof=1))
    se, df = _welch(var_a, var_b, len(a), len(b))
    diff = float(a.mean() - b.mean())
    half = _t(1 - alpha / 2, df) * se
    mde = (_t(1 - alpha / 2, df) + _t(power, df)) * se
    low, high = diff - half, diff + half
    significant = bool(low > 0 or high < 0)
    if significant:
        word = DIFFERENT
    elif -mde < low and high < mde:
        word = NO_DIFFERENCE
    else:
        word = TOO_FEW_SEEDS
    return SeedResult(len(a), len(b), diff, se, df, low, high, mde, significant, word,
                      seeds_needed(var_a, var_b, abs(diff), alpha, power))


def seed_fields(res: SeedResult | None) -> dict:
    """The seed-level columns a report table keeps of a comparison (NaN where fewer than 2 seeds on a side)."""
    if res is None:
        return {"seeds_a": math.nan, "seeds_b": math.nan, "seed_ci_low": math.nan, "seed_ci_high": math.nan,
                "seed_mde": math.nan, "seed_significant": False, "seed_verdict": "not tested",
                "seeds_for_gap": math.nan}
    return {"seeds_a": res.seeds_a, "seeds_b": res.seeds_b, "seed_ci_low": res.ci_low, "seed_ci_high": res.ci_high,
            "seed_mde": res.mde, "seed_significant": res.significant, "seed_verdict": res.verdict,
            "seeds_for_gap": res.seeds_for_diff}


@dataclass(frozen=True)
class FlipResult:
    """Answer flips of a candidate against a reference on the same items (binary scores)."""
    n_items: int
    correct_to_wrong: int  # reference right, candidate wrong
    wrong_to_correct: int  # reference wrong, candidate right
    c2w_ci: tuple[float, float]  # paired-bootstrap CI of the correct->wrong rate
    w2c_ci: tuple[float, float]
    flip_ci: tuple[float, float]  # of the rate of either flip

    @property
    def c2w_rate(self) -> float:
        return self.correct_to_wrong / self.n_items

    @property
    def w2c_rate(self) -> float:
        return self.wrong_to_correct / self.n_items

    @property
    def flip_rate(self) -> float:
        return (self.correct_to_wrong + self.wrong_to_correct) / self.n_items


def flip_table(reference, candidate, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> FlipResult:
    """Count the items whose binary score flips between reference and candidate, with bootstrap CIs of the rates
    (each rate is the mean of a per-item flip indicator, resampled over items as in `paired_bootstrap`)."""
    ref, cand = np.asarray(reference, dtype=float), np.asarray(candidate, dtype=float)
    if ref.shape != cand.shape or ref.ndim != 1 or len(ref) == 0:
        raise QgenError(f"flip counts need two equal-length, non-empty 1-D score arrays, got shapes {ref.shape} and "
                        f"{cand.shape}")
    if not is_binary(ref, cand):
        raise QgenError("flip counts need binary per-item scores (0 or 1), e.g. acc of single-seed jobs")
    c2w, w2c = (ref == 1) & (cand == 0), (ref == 0) & (cand == 1)
    zero = np.zeros(len(ref))

    def ci(indicator):
        r = paired_bootstrap(indicator.astype(float), zero, n_boot, alpha, seed)
        return (r.ci_low, r.ci_high)

    return FlipResult(len(ref), int(c2w.sum()), int(w2c.sum()), ci(c2w), ci(w2c), ci(c2w | w2c))


def item_scores(samples: pd.DataFrame, task: str, metric: str) -> pd.Series:
    """Per-item score of one task, averaged over the seeds (samples of several jobs concatenated)."""
    rows = samples[samples["task"] == task]
    if metric not in rows.columns:
        return pd.Series(dtype=float)
    rows = rows.dropna(subset=[metric])
    return rows.groupby("doc_id")[metric].mean().astype(float)


def compare_items(samples_a: pd.DataFrame, samples_b: pd.DataFrame, task: str, metric: str,
                  n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> PairedResult | None:
    """Paired bootstrap of A vs B on the items of `task` both scored; None when they share no item."""
    a, b = item_scores(samples_a, task, metric), item_scores(samples_b, task, metric)
    common = a.index.intersection(b.index)
    if len(common) == 0:
        return None
    return paired_bootstrap(a.loc[common].to_numpy(), b.loc[common].to_numpy(), n_boot, alpha, seed)


def seed_summary(values: pd.Series) -> dict:
    """mean, std (ddof=1; NaN for a single seed) and number of seeds of one configuration's values."""
    v = values.dropna().astype(float)
    return {"mean": float(v.mean()) if len(v) else float("nan"),
            "std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
            "n_seeds": len(v)}


# Metrics where lower is better: perplexity, KL divergence to FP, answer flips against FP (any flip is a departure
# from the FP model, wrong->correct ones included).
LOWER_IS_BETTER_PREFIXES = ("ppl", "kl_", "flip_")


def higher_is_better(metric: str) -> bool:
    return not str(metric).startswith(LOWER_IS_BETTER_PREFIXES)


def damage(metric: str, value, fp_value):
    """How far a quantized model departs from FP in the harmful direction (higher: more damage): the value itself
    for the KL to FP and answer flips against FP (FP's own is 0), 1 − value for the top-1 agreement with FP (FP's
    own is 1), else FP − value where higher is better (the accuracy drop) and value − FP where lower is better (the
    perplexity increase)."""
    if str(metric).startswith(("kl_", "flip_")):
        return value
    if str(metric).startswith("top1_agree_"):
        return 1 - value
    return fp_value - value if higher_is_better(metric) else value - fp_value


def seed_interval(values, alpha: float = 0.05) -> tuple[float, float]:
    """The t-interval of the mean of per-seed values, mean ± t_{1-α/2, k-1}·sd/√k (sd with ddof=1); NaNs with
    fewer than 2 seeds."""
    v = np.asarray(pd.Series(values).dropna(), dtype=float)
    if len(v) < 2:
        return math.nan, math.nan
    half = _t(1 - alpha / 2, len(v) - 1) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return float(v.mean()) - half, float(v.mean()) + half


@dataclass(frozen=True)
class RankCorrelation:
    """Spearman's ρ with its percentile bootstrap CI and permutation p-value (`rank_correlation`)."""
    n: int  # units resampled: pairs, or groups of pairs
    rho: float
    ci_low: float
    ci_high: float
    n_boot: int  # resamples in which ρ was defined (a resample whose x or y ranks are all tied has none)
    p_value: float  # two-sided, from permutations of y (within groups): exact where there are few
    exact: bool  # p_value from every permutation, not a Monte-Carlo sample of them


EXACT_PERMUTATIONS = 10_000  # up to this many, the permutation p-value enumerates them all


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=-1, keepdims=True)
    y = y - y.mean(axis=-1, keepdims=True)
    den = np.sqrt((x * x).sum(axis=-1) * (y * y).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (x * y).sum(axis=-1) / np.where(den > 0, den, 1), np.nan)


def _centered_ranks(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    out = np.empty(len(values))
    for g in np.unique(groups):
        at = groups == g
        ranks = rankdata(values[at])
        out[at] = ranks - ranks.mean()
    return out


def _permutation_p(a: np.ndarray, b: np.ndarray, blocks: list[np.ndarray], n_perm: int,
                   rng: np.random.Generator) -> tuple[float, bool]:
    """Two-sided p-value of ρ = Σ a·b / √(Σa² Σb²) (a, b centred ranks) under permutations of b inside each block
    of indices (the null: no association; ρ's denominator is the same under every such permutation): the share of
    permutations with |ρ| at least the observed, over all of them where there are at most EXACT_PERMUTATIONS, else
    over `n_perm` random ones with the observed counted in, (1 + hits) / (1 + n_perm)."""
    import itertools

    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    if den == 0:
        return math.nan, False
    observed = abs(float((a * b).sum())) / den - 1e-12
    total = math.prod(math.factorial(len(k)) for k in blocks)
    if total <= EXACT_PERMUTATIONS:
        hits = 0
        for choice in itertools.product(*(itertools.permutations(k) for k in blocks)):
            perm = np.empty(len(b), dtype=int)
            for k, order in zip(blocks, choice):
                perm[k] = order
            hits += abs(float((a * b[perm]).sum())) / den >= observed
        return hits / total, True
    hits = 0
    for _ in range(n_perm):
        perm = np.arange(len(b))
        for k in blocks:
            perm[k] = rng.permutation(k)
        hits += abs(float((a * b[perm]).sum())) / den >= observed
    return (1 + hits) / (1 + n_perm), False


def rank_correlation(x, y, groups=None, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> RankCorrelation:
    """Spearman's rank correlation of paired values x, y (average ranks for ties) with a percentile bootstrap CI and
    a permutation p-value.

    Without `groups`: ρ = Pearson's correlation of the ranks of x and of y; the bootstrap resamples the pairs and
    re-ranks each resample; the permutations shuffle y over all pairs. With `groups` (a label per pair): the ranks are
    taken within each group and centred on the group's mean rank, ρ = Σ_g Σ xr·yr / √(Σ_g Σ xr² · Σ_g Σ yr²) over
    the groups of ≥ 2 pairs (with one group, its Spearman ρ): how well x orders y inside groups, whatever separates
    the groups; the bootstrap resamples whole groups, the permutations shuffle y inside each group. With few units
    the bootstrap CI understates the uncertainty (3 groups that all agree give [1, 1]); the permutation p-value does
    not (those 3 groups of 2 give p = 2/8). ρ is NaN where x or y is constant (over all pairs, or in every group)."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise QgenError(f"a rank correlation needs two equal-length 1-D arrays, got shapes {x.shape} and {y.shape}")
    q = [alpha / 2, 1 - alpha / 2]
    rng = np.random.default_rng(seed)
    if groups is None:
        if len(x) < 2:
            raise QgenError("a rank correlation needs at least 2 pairs")
        rho = float(_rowwise_pearson(rankdata(x), rankdata(y)))
        idx = rng.integers(0, len(x), size=(int(n_boot), len(x)))
        boot = _rowwise_pearson(rankdata(x[idx], axis=1), rankdata(y[idx], axis=1))
        n = len(x)
        a, b = rankdata(x) - (len(x) + 1) / 2, rankdata(y) - (len(x) + 1) / 2
        blocks = [np.arange(len(x))]
    else:
        groups = np.asarray(groups)
        labels, counts = np.unique(groups, return_counts=True)
        keep = np.isin(groups, labels[counts >= 2])
        if not keep.any():
            raise QgenError("a within-group rank correlation needs a group of at least 2 pairs")
        g = groups[keep]
        a, b = _centered_ranks(x[keep], g), _centered_ranks(y[keep], g)
        kept = np.unique(g)
        sums = np.array([[(a * b)[g == k].sum(), (a * a)[g == k].sum(), (b * b)[g == k].sum()]
                         for k in kept])  # groups × (Sxy, Sxx, Syy)
        n = len(kept)

        def rho_of(weights):  # weights: resamples × groups (how often each group was drawn)
            sxy, sxx, syy = (weights @ sums).T
            den = np.sqrt(sxx * syy)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(den > 0, sxy / np.where(den > 0, den, 1), np.nan)

        rho = float(rho_of(np.ones((1, n)))[0])
        boot = rho_of(rng.multinomial(n, np.full(n, 1.0 / n), size=int(n_boot)).astype(float))
        blocks = [np.flatnonzero(g == k) for k in kept]
    boot = boot[~np.isnan(boot)]
    low, high = np.quantile(boot, q) if len(boot) else (math.nan, math.nan)
    p, exact = _permutation_p(a, b, blocks, int(n_boot), rng)
    return RankCorrelation(n, rho, float(low), float(high), len(boot), p, exact)
