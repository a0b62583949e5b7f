"""`qgen report`: its options and what it runs (imports the plotting stack only when it runs)."""

from __future__ import annotations

from pathlib import Path

from qgen.errors import QgenError

SCENARIOS = ("s1", "s2", "s3", "ablation")


def add_arguments(p) -> None:
    """The `qgen report` options (kept here so cli.py only registers the subcommand)."""
    p.add_argument("dirs", nargs="*", default=["outputs"], help="output dirs to read (default: outputs)")
    p.add_argument("--out", default="report", help="report dir (default: report)")
    p.add_argument("--scenario", nargs="+", default=["s1", "s2", "s3"], choices=SCENARIOS)
    p.add_argument("--groups", help="S2/S3 task families: a YAML/JSON file or inline text "
                                    "{family: {in_distribution: dataset, members: [datasets]}}")
    p.add_argument("--suite", help="glob over eval suite names selecting the jobs (default per scenario)")
    p.add_argument("--metric", default="acc", help="primary metric of accuracy tasks (acc or acc_norm)")
    p.add_argument("--against", nargs="+", default=[], metavar="CALIB",
                   help="S2/S3: also compare every calibration set with this one per test set (e.g. xsum, a generic "
                        "corpus), with item and seed CIs")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--alpha", type=float, default=0.05, help="1 - CI level (default 0.05)")
    p.add_argument("--no-figures", action="store_true", help="tables only")
    p.add_argument("--no-tables", action="store_true", help="do not write table files (figures and pages only)")
    p.add_argument("--publish", action="store_true", help="also log the tables to W&B (offline unless logged in)")
    p.add_argument("--wandb-project", default="qgen")


def run(args) -> None:
    if args.n_boot < 100:
        raise QgenError(f"--n-boot={args.n_boot} is too small: use at least 100 resamples")
    from qgen.analysis import groups as groups_mod
    from qgen.analysis.report import Options, build

    opts = Options(roots=list(args.dirs), out_dir=Path(args.out), scenarios=tuple(args.scenario),
                   groups=groups_mod.parse(args.groups) if args.groups else None, suite=args.suite,
                   score=args.metric, n_boot=args.n_boot, alpha=args.alpha, tables=not args.no_tables,
                   figures=not args.no_figures, against=tuple(args.against))
    for root in opts.roots:
        if not Path(root).exists():
            raise QgenError(f"{root} does not exist: give output dirs holding results.json files")
    written = build(opts)
    pages = [p.name for p in written if p.suffix == ".md" and p.parent == opts.out_dir]
    print(f"report: {len(written)} files under {opts.out_dir}/ ({', '.join(pages)})")
    if args.publish:
        from qgen.analysis.publish import publish

        print(f"published: {publish(opts.out_dir, project=args.wandb_project)}")
