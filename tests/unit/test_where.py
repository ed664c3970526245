"""chronos/where.py: the --where syntax, and the Python rule and its SQLite JSON1 form agree."""

from __future__ import annotations

import sqlite3

import msgspec
import pytest

from chronos.errors import ValidationError
from chronos.where import parse

DOCS = [
    [1, {"x": 2}], {"customer_id": 42}, {"customer_id": "42"}, {"customer_id": 42.0}, {"customer_id": 142},
    {"customer_id": -42}, {"customer_id": 4200}, {"a": None}, {"a": True}, {"a": False}, {"a": 1}, {}, [],
    {"n": [1, 2]}, {"odd key": "v"}, {"s": "é\n\"q\u001f"}, {"s": "x"}, {"s": "xx"}, {"nested": {"a": {"b": 3}}},
]
FILTERS = [
    "args.customer_id=42", "args.customer_id!=42", 'args.customer_id="42"', "args.customer_id=-42",
    "args.customer_id=42.0", "args.customer_id>41.5", "args.customer_id<=42", "args[0]=1", "args[1].x>=2",
    "args.a=null", "args.a", "!args.a", "args.a=true", "args.a=false", "args.a=1", "args.n[1]=2",
    'args["odd key"]=v', 'args.s="é\\n\\"q\\u001f"', "args.s=x", "args.s!=x", "args.nested.a.b=3",
    "args.customer_id = 4200",
]


@pytest.mark.parametrize("text", FILTERS)
def test_sql_and_python_agree(text):
    db = sqlite3.connect(":memory:")
    w = parse(text)
    hits = 0
    for doc in DOCS:
        expr, args = w.sql("c")
        got = db.execute(f"WITH t(c) AS (SELECT ?) SELECT {expr} FROM t",
                         [msgspec.json.encode(doc).decode(), *args]).fetchone()[0]
        assert bool(got) == w.matches(doc, None), (text, doc)
        hits += bool(got)
    assert 0 < hits < len(DOCS), text  # each filter tells documents apart


def test_values_and_annotations():
    assert parse("args.x=billing").value == "billing"
    assert parse('args.x="42"').value == "42" and parse("args.x=42").value == 42
    assert parse("annotations.team=42").value == "42"  # annotations hold text
    w = parse("annotations.team=billing")
    assert w.matches([], {"team": "billing"}) and not w.matches([], {}) and not w.matches([], None)
    assert parse("!annotations.team").matches([], None)
    db = sqlite3.connect(":memory:")  # a job without annotations stores NULL: an empty map
    for text in ("!annotations.team", "annotations.team!=x", "annotations.team", "annotations.team=x"):
        expr, args = parse(text).sql("c")
        got = bool(db.execute(f"WITH t(c) AS (SELECT NULL) SELECT {expr} FROM t", args).fetchone()[0])
        assert got == parse(text).matches([], None) == text.startswith(("!", "annotations.team!=")), text


@pytest.mark.parametrize("text, says", [
    ("args.=1", "a key name is expected"), ("foo.x=1", "unknown root 'foo'"), ("args.x=[1,", "not a JSON value"),
    ("args=1", "name a value inside args"), ("args.x=", "give a value"), ("args.x=[1]", "only scalar values"),
    ("args.x>abc", "compares numbers only"), ("annotations.a>1", "annotations are text"),
    ("!args.x=1", "takes no operator"), ("args.x~1", "expected =, !="), ("args[a]=1", "must open an index"),
    ("args.x=01", "not a JSON value"), ("annotations[0]=x", "one level of text"), ("args.x=NaN", "finite"),
    ("", "empty filter"), ('args["a"b"]=1', "without quotes"),
])
def test_malformed_filters_name_the_problem(text, says):
    with pytest.raises(ValidationError) as exc:
        parse(text)
    assert says in str(exc.value) and str(exc.value).startswith("--where ")
