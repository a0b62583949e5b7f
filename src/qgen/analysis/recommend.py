"""`qgen recommend --target DATASET [DIR ...] [--model M] [--quantizer Q] [--bits B]`: which calibration set for a
target dataset, ranked with CIs. Its options and what it runs (the analysis stack is imported only when it runs).

Measured, where finished jobs under the output dirs scored the target: each calibration set's damage on it — the KL
to FP where measured, else the accuracy drop — per setting, with CIs over seeds or items and a verdict against the
best set (qgen.analysis.ranking). Proxy, where none did (or with --proxy): the Jensen–Shannon divergence between
the unigram token distributions of the target's evaluation text and each candidate's calibration text under the
model's tokenizer, bias-corrected by a bootstrap over documents that also gives its CI and the CI of its gap to the
closest candidate (qgen.data.unigram); candidates are --candidates, else every registered dataset prepared here (the
target's own calibration part included); --quantizer and --bits do not enter it, and the output says so. The first
line of the output says which of the two it used and why; --json prints the same as one JSON object.

The proxy's tokenizer is the model's: --model names a model (the config recorded by the jobs under the dirs, else
conf/model/<M>.yaml); without it, the one model of the jobs there, else the default model of conf/config.yaml.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from qgen.errors import QgenError


def add_arguments(p) -> None:
    """The `qgen recommend` options (kept here so cli.py only registers the subcommand)."""
    p.add_argument("dirs", nargs="*", default=["outputs"], help="output dirs to read (default: outputs)")
    p.add_argument("--target", required=True, help="the registered dataset the quantized model will be used on")
    p.add_argument("--model", help="only jobs of this model (a model name); also the proxy's tokenizer")
    p.add_argument("--quantizer", help="only jobs of this quantizer (e.g. gptq)")
    p.add_argument("--bits", help="only jobs of these bits (e.g. w3a16)")
    p.add_argument("--damage", default="auto", choices=["auto", "kl", "acc"],
                   help="measured damage: KL to FP, accuracy drop, or auto (KL where measured)")
    p.add_argument("--proxy", action="store_true", help="rank by the token-distance proxy even where jobs measured")
    p.add_argument("--candidates", nargs="+", help="the proxy's calibration sets (default: every dataset "
                                                   "prepared here)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--alpha", type=float, default=0.05, help="1 - CI level (default 0.05)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def run(args) -> None:
    from qgen.data import registry

    registry.get(args.target)  # an unknown target is one line naming the registered datasets
    if args.n_boot < 100:
        raise QgenError(f"--n-boot={args.n_boot} is too small: use at least 100 resamples")
    if not 0 < args.alpha < 1:
        raise QgenError(f"--alpha={args.alpha} is not allowed: use a number between 0 and 1")
    filters = {"model": args.model, "quantizer": args.quantizer, "bits": args.bits}
    measured, why = None, "asked for with --proxy"
    if not args.proxy:
        for root in args.dirs:
            if not Path(root).exists():
                raise QgenError(f"{root} does not exist: give output dirs holding results.json files, or --proxy "
                                f"for the token-distance proxy alone")
        from qgen.analysis.ranking import rank_measured

        measured = rank_measured(args.dirs, args.target, filters, args.damage, args.n_boot, args.alpha)
        why = f"no finished sweep covers {args.target}"
    if measured is not None:
        report = measured_report(measured, args.alpha)
    else:
        report = proxy_report(args, why)
    if args.json:
        print(json.dumps(_plain({k: v for k, v in report.items() if k != "lines"}), indent=1))
    else:
        print("\n".join(report["lines"]))


def _plain(value):
    """JSON values: NaN as null, numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


# -- measured -----------------------------------------------------------------------------------------------------
def measured_report(m, alpha: float) -> dict:
    from qgen.analysis.ranking import DAMAGE_TEXT

    level = f"{100 * (1 - alpha):.0f}%"
    settings = len(m.rankings)
    headline = (f"measured ({m.jobs} jobs, {settings} setting{'s' * (settings > 1)}): damage on {m.target} = "
                f"{DAMAGE_TEXT[m.kind]}, lower is better")
    lines = [headline]
    for i, r in enumerate(m.rankings, 1):
        s = r.setting
        lines += ["", f"setting {i} of {settings}: {s['model']} {s['quantizer']} {s['bits']} "
                      f"(calib n={s['n_samples']}, len={s['seq_len']}), suite {s['suite']}, limit {s['limit']}; "
                      f"{r.task} {r.metric}",
                  *_table(["rank", "calibration", "damage", f"{level} CI", "CI over", "seeds", "items", "tokens",
                           "vs best", f"{level} CI", "CI over", "verdict"],
                          [_measured_row(x, m.target) for x in r.rows])]
    lines += ["", "CI over seeds: t-interval over the seeds (calibration draws); over items: bootstrap over the "
                  "target's items, the one calibration draw held fixed (run ≥ 2 seeds to ask about the set). vs best: "
                  "damage minus the best set's (Welch t over seeds where both have ≥ 2, else paired bootstrap over "
                  "items); verdict 'different': distinguishable from the best."]
    return {"basis": "measured", "headline": headline, "target": m.target, "damage": m.kind, "jobs": m.jobs,
            "settings": [{"setting": r.setting, "task": r.task, "metric": r.metric, "rows": r.rows}
                         for r in m.rankings], "lines": lines}


