"""Task families for the calibration × test matrices (S2 cross-dataset shift, S3 cross-subject).

Schema, recorded with each job in `config.eval_suite.groups` (or given explicitly to the analysis):

    groups:
      <family>:
        in_distribution: <dataset>          # the family's in-distribution member (optional)
        members: [<dataset>, <dataset>, …]  # every test dataset of the family (the ID one included), or
        shifted: [<dataset>, …]             # … only its shifts: members = [in_distribution, *shifted]
        scenario: <tag>                     # optional: the registry's scenario tag of the family; then every
                                            # obtainable dataset with that tag must be a member (a test checks)

Datasets are registry names; their tasks are `qgen_<dataset>` (or `ppl/<dataset>` for corpora). A suite without
groups but with `categories: [<dataset>, …]` (S3) is one family, `subjects`, of those datasets.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from qgen.errors import QgenError


def validate(groups, origin: str) -> dict[str, dict]:
    if not isinstance(groups, dict) or not groups:
        raise QgenError(f"{origin}: groups must be a non-empty mapping "
                        f"{{family: {{in_distribution: dataset, members: [datasets]}}}}")
    out = {}
    for family, spec in groups.items():
        if not isinstance(spec, dict):
            raise QgenError(f"{origin}: group {family!r} must be a mapping with 'members' (or 'shifted')")
        ind = spec.get("in_distribution")
        listed = spec.get("members", spec.get("shifted"))
        if not isinstance(listed, (list, tuple)) or not (listed or ind):
            raise QgenError(f"{origin}: group {family!r} needs a non-empty list 'members' (or 'shifted')")
        members = [str(m) for m in listed]
        if "members" not in spec and ind is not None:
            members = [str(ind), *[m for m in members if m != str(ind)]]
        if ind is not None and str(ind) not in members:
            raise QgenError(f"{origin}: group {family!r}: in_distribution {ind!r} is not one of its members "
                            f"{', '.join(members)}")
        out[str(family)] = {"in_distribution": None if ind is None else str(ind), "members": members}
    return out


def parse(text_or_path: str) -> dict[str, dict]:
    """An explicit mapping: a YAML/JSON file path, or inline YAML/JSON text."""
    path = Path(text_or_path)
    if path.suffix in (".yaml", ".yml", ".json") or path.exists():
        if not path.is_file():
            raise QgenError(f"groups file {text_or_path!r} does not exist")
        text, origin = path.read_text(), str(path)
    else:
        text, origin = text_or_path, "--groups"
    try:
        raw = yaml.safe_load(text) if not text.lstrip().startswith("{") else json.loads(text)
    except (yaml.YAMLError, ValueError) as exc:
        raise QgenError(f"{origin}: not valid YAML/JSON ({str(exc).splitlines()[0]})") from None
    if isinstance(raw, dict) and "groups" in raw and isinstance(raw["groups"], dict):
        raw = raw["groups"]
    return validate(raw, origin)


def from_configs(configs: dict[str, dict]) -> dict[str, dict]:
    """The union of the groups recorded in the jobs' suite configs (`groups`, else `categories`); a family
    defined two ways is an error."""
    merged: dict[str, dict] = {}
    for job_dir, cfg in configs.items():
        suite = (cfg or {}).get("eval_suite") or {}
        raw = suite.get("groups")
        if not raw and suite.get("categories"):
            raw = {"subjects": {"in_distribution": None, "members": list(suite["categories"])}}
        if not raw:
            continue
        for family, spec in validate(raw, f"{job_dir}/results.json eval_suite.groups").items():
            if family in merged and merged[family] != spec:
                raise QgenError(f"suite group {family!r} differs between jobs ({job_dir}: {spec} vs {merged[family]});"
                                f" pass an explicit --groups mapping")
            merged[family] = spec
    return merged


def suite_members(suite: str, conf_dir: Path | None = None) -> list[str]:
    """Every dataset of an eval suite's groups (or categories), in order: the calibration sets of its sweep."""
    from qgen.validate import CONF_DIR

    path = Path(conf_dir or CONF_DIR) / "eval_suite" / f"{suite}.yaml"
    if not path.is_file():
        raise QgenError(f"no eval suite {suite!r} ({path} does not exist)")
    fams = from_configs({str(path): {"eval_suite": yaml.safe_load(path.read_text())}})
    if not fams:
        raise QgenError(f"eval suite {suite!r} records neither groups nor categories")
    return list(dict.fromkeys(m for spec in fams.values() for m in spec["members"]))


if __name__ == "__main__":  # `python -m qgen.analysis.groups s2_shift` -> "squad,squadshifts_nyt,…" for a sweep
    import sys

    try:
        print(",".join(suite_members(sys.argv[1])))
    except (QgenError, IndexError) as exc:
        print(f"qgen: error: {exc or 'usage: python -m qgen.analysis.groups <eval_suite>'}", file=sys.stderr)
        sys.exit(2)
