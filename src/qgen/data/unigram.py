"""Token distributions of prepared datasets, and the distance between a target's and a calibration set's: the proxy
`qgen recommend` ranks calibration sets by where no finished sweep measured the damage on the target, and that the
S2 report correlates with the measured damage.

Text. A dataset part is its prepared rows rendered by the dataset's `calib_text` (registry.render_split): the
calibration part as calibration windows are cut from it (qgen.data.calibration), the evaluation part as the
divergence metrics and perplexity read it (the target's held-out text). Each rendered row is one document, tokenized
on its own by the model's tokenizer without special tokens; empty documents are left out.

Distance. P: the unigram token frequencies of the target's evaluation part; Q: those of a candidate's calibration
part; maximum-likelihood estimates (count / total), with no smoothing. Their Jensen–Shannon divergence, in nats,

    JS(P, Q) = ½ KL(P ‖ M) + ½ KL(Q ‖ M),   M = (P + Q) / 2,

is finite without smoothing (M > 0 wherever P or Q is), 0 for identical distributions and ln 2 ≈ 0.693 for disjoint
vocabularies; additive smoothing would pull every distance towards 0 by an amount that depends on the vocabulary
size and the texts' lengths. The plug-in estimate is biased upwards for short texts (a token seen on one side only
by chance counts as mass the other lacks), so the documents and tokens behind each distance are reported with it.
The calibration settings that shape the windows (calib.n_samples, seq_len, min_tokens, chat_template) do not enter
it: it describes the calibration part a set is drawn from.

Uncertainty (`estimate`, `rank`). A bootstrap over documents: each resample draws the target's documents and the
candidate's with replacement, recounts and recomputes the plug-in JS. The plug-in value is biased upwards, the more
the shorter the texts (under SmolLM2's tokenizer, sst2's evaluation part against its own calibration part, 23k and
10k tokens, reads 0.108 nats where the resamples average 0.133 with a spread of 0.002), so a percentile interval
would not even cover it. Each distance is therefore the bias-corrected value 2·JS − mean(resampled JS) (the
bootstrap's estimate of the bias, which removes part of it), with the basic bootstrap interval
[2·JS − q(1 − α/2), 2·JS − q(α/2)] (q: quantiles of the resampled values), both kept within [0, ln 2], and the plug-in
value beside it; candidates are ranked by the corrected distance. A candidate's gap to the closest is the same
construction on paired differences: in each resample both distances use the same draw of the target's documents,
each candidate its own draw of its documents, seeded by its name (the same candidate gets the same draws whatever
else is ranked). Identical distributions give 0 and disjoint vocabularies ln 2 in every resample, hence exactly.

Cache. The counts are computed on first use and cached (qgen.cache kind `tokens`, under QGEN_HOME/cache/tokens, or
QGEN_CACHE_DIR): one entry per (tokenizer identity, dataset, part, the part file's sha256 as the prepared folder's
manifest qgen-asset.json records it, calib_text), holding the document × token count matrix. That amounts to
computing them at preparation — a re-prepared part has another sha256, hence another entry — without needing a
tokenizer at `make assets`, which prepares data for every model.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.special import xlogy

from qgen.errors import QgenError

log = logging.getLogger(__name__)

PROXY = "JS divergence of unigram token distributions"
LN2 = float(np.log(2))
CHUNK = 100  # bootstrap resamples computed at once (bounds the dense resample × vocabulary temporaries)


@dataclass(frozen=True)
class PartCounts:
    """A dataset part's token counts: `docs` is a CSR matrix documents × vocabulary."""
    dataset: str
    part: str
    docs: sparse.csr_matrix

    @property
    def n_docs(self) -> int:
        return self.docs.shape[0]

    @property
    def totals(self) -> np.ndarray:
        return np.asarray(self.docs.sum(axis=0), dtype=float).ravel()

    @property
    def tokens(self) -> int:
        return int(self.docs.sum())


def tokenize_documents(tokenizer, texts: list[str]) -> sparse.csr_matrix:
    """Documents × vocabulary token counts of the non-empty texts."""
    ids = tokenizer([t for t in texts if t.strip()], add_special_tokens=False)["input_ids"]
    indptr, indices, data = [0], [], []
    for doc in ids:
        tokens, counts = np.unique(np.asarray(doc, dtype=np.int64), return_counts=True)
        indices.append(tokens)
        data.append(counts)
        indptr.append(indptr[-1] + len(tokens))
    vocab = max(len(tokenizer), 1 + max((int(t[-1]) for t in indices if len(t)), default=0))
    data = np.concatenate(data) if data else np.zeros(0)
    indices = np.concatenate(indices) if indices else np.zeros(0)
    return sparse.csr_matrix((data.astype(np.int32), indices.astype(np.int32), np.asarray(indptr, dtype=np.int64)),
                             shape=(len(ids), vocab))


