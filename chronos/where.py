"""The ``--where`` filter: a JSON path into a job's args or annotations, an operator and a value.

No I/O. One syntax for the CLI, the TUI and the job index::

    args.customer_id=42        keyword argument (args is an object)
    args[0].user.id!=7         positional argument, then keys
    args["odd key"]=x          a key that is not letters, digits, '_' or '-'
    annotations.team=billing   annotations are text: =, != and existence only
    args.retries>=3            >, >=, <, <= compare numbers only
    args.dry_run               exists (any value, null included)
    !args.dry_run              does not exist

A value is JSON when it reads as JSON (42, 1.5, true, null, "quoted text"); any other word is
text (``=billing`` is ``"billing"``). Only scalars compare: a list or object value is refused.
Types never mix: ``args.n=42`` does not match ``"42"``; 42 and 42.0 are the same number.
``!=`` matches a missing path too. Several filters AND together.

``Where.sql`` compiles a filter for SQLite's JSON1 (``json_type`` / ``json_extract``);
``Where.matches`` is the same rule in Python (the KV's copy of a record is re-checked with it),
and tests hold the two to the same answers.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, Sequence

import msgspec

from .errors import ValidationError

ROOTS = ("args", "annotations")
OPS = ("!=", ">=", "<=", "==", "=", ">", "<")  # longest first
ORDERED = (">", ">=", "<", "<=")
_IDENT = re.compile(r"[A-Za-z0-9_-]+")
_INDEX = re.compile(r"\[(\d{1,9})\]")
_MISSING = object()
MAX_FILTERS = 16


class Where:
    """One parsed filter. ``text`` is what was written (it travels; each side parses it again)."""

    __slots__ = ("text", "root", "path", "op", "value")

    def __init__(self, text: str, root: str, path: tuple[str | int, ...], op: str, value: Any) -> None:
        self.text = text
        self.root = root
        self.path = path
        self.op = op  # "=", "!=", ">", ">=", "<", "<=", "exists", "missing"
        self.value = value

    def __repr__(self) -> str:
        return f"Where({self.text!r})"

    # --- Python ------------------------------------------------------------------------------
    def lookup(self, args: Any, annotations: dict[str, str] | None) -> Any:
        node: Any = args if self.root == "args" else (annotations or {})
        for seg in self.path:
            if isinstance(seg, int):
                if not isinstance(node, list) or seg >= len(node):
                    return _MISSING
                node = node[seg]
            else:
                if not isinstance(node, dict) or seg not in node:
                    return _MISSING
                node = node[seg]
        return node

    def matches(self, args: Any, annotations: dict[str, str] | None) -> bool:
        found = self.lookup(args, annotations)
        if self.op == "exists":
            return found is not _MISSING
        if self.op == "missing":
            return found is _MISSING
        if self.op in ORDERED:
            if _kind(found) != "num":
                return False
            return {">": found > self.value, ">=": found >= self.value,
                    "<": found < self.value, "<=": found <= self.value}[self.op]
        same = found is not _MISSING and _kind(found) == _kind(self.value) and found == self.value
        return same if self.op == "=" else not same

    # --- SQLite JSON1 ------------------------------------------------------------------------------
    def json_path(self) -> str:
        out = "$"
        for seg in self.path:
            out += f"[{seg}]" if isinstance(seg, int) else f'."{seg}"'
        return out

    def sql(self, column: str) -> tuple[str, list[Any]]:
        """A boolean SQL expression over a JSON text ``column`` (NULL counts as an empty document)."""
        p = self.json_path()
        jt = f"json_type({column}, ?)"
        if self.op == "exists":
            return f"{jt} IS NOT NULL", [p]
        if self.op == "missing":
            return f"{jt} IS NULL", [p]
        if self.op in ORDERED:
            return f"({jt} IN ('integer', 'real') AND json_extract({column}, ?) {self.op} ?)", [p, p, self.value]
        v = self.value
        args: list[Any]
        if v is None:
            eq, args = f"{jt} = 'null'", [p]
        elif isinstance(v, bool):
            eq, args = f"{jt} = ?", [p, "true" if v else "false"]
        elif isinstance(v, (int, float)):
            eq, args = f"({jt} IN ('integer', 'real') AND json_extract({column}, ?) = ?)", [p, p, v]
        else:
            eq, args = f"({jt} = 'text' AND json_extract({column}, ?) = ?)", [p, p, v]
        hint = self._hint()
        if hint is not None:
            # The JSON text must hold the value's own encoding: a substring test, much cheaper than
            # parsing the document, turns most rows down before json_type reads them.
            eq, args = f"(instr({column}, ?) > 0 AND {eq})", [hint, *args]
        if self.op == "=":
            return f"COALESCE({eq}, 0)", args
        return f"NOT COALESCE({eq}, 0)", args

    def _hint(self) -> str | None:
        """A substring every matching document contains (text as JSON encodes it; an integer's digits)."""
        v = self.value
        if isinstance(v, str):
            return msgspec.json.encode(v).decode()  # as the index stored it (readmodel._json)
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) < 10**15:
            return str(v)
        return None


