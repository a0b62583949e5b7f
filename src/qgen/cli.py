"""`qgen` — the commands that are not Hydra jobs:

  qgen assets fetch [--full-check]   fetch, verify and prepare the offline model and datasets (idempotent)
  qgen datasets [--json]             the dataset registry and what is available on this machine
  qgen prepare NAME.. [--from DIR]   prepare hub-only datasets (c4, wiki, boss_sa, …) from the hub or a copy
  qgen results DIR [DIR ...]         a table of the results.json files under output dirs
  qgen cache list|clear [--kind K]   the content-addressed caches (calibration, quantized, eval, reference, tokens)
  qgen report [DIR ...] [--out report] [--scenario s1 s2 s3 ablation]   tables and figures (qgen.analysis)
  qgen recommend --target DATASET [DIR ...] [--model M] [--quantizer Q] [--bits B]   calibration sets for a target
  qgen export JOB_DIR [--out DIR]    a finished job's quantized model as a compressed-tensors checkpoint
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from qgen.errors import QgenError


def cmd_assets(args) -> None:
    from tqdm.auto import tqdm

    from qgen.assets import MODEL_ASSETS, ArchiveUnavailable, ensure_model_asset
    from qgen.data import registry
    from qgen.data.prepare import prepare

    offline = [s for s in registry.all_datasets().values() if s.offline]
    steps = [("model", name) for name in MODEL_ASSETS] + [("dataset", s.name) for s in offline]
    refused: dict[str, list[str]] = {}  # why the registry refused an archive -> the datasets read from it
    for kind, name in tqdm(steps, desc="assets", unit="asset"):
        if kind == "model":
            ensure_model_asset(name, full_check=args.full_check)  # no model, no job: its refusal stops here
            continue
        try:  # a refused archive is asked for once per process (qgen.assets): its other datasets fail at once
            prepare(registry.get(name), full_check=args.full_check)
        except ArchiveUnavailable as exc:  # only that archive's datasets are lost; prepare the rest
            refused.setdefault(str(exc), []).append(name)
    lost = sum(map(len, refused.values()))
    print(f"assets ready: {len(MODEL_ASSETS)} model(s), {len(offline) - lost} of {len(offline)} offline dataset(s)")
    for why, names in refused.items():
        print(f"not available offline ({len(names)}): {', '.join(names)} — {why}")


def cmd_prepare(args) -> None:
    """Prepare hub-only / local-only datasets (or a family of them) from a local copy laid out like the source."""
    from pathlib import Path

    from qgen.data import registry
    from qgen.data.prepare import ensure_prepared, prepare

    names = []
    for name in args.names:
        fam = registry.families().get(name)
        names += fam["members"] if fam else [registry.get(name).name]
    for name in names:
        spec = registry.get(name)
        folder = prepare(spec, local_dir=Path(args.source).expanduser()) if args.source else ensure_prepared(spec)
        print(f"{name}: prepared in {folder}")


def source_label(source: dict) -> str:
    if "package" in source:
        return f"{source['package']}:{source.get('member') or source.get('members')}"
    if "path" in source:
        return f"file:{source['path']}"
    return f"hub:{source['hub']['repo']}" if source.get("hub") else f"local:{source.get('layout', '')}"


def dataset_rows() -> list[dict]:
    from qgen.assets import read_manifest, refused
    from qgen.data import registry
    from qgen.data.prepare import is_prepared

    rows = []
    for spec in registry.all_datasets().values():
        manifest = read_manifest(spec.folder) or {}
        rows.append({
            "name": spec.name, "title": spec.title, "task_type": spec.task_type, "language": spec.language,
            "scenarios": list(spec.scenarios), "calibration_split": "calib", "evaluation_split": "eval",
            "split_rule": spec.split, "rows": manifest.get("rows"),
            "source": source_label(spec.source),
            "family": spec.family,
            "lm_eval_task": spec.lm_eval_task, "available": is_prepared(spec),
            "unavailable_offline": refused(spec.source["package"]) if "package" in spec.source else None,
        })
    return rows


def cmd_datasets(args) -> None:
    rows = dataset_rows()
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    for r in rows:
        size = f"{r['rows']['calib']}/{r['rows']['eval']}" if r["rows"] else "-"
        print(f"{r['name']:<28} {r['task_type']:<16} {r['language']:<6} {','.join(r['scenarios']):<28} "
              f"calib/eval {size:<11} "
              f"{'available' if r['available'] else 'unavailable' if r['unavailable_offline'] else 'missing'}")
    if lost := [r for r in rows if not r["available"] and r["unavailable_offline"]]:
        print(f"unavailable: {lost[0]['unavailable_offline']}; with the archive, or a copy of the files and "
              f"`qgen prepare NAME --from DIR`, they work as before")


def cmd_results(args) -> None:
    from qgen.record.reader import read_results, summary_table

    df = read_results(*args.dirs)
    if df.empty:
        raise QgenError(f"no results.json under {', '.join(args.dirs)}")
    table = summary_table(df)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def cmd_cache(args) -> None:
    from qgen import cache

    if args.action == "clear":
        print(f"removed {cache.clear(args.kind)} cache entries")
        return
    rows = [e for e in cache.entries() if args.kind in (None, e["kind"])]
    total = sum(e["bytes"] for e in rows)
    for e in rows:
        print(f"{e['kind']:<12} {e['key']}  {e['bytes'] / 1e6:10.1f} MB  "
              f"last used {time.strftime('%Y-%m-%d %H:%M', time.localtime(e['last_used']))}")
    print(f"{len(rows)} entries, {total / 1e6:.1f} MB in {cache.cache_dir()}")


def cmd_export(args) -> None:
    from pathlib import Path

    from qgen.job import export_job

    out = export_job(Path(args.job_dir), Path(args.out) if args.out else None, args.format)
    print(f"exported to {out} ({args.format}); load it with transformers' AutoModelForCausalLM.from_pretrained")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="qgen", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("assets", help="fetch and prepare offline assets")
    p.add_argument("action", choices=["fetch"])
    p.add_argument("--full-check", action="store_true", help="re-hash every prepared file, not only sizes")
    p.set_defaults(fn=cmd_assets)
    p = sub.add_parser("datasets", help="list registered datasets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_datasets)
    p = sub.add_parser("prepare", help="prepare hub-only datasets from the hub or a local copy (--from DIR)")
    p.add_argument("names", nargs="+", help="dataset or family names (e.g. c4, boss_sa)")
    p.add_argument("--from", dest="source", help="a local directory laid out like the dataset's source")
    p.set_defaults(fn=cmd_prepare)
    p = sub.add_parser("results", help="table of results under output dirs")
    p.add_argument("dirs", nargs="+")
    p.set_defaults(fn=cmd_results)
    from qgen.cache import KINDS as cache_kinds
    p = sub.add_parser("cache", help="list or clear the caches")
    p.add_argument("action", choices=["list", "clear"])
    p.add_argument("--kind", choices=cache_kinds)
    p.set_defaults(fn=cmd_cache)
    p = sub.add_parser("export", help="write a finished job's quantized model as a low-bit checkpoint")
    p.add_argument("job_dir", help="the output folder of one completed job (holds results.json)")
    p.add_argument("--out", default=None, help="where to write it (default: JOB_DIR/export)")
    p.add_argument("--format", default="compressed-tensors", choices=["compressed-tensors"])
    p.set_defaults(fn=cmd_export)
    from qgen import study
    p = sub.add_parser("study", help="run a study (conf/study) in an environment (conf/env), or list its jobs")
    study.add_arguments(p)
    p.set_defaults(fn=study.run)
    from qgen.analysis import command as report
    p = sub.add_parser("report", help="paper tables and figures from output dirs (S1, S2, S3, ablations)")
    report.add_arguments(p)
    p.set_defaults(fn=report.run)
    from qgen.analysis import recommend
    p = sub.add_parser("recommend", help="rank calibration sets for a target dataset: measured damage, else a proxy")
    recommend.add_arguments(p)
    p.set_defaults(fn=recommend.run)
    args = parser.parse_args(argv)
    try:
        args.fn(args)
    except QgenError as exc:
        print(f"qgen: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