def _measured_row(x: dict, target: str) -> list:
    return [x["rank"], _label(x["calib"], target), f"{x['damage']:.4f}", _ci(x["ci_low"], x["ci_high"], "{:.4f}"),
            x["ci_basis"], x["seeds"], _count(x["items"]), _count(x["tokens"]),
            "–" if x["verdict"] == "best" else f"{x['gap']:+.4f}", _ci(x["gap_ci_low"], x["gap_ci_high"], "{:+.4f}"),
            x["gap_basis"] or "–", x["verdict"]]


# -- proxy --------------------------------------------------------------------------------------------------------
def proxy_report(args, why: str) -> dict:
    from qgen.data import registry, unigram
    from qgen.data.prepare import ensure_prepared, is_prepared
    from qgen.models.source import checked_tokenizer

    name, model_cfg = model_config(args.model, args.dirs)
    tokenizer = checked_tokenizer(model_cfg)
    ensure_prepared(registry.get(args.target))
    target = unigram.part_counts(tokenizer, args.target, "eval")
    if args.candidates:
        names = list(dict.fromkeys(registry.get(c).name for c in args.candidates))
    else:
        names = [s.name for s in registry.all_datasets().values() if is_prepared(s)]
    rows = unigram.rank(target, [unigram.part_counts(tokenizer, c, "calib") for c in names], args.n_boot, args.alpha)
    level = f"{100 * (1 - args.alpha):.0f}%"
    headline = f"proxy: {unigram.PROXY} ({why})"
    ignored = [f"--{k}" for k in ("quantizer", "bits") if getattr(args, k)]
    lines = [headline,
             f"target: the evaluation text of {args.target} ({target.n_docs} documents, {target.tokens} tokens); "
             f"tokenizer: {name}'s; candidates: the calibration text of {len(rows)} datasets"
             + (f"; {' and '.join(ignored)} do not enter the proxy" if ignored else ""),
             *_table(["rank", "calibration", "JS (nats)", f"{level} CI", "plug-in", "documents", "tokens",
                      "vs closest", f"{level} CI", "distinguishable"],
                     [[i, _label(r.estimate.calib, args.target),
                       f"{r.estimate.distance:.4f}", _ci(r.estimate.ci_low, r.estimate.ci_high, "{:.4f}"),
                       f"{r.estimate.plug_in:.4f}", r.estimate.docs, r.estimate.tokens,
                       "–" if i == 1 else f"{r.gap:+.4f}",
                       "–" if i == 1 else _ci(r.gap_ci_low, r.gap_ci_high, "{:+.4f}"),
                       "–" if i == 1 else ("yes" if r.distinguishable else "no")] for i, r in enumerate(rows, 1)]),
             "",
             f"JS in [0, ln 2 = 0.6931] (0: the same token frequencies), bias-corrected by a bootstrap over "
             f"documents ({args.n_boot} resamples) that gives the basic {level} CIs; plug-in: the uncorrected value; "
             f"vs closest: paired through the target's documents. A proxy, not a measurement: the S2 report "
             f"(`qgen report --scenario s2`) says how well it tracks the measured damage."]
    return {"basis": "proxy", "headline": headline, "target": args.target, "proxy": unigram.PROXY, "tokenizer": name,
            "target_documents": target.n_docs, "target_tokens": target.tokens,
            "rows": [{"rank": i, **{k: v for k, v in vars(r.estimate).items() if k != "boot"}, "gap": r.gap,
                      "gap_ci_low": r.gap_ci_low, "gap_ci_high": r.gap_ci_high,
                      "distinguishable": r.distinguishable} for i, r in enumerate(rows, 1)],
            "lines": lines}


def model_config(name: str | None, roots) -> tuple[str, dict]:
    """(model name, its config) for the proxy's tokenizer (module docstring)."""
    import yaml
    from omegaconf import OmegaConf

    from qgen.record.reader import read_configs
    from qgen.validate import CONF_DIR

    recorded = {}
    for cfg in read_configs(*[r for r in roots if Path(r).exists()]).values():
        model = cfg.get("model") or {}
        if model.get("name"):
            recorded.setdefault(model["name"], model)
    if name is None:
        if len(recorded) == 1:
            name = next(iter(recorded))
        else:
            defaults = yaml.safe_load((CONF_DIR / "config.yaml").read_text())["defaults"]
            name = next(d["model"] for d in defaults if isinstance(d, dict) and "model" in d)
    if name in recorded:
        return name, OmegaConf.create(recorded[name])
    path = CONF_DIR / "model" / f"{name}.yaml"
    if not path.is_file():
        known = sorted({p.stem for p in (CONF_DIR / "model").glob("*.yaml")} | set(recorded))
        raise QgenError(f"unknown --model {name!r}: use one of {', '.join(known)}")
    return name, OmegaConf.create(yaml.safe_load(path.read_text()))


# -- text ---------------------------------------------------------------------------------------------------------
def _label(calib: str, target: str) -> str:
    return f"{calib} (target's own)" if calib == target else calib


def _ci(low: float, high: float, fmt: str) -> str:
    return "–" if low is None or math.isnan(low) else f"[{fmt.format(low)}, {fmt.format(high)}]"


def _count(v: float) -> str:
    return "–" if v is None or math.isnan(v) else f"{v:.0f}"


def _table(headers: list[str], rows: list[list]) -> list[str]:
    """Plain fixed-width columns: numbers right-aligned, text left-aligned."""
    cells = [headers, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(r[i]) for r in cells[1:]) for i in range(len(headers))]
    return ["  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric)).rstrip()
            for r in cells]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == "–"
    return True