def _kind(v: Any) -> str:
    if v is _MISSING:
        return "missing"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "num"
    if isinstance(v, str):
        return "str"
    if v is None:
        return "null"
    return "array" if isinstance(v, list) else "object"


def _bad(text: str, why: str) -> ValidationError:
    return ValidationError(f"--where {text!r}: {why}")


def parse(text: str) -> Where:
    """One ``--where`` filter; a ValidationError names what is wrong with it."""
    if not isinstance(text, str) or not text.strip():
        raise _bad(str(text), "empty filter (args.KEY=VALUE, annotations.KEY=VALUE, args.KEY, !args.KEY)")
    src = text.strip()
    negate = src.startswith("!")
    body = src[1:].lstrip() if negate else src
    m = re.match(r"[A-Za-z_]+", body)
    root = m.group(0) if m else ""
    if root not in ROOTS:
        shown = root or body[:20]
        raise _bad(text, f"unknown root {shown!r}: a filter starts with args or annotations")
    i = len(root)
    path: list[str | int] = []
    while i < len(body) and body[i] in ".[":
        if body[i] == ".":
            km = _IDENT.match(body, i + 1)
            if km is None:
                raise _bad(text, f"a key name is expected after '{body[:i + 1]}' (letters, digits, '_', '-'; "
                                 'other keys as ["key"])')
            path.append(km.group(0))
            i = km.end()
            continue
        im = _INDEX.match(body, i)
        if im is not None:
            path.append(int(im.group(1)))
            i = im.end()
            continue
        if body.startswith('["', i):
            end = body.find('"]', i + 2)
            key = body[i + 2:end] if end >= 0 else ""
            if end < 0 or not key or '"' in key or "\\" in key:
                raise _bad(text, '["key"] needs a non-empty key without quotes or backslashes, then "]"')
            path.append(key)
            i = end + 2
            continue
        raise _bad(text, f"'[' at position {i + 1} must open an index [0] or a key [\"key\"]")
    if not path:
        raise _bad(text, f"name a value inside {root} ({root}.KEY" + (" or args[0])" if root == "args" else ")"))
    if root == "annotations" and (len(path) != 1 or not isinstance(path[0], str)):
        raise _bad(text, "annotations are one level of text: annotations.KEY")
    rest = body[i:]
    if not rest.strip():
        return Where(src, root, tuple(path), "missing" if negate else "exists", None)
    if negate:
        raise _bad(text, "'!' asks that a path does not exist; it takes no operator")
    rest = rest.lstrip()
    op = next((o for o in OPS if rest.startswith(o)), None)
    if op is None:
        raise _bad(text, f"expected =, !=, >, >=, <, <= or nothing after the path, not {rest[:10]!r}")
    raw = rest[len(op):].strip()
    op = "=" if op == "==" else op
    if root == "annotations" and op in ORDERED:
        raise _bad(text, "annotations are text: only =, != and existence")
    if not raw:
        raise _bad(text, 'give a value after the operator ("" for empty text)')
    value = _value(text, raw, root)
    if op in ORDERED and _kind(value) != "num":
        raise _bad(text, f"{op} compares numbers only")
    return Where(src, root, tuple(path), op, value)


def _value(text: str, raw: str, root: str) -> Any:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        if raw[0] in '"[{-0123456789':
            raise _bad(text, f"{raw!r} is not a JSON value (quote text as \"...\")") from None
        return raw  # a bare word is text
    if isinstance(value, (list, dict)):
        raise _bad(text, "only scalar values compare (a number, text, true, false, null)")
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        raise _bad(text, f"{raw!r} is not a finite number")
    if root == "annotations" and not isinstance(value, str):
        return raw  # annotations hold text: =42 means the text "42"
    return value


def parse_all(texts: Sequence[str] | None) -> list[Where]:
    if not texts:
        return []
    if len(texts) > MAX_FILTERS:
        raise ValidationError(f"--where: at most {MAX_FILTERS} filters")
    return [parse(t) for t in texts]


@functools.lru_cache(maxsize=256)
def compiled(texts: tuple[str, ...]) -> tuple[Where, ...]:
    """``parse_all`` remembered: a listing or a bulk action checks every record against the same filters."""
    return tuple(parse_all(texts))


def matches_all(filters: Sequence[Where], args: Any, annotations: dict[str, str] | None) -> bool:
    return all(f.matches(args, annotations) for f in filters)


def describe(filters: Sequence[Where]) -> str:
    return " AND ".join(f.text for f in filters)
