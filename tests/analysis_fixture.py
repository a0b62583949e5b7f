"""A hand-written sweep for the analysis tests: results.json + samples.jsonl files whose tables are computed by
hand in the tests (see the docstring of `write_fixture`)."""

from __future__ import annotations

import json
from pathlib import Path

GROUPS = {"fam": {"in_distribution": "a", "members": ["a", "b"]}}

# Per-item accuracy (doc_id = position). Task a has 4 items, task b 8.
FP_ITEMS = {"qgen_a": [1, 1, 1, 0], "qgen_b": [1, 1, 1, 1, 0, 0, 0, 0]}
Q_ITEMS = {  # (calib, seed) -> task -> items
    ("a", 1): {"qgen_a": [1, 1, 1, 0], "qgen_b": [0] * 8},
    ("a", 2): {"qgen_a": [1, 1, 0, 0], "qgen_b": [0] * 8},
    ("b", 1): {"qgen_a": [1, 0, 0, 0], "qgen_b": [1, 1, 1, 1, 0, 0, 0, 0]},
    ("b", 2): {"qgen_a": [1, 0, 0, 0], "qgen_b": [1, 1, 1, 1, 0, 0, 0, 0]},
}
FP_PPL = 10.0
Q_PPL = {("a", 1): 12.0, ("a", 2): 14.0, ("b", 1): 11.0, ("b", 2): 11.0}


def _metrics(items: dict, ppl: float) -> dict:
    out = {task: {"acc": {"value": sum(v) / len(v), "stderr": 0.1}, "n_items": {"value": len(v), "stderr": None}}
           for task, v in items.items()}
    out["ppl/wiki"] = {"ppl_nonoverlap_w512": {"value": ppl, "stderr": None}, "tokens": {"value": 1000, "stderr": None}}
    return out


def _config(quantizer: str, bits: str, calib: str, seed: int, suite: str, groups: dict | None) -> dict:
    return {"model": {"name": "m"}, "quantizer": {"name": quantizer}, "bits": {"name": bits},
            "calib": {"name": calib, "dataset": calib, "n_samples": 128, "seq_len": 512},
            "eval_suite": {"name": suite, "limit": None, **({"groups": groups} if groups else {})}, "seed": seed}


