"""Field specifications: the small vocabulary the config schema (qgen.schema), the quantization methods' settings
and the engine settings are declared in. A spec checks one value and says in words what it allows; a `Section`
checks a mapping of fields, refuses keys it does not declare, and fills the defaults its fields carry.

Every refusal is one line, `<path>=<value> is not allowed: use <what is allowed>`, raised as QgenError.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qgen.errors import QgenError

REQUIRED = object()  # a field without a default must be given


def _show(value) -> str:
    return "null" if value is None else repr(value)


def refuse(path: str, value, allowed: str) -> QgenError:
    return QgenError(f"{path}={_show(value)} is not allowed: use {allowed}")


@dataclass(frozen=True)
class Spec:
    """One value. `nullable`: null is allowed too; `optional`: the key may be absent; `default`: what an absent key
    means (filled by `Section.fill`); `doc`: one line for the README's table."""

    nullable: bool = field(default=False, kw_only=True)
    optional: bool = field(default=False, kw_only=True)
    default: Any = field(default=REQUIRED, kw_only=True)
    doc: str = field(default="", kw_only=True)

    def accepts(self, value) -> bool:
        raise NotImplementedError

    def words(self) -> str:
        raise NotImplementedError

    def allowed(self) -> str:
        return self.words() + (", or null" if self.nullable else "")

    def check(self, path: str, value, pending: list | None = None):
        """The value as the code uses it (a number as float for Float); raises QgenError when not allowed.
        Sections inside append their rules to `pending` (run by `Section.validate` once every field passed)."""
        if value is None and self.nullable:
            return None
        if value is None or not self.accepts(value):
            raise refuse(path, value, self.allowed())
        return value


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


@dataclass(frozen=True)
class Int(Spec):
    lo: int | None = None
    hi: int | None = None
    also: tuple = ()  # values allowed outside [lo, hi] (e.g. -1: per channel)
    text: str | None = None  # the allowed values in words, where the range alone would mislead

    def accepts(self, v) -> bool:
        return _is_int(v) and (v in self.also or ((self.lo is None or v >= self.lo)
                                                   and (self.hi is None or v <= self.hi)))

    def words(self) -> str:
        if self.text:
            return self.text
        if self.lo is not None and self.hi is not None:
            base = f"an integer from {self.lo} to {self.hi}"
        elif self.lo == 1:
            base = "a positive integer"
        elif self.lo == 0:
            base = "a non-negative integer"
        elif self.lo is not None:
            base = f"an integer of at least {self.lo}"
        else:
            base = "an integer"
        return base + "".join(f", or {a}" for a in self.also)


@dataclass(frozen=True)
class Float(Spec):
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    infinite: bool = False  # .inf is allowed too (e.g. "no outliers")

    def accepts(self, v) -> bool:
        if self.infinite and isinstance(v, float) and v == math.inf:
            return True
        if not _is_number(v):
            return False
        low_ok = self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)
        high_ok = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
        return low_ok and high_ok

    def words(self) -> str:
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            base = f"a number in {left}{self.lo:g}, {self.hi:g}{right}"
        elif self.lo == 0:
            base = "a positive number" if self.lo_open else "a non-negative number"
        elif self.lo is not None:
            base = f"a number {'above' if self.lo_open else 'of at least'} {self.lo:g}"
        else:
            base = "a number"
        return base + (" (.inf: none)" if self.infinite else "")

    def check(self, path: str, value, pending: list | None = None):
        value = super().check(path, value)
        return None if value is None else float(value)