def part_counts(tokenizer, dataset: str, part: str) -> PartCounts:
    """The part's token counts, from the `tokens` cache or computed and cached (module docstring)."""
    from qgen.cache import Cache, make_key
    from qgen.data import registry
    from qgen.job import prepared_sha256, tokenizer_identity

    spec = registry.get(dataset)
    sha = prepared_sha256([dataset], part)[dataset]
    if sha is None:
        raise QgenError(f"dataset {dataset!r} is not prepared here: run `qgen prepare {dataset}` (or `qgen assets "
                        f"fetch` for every offline dataset)")
    identity = {"tokenizer": tokenizer_identity(tokenizer), "dataset": dataset, "part": part, "data": sha,
                "calib_text": spec.calib_text}
    store = Cache("tokens")
    key = make_key("tokens", identity)
    hit = store.get(key)
    if hit is None:
        docs = tokenize_documents(tokenizer, registry.render_split(dataset, part))
        if docs.shape[0] == 0:
            raise QgenError(f"dataset {dataset!r} has no text in its {part} part")

        def write(folder):
            sparse.save_npz(folder / "counts.npz", docs)
            return {"dataset": dataset, "part": part, "docs": docs.shape[0], "tokens": int(docs.sum())}

        hit = store.put(key, write)
        log.info("token counts of %s/%s: %d documents, %d tokens (cached)", dataset, part, docs.shape[0],
                 int(docs.sum()))
    return PartCounts(dataset, part, sparse.load_npz(hit.folder / "counts.npz").tocsr())


def js_divergence(p, q) -> np.ndarray:
    """JS divergence in nats between the rows of two count arrays (each row normalised to frequencies)."""
    p, q = np.atleast_2d(np.asarray(p, dtype=float)), np.atleast_2d(np.asarray(q, dtype=float))
    p = p / p.sum(axis=1, keepdims=True)
    q = q / q.sum(axis=1, keepdims=True)
    m = (p + q) / 2
    js = 0.5 * (xlogy(p, p) - xlogy(p, m) + xlogy(q, q) - xlogy(q, m)).sum(axis=1)
    return np.clip(js, 0.0, LN2)  # [0, ln 2] exactly; only rounding leaves it


def distance(target: PartCounts, candidate: PartCounts) -> float:
    return float(js_divergence(target.totals, candidate.totals)[0])


def _resampled(counts: PartCounts, cols: np.ndarray, seed: tuple, n_boot: int):
    """The part's counts over `cols` in each of `n_boot` resamples of its documents, CHUNK resamples at a time."""
    sub = counts.docs[:, cols].tocsc().T.tocsr()  # cols × documents
    n = counts.n_docs
    for start in range(0, n_boot, CHUNK):
        rng = np.random.default_rng((*seed, start))
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=min(CHUNK, n_boot - start))  # resamples × documents
        yield np.asarray(sub @ weights.T, dtype=float).T  # resamples × cols


def _name_seed(name: str) -> int:
    return zlib.crc32(name.encode())


def bootstrap(target: PartCounts, candidate: PartCounts, n_boot: int, seed: int = 0) -> np.ndarray:
    """JS(target, candidate) in `n_boot` document resamples (module docstring): the target's draws depend only on
    `seed`, the candidate's on `seed` and its name."""
    cols = np.union1d(target.docs.indices, candidate.docs.indices)
    pairs = zip(_resampled(target, cols, (seed, 0), n_boot),
                _resampled(candidate, cols, (seed, 1, _name_seed(candidate.dataset)), n_boot))
    return np.concatenate([js_divergence(t, c) for t, c in pairs])


@dataclass(frozen=True)
class Estimate:
    """One candidate's distance to the target (module docstring): the plug-in JS, the bias-corrected one and its
    basic bootstrap CI; `boot` holds the resampled plug-in values (for paired gaps)."""
    calib: str
    plug_in: float
    distance: float  # bias-corrected: 2·plug_in − mean(boot), within [0, ln 2]
    ci_low: float
    ci_high: float
    docs: int
    tokens: int
    boot: np.ndarray


def _basic(point: float, boot: np.ndarray, alpha: float, bounds=(-LN2, LN2)) -> tuple[float, float, float]:
    """(bias-corrected value, basic bootstrap interval) of a statistic from its resampled values, within bounds."""
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    values = np.clip([2 * point - boot.mean(), 2 * point - high, 2 * point - low], *bounds)
    return float(values[0]), float(values[1]), float(values[2])


def estimate(target: PartCounts, candidate: PartCounts, n_boot: int = 1000, alpha: float = 0.05,
             seed: int = 0) -> Estimate:
    point = distance(target, candidate)
    boot = bootstrap(target, candidate, n_boot, seed)
    corrected, low, high = _basic(point, boot, alpha, (0.0, LN2))
    return Estimate(candidate.dataset, point, corrected, low, high, candidate.n_docs, candidate.tokens, boot)


@dataclass(frozen=True)
class ProxyRow:
    estimate: Estimate
    gap: float  # bias-corrected distance minus the closest candidate's
    gap_ci_low: float
    gap_ci_high: float

    @property
    def distinguishable(self) -> bool:
        """The gap's CI excludes 0 (False for the closest candidate itself)."""
        return bool(self.gap_ci_low > 0 or self.gap_ci_high < 0)


def rank(target: PartCounts, candidates: list[PartCounts], n_boot: int = 1000, alpha: float = 0.05,
         seed: int = 0) -> list[ProxyRow]:
    """Candidates' calibration parts ordered by their bias-corrected distance to the target's evaluation part
    (closest first, ties by name), each with its CI and its gap to the closest with the gap's CI (module
    docstring)."""
    if not candidates:
        raise QgenError("no candidate calibration set to rank")
    found = sorted((estimate(target, c, n_boot, alpha, seed) for c in candidates),
                   key=lambda e: (e.distance, e.calib))
    best = found[0]
    rows = []
    for e in found:
        gap, low, high = _basic(e.plug_in - best.plug_in, e.boot - best.boot, alpha)
        rows.append(ProxyRow(e, gap, low, high))
    return rows