def _job(root: Path, name: str, config: dict, metrics: dict, items: dict, baseline: dict | None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    data = {"schema": 1, "job_id": name, "status": "completed", "config": config, "seed": config["seed"],
            "metrics": metrics, "baseline": baseline, "timings": {"evaluate": 1.0}, "memory": {"peak_rss_mb": 1.0}}
    (d / "results.json").write_text(json.dumps(data))
    with open(d / "samples.jsonl", "w") as f:
        for task, values in items.items():
            f.writelines(json.dumps({"task": task, "doc_id": i, "acc": v}) + "\n" for i, v in enumerate(values))
    return d


def write_fixture(root: Path, suite: str = "s2_fixture", groups: dict | None = GROUPS) -> Path:
    """Two FP jobs (seeds 1, 2) and RTN w4a16 jobs calibrated on a and on b (seeds 1, 2). Jobs calibrated on a
    carry their own FP baseline; jobs calibrated on b have none (their FP comes from the FP job of the same
    seed). A failed job must be ignored. The suite records `groups` unless groups=None. Hand-computed results:

      acc          test a            test b     ppl/wiki
      FP           0.75              0.5        10
      calib a      0.625 ± 0.1768    0.0        13 ± 1.414
      calib b      0.25  ± 0         0.5        11 ± 0
    """
    root = Path(root)
    for seed in (1, 2):
        _job(root / "multiruns" / "fp", f"fp_s{seed}", _config("none", "w4a16", "wiki", seed, suite, groups),
             _metrics(FP_ITEMS, FP_PPL), FP_ITEMS, None)
    for (calib, seed), items in Q_ITEMS.items():
        baseline = {"metrics": _metrics(FP_ITEMS, FP_PPL)} if calib == "a" else None
        _job(root / "multiruns" / "q", f"rtn_{calib}_s{seed}", _config("rtn", "w4a16", calib, seed, suite, groups),
             _metrics(items, Q_PPL[(calib, seed)]), items, baseline)
    failed = _job(root / "multiruns" / "q", "rtn_broken", _config("rtn", "w2a16", "a", 1, suite, groups),
                  _metrics(Q_ITEMS[("a", 1)], 99.0), Q_ITEMS[("a", 1)], None)
    data = json.loads((failed / "results.json").read_text())
    data["status"] = "failed"
    (failed / "results.json").write_text(json.dumps(data))
    return root


def add_quantizer(root: Path, quantizer: str, items_b: list[int]) -> None:
    """Copies of the calib-a RTN jobs as another quantizer, with task b's items replaced by `items_b`."""
    for seed in (1, 2):
        src = Path(root) / "multiruns" / "q" / f"rtn_a_s{seed}"
        data = json.loads((src / "results.json").read_text())
        data["config"]["quantizer"]["name"] = quantizer
        data["job_id"] = f"{quantizer}_a_s{seed}"
        items = {**Q_ITEMS[("a", seed)], "qgen_b": items_b}
        _job(Path(root) / "multiruns" / quantizer, data["job_id"], data["config"],
             _metrics(items, Q_PPL[("a", seed)]), items, data["baseline"])


def write_ablation(root: Path) -> Path:
    """RTN calibrated on a with n_samples 1 and 8 (seeds 1, 2): test a is in-distribution, b is not.

      n_samples   a (ID)         b
      1           0.25 ± 0       0.125 ± 0
      8           0.625 ± 0.177  0.5 ± 0
    """
    items = {1: {"qgen_a": [1, 0, 0, 0], "qgen_b": [1, 0, 0, 0, 0, 0, 0, 0]},
             8: {"qgen_a": None, "qgen_b": [1, 1, 1, 1, 0, 0, 0, 0]}}
    for n in (1, 8):
        for seed in (1, 2):
            it = {**items[n]}
            if it["qgen_a"] is None:
                it["qgen_a"] = Q_ITEMS[("a", seed)]["qgen_a"]
            cfg = _config("rtn", "w4a16", "a", seed, "s2_fixture", GROUPS)
            cfg["calib"]["n_samples"] = n
            _job(Path(root), f"n{n}_s{seed}", cfg, _metrics(it, 12.0), it, {"metrics": _metrics(FP_ITEMS, FP_PPL)})
    return Path(root)


# -- letters: three registered datasets whose token distributions are known by construction ------------------------
LETTERS = {"x": "abcd", "y": "cdef", "z": "ghij"}  # x and y share half their letters, z none with either
LETTER_GROUPS = {"letters": {"in_distribution": "x", "members": ["x", "y"]}}
TINY_MODEL = {"name": "tiny-llama", "pretrained": None, "asset": None, "dtype": "float32",
              "random_init": {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
                              "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64,
                              "tie_word_embeddings": True}}  # a byte-level tokenizer: every letter is one token


def register_letters(tmp_path: Path) -> Path:
    """Datasets x, y, z (QGEN_DATASETS_DIR folder returned): every row is one of the 24 orderings of the dataset's
    four letters, so under a byte-level tokenizer each row — hence each part, and each bootstrap resample of its
    rows — has the uniform unigram distribution over those letters. JS divergences in nats: x/x 0, x/y ½ ln 2 (the
    halves they share hold half the mass: KL(P ‖ M) = ½ ln 2 on each side), x/z and y/z ln 2."""
    from itertools import permutations

    from conftest import write_user_dataset

    regdir = None
    for name, letters in LETTERS.items():
        rows = [{"text": "".join(p)} for p in permutations(letters)]
        regdir = write_user_dataset(tmp_path, name, rows, task_type="corpus", calib_text="{{text}}")
    return regdir


# Per-window KL to FP (4 windows) of the letters sweep, by how the calibration set relates to the test set.
KL_WINDOWS = {
    "same": {1: [0.10, 0.12, 0.11, 0.09], 2: [0.12, 0.10, 0.11, 0.11]},  # seed means 0.105, 0.11
    "half": {1: [0.20, 0.22, 0.21, 0.19], 2: [0.21, 0.21, 0.20, 0.22]},  # 0.205, 0.21
    "disjoint": {1: [0.30, 0.31, 0.29, 0.30]},  # 0.30; calibrated on z with one seed only
}
KL_METRIC = "kl_mean_nonoverlap_w512_top64"


def write_letters_sweep(root: Path) -> Path:
    """RTN w4a16 jobs of the tiny model calibrated on x and y (seeds 1, 2) and on z (seed 1), each scoring the KL to
    FP on x and y: the windows of KL_WINDOWS by relation (same set, half the letters shared, none shared), so the
    damage grows with the token distance by construction. Hand-computed means (test x / test y):

      calib x   0.1075 / 0.2075      calib y   0.2075 / 0.1075      calib z   0.30 / 0.30
    """
    root = Path(root)
    for calib in LETTERS:
        for seed in (1, 2) if calib != "z" else (1,):
            metrics, items = {}, []
            for test in ("x", "y"):
                relation = "same" if calib == test else "disjoint" if calib == "z" else "half"
                windows = KL_WINDOWS[relation][seed]
                task = f"kl/{test}"
                metrics[task] = {KL_METRIC: {"value": sum(windows) / len(windows), "stderr": 0.01},
                                 "n_items": {"value": len(windows), "stderr": None},
                                 "tokens": {"value": 511 * len(windows), "stderr": None}}
                items += [{"task": task, "doc_id": i, KL_METRIC: v} for i, v in enumerate(windows)]
            config = {"model": dict(TINY_MODEL), "quantizer": {"name": "rtn"}, "bits": {"name": "w4a16"},
                      "calib": {"name": calib, "dataset": calib, "n_samples": 8, "seq_len": 64},
                      "eval_suite": {"name": "s2_letters", "limit": None, "groups": LETTER_GROUPS}, "seed": seed}
            d = root / f"rtn_{calib}_s{seed}"
            d.mkdir(parents=True)
            (d / "results.json").write_text(json.dumps({
                "schema": 1, "job_id": d.name, "status": "completed", "config": config, "seed": seed,
                "metrics": metrics, "baseline": None, "timings": {"evaluate": 1.0}}))
            (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    return root