@dataclass(frozen=True)
class Bool(Spec):
    def accepts(self, v) -> bool:
        return isinstance(v, bool)

    def words(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Choice(Spec):
    values: tuple = ()

    def accepts(self, v) -> bool:
        return any(v == c and type(v) is type(c) for c in self.values)

    def words(self) -> str:
        shown = [str(c) for c in self.values]
        return shown[0] if len(shown) == 1 else "one of " + ", ".join(shown)


@dataclass(frozen=True)
class Str(Spec):
    pattern: str | None = None  # a full match is required
    text: str = "a string"

    def accepts(self, v) -> bool:
        return isinstance(v, str) and v != "" and (self.pattern is None or re.fullmatch(self.pattern, v) is not None)

    def words(self) -> str:
        return self.text


@dataclass(frozen=True)
class ListOf(Spec):
    item: Spec = None
    min_len: int = 0

    def accepts(self, v) -> bool:
        return isinstance(v, (list, tuple)) and len(v) >= self.min_len

    def words(self) -> str:
        what = f"a list of {_plural(self.item.words())}"
        return what if not self.min_len else f"{what} (at least {self.min_len})"

    def check(self, path: str, value, pending: list | None = None):
        value = super().check(path, value)
        return None if value is None else [self.item.check(f"{path}.{i}", v, pending) for i, v in enumerate(value)]


def _plural(words: str) -> str:
    """'a registered dataset' -> 'registered datasets'; longer phrases stay whole ('…, each an integer from 1 to 8')."""
    for article in ("an ", "a "):
        if words.startswith(article):
            phrase = words[len(article):]
            if not any(sep in phrase for sep in (",", "(", " from ", " in ", " of ", " or ")):
                return phrase + "s"
    return f"items, each {words}"


@dataclass(frozen=True)
class Either(Spec):
    options: tuple = ()

    def accepts(self, v) -> bool:
        return any(o.accepts(v) for o in self.options)

    def words(self) -> str:
        return " or ".join(o.words() for o in self.options)

    def check(self, path: str, value, pending: list | None = None):
        if value is None and self.nullable:
            return None
        for option in self.options:
            if option.accepts(value):
                return option.check(path, value, pending)
        raise refuse(path, value, self.allowed())


@dataclass(frozen=True)
class Anything(Spec):
    """A value the schema does not constrain (say so in `doc`)."""

    def accepts(self, v) -> bool:
        return True

    def words(self) -> str:
        return "any value"


Rule = Callable[[str, dict, dict], None]  # (path of the section, the section's values, the whole config)


@dataclass(frozen=True)
class Section(Spec):
    """A mapping: each declared field checked and defaulted; keys it does not declare are refused unless `open`.
    `rules` check what one field alone cannot (several fields together, the world: files, devices)."""

    fields: Mapping[str, Spec] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    open: bool = False

    def accepts(self, v) -> bool:
        return isinstance(v, Mapping)

    def words(self) -> str:
        return "a mapping of " + ", ".join(self.fields) if self.fields else "a mapping"

    def check(self, path: str, value, pending: list | None = None):
        value = super().check(path, value)
        if value is None:
            return None
        unknown = [k for k in value if k not in self.fields]
        if unknown and not self.open:
            where = f"{path}." if path else ""
            raise QgenError(f"{where}{unknown[0]} is not a setting{f' of {path}' if path else ''}; "
                            f"settings: {', '.join(self.fields)}")
        out = dict(value)
        for name, spec in self.fields.items():
            sub = f"{path}.{name}" if path else name
            if name not in value:
                if spec.default is not REQUIRED:
                    out[name] = copy.deepcopy(spec.default)
                elif not spec.optional:
                    raise QgenError(f"{sub} is missing: set it to {spec.allowed()}")
                continue
            out[name] = spec.check(sub, value[name], pending)
        if pending is not None:
            pending.extend((rule, path, out) for rule in self.rules)
        return out

    def validate(self, value: Mapping) -> dict:
        """Check every field of the tree, then every rule (in declaration order, outer sections after inner
        ones), each rule seeing the checked values of its section and of the whole tree."""
        return self.validate_at("", value)

    def validate_at(self, path: str, value: Mapping) -> dict:
        """`validate` for a section that sits at `path` in a larger config (its messages name the full path)."""
        pending: list = []
        out = self.check(path, value, pending)
        for rule, path, section in pending:
            rule(path, section, out)
        return out

    def defaults(self) -> dict:
        return {name: spec.default for name, spec in self.fields.items() if spec.default is not REQUIRED}
