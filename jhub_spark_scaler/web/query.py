"""Filter, sort and page the admin page's tables (pure).

`parse(arguments)` reads the query arguments of `api/pool` (name -> the values given)
into a `Query`, or raises ValueError with one line naming the parameter and what it
allows; `answer(view, query)` returns the view (`view.pool_view`) with each table's rows
filtered, sorted and paged, and what was done in `tables` and `filters`.

    state=held,lost   user=alice   app=<id or name>   action=start,retire
    sort=-age  limit=50  offset=100          (every table that has the column)
    workers.sort=state  apps.limit=10 ...    (one table; wins over the unprefixed one)

Rows with no value in the sorted column (null) come last in either direction; rows with
equal values keep a stable order (the table's key column).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..reconciler import Action
from .view import STATES

#: Rows per table the page shows at once (its own requests ask for this many).
PAGE_SIZE = 50
MAX_LIMIT = 5000


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]  # sortable
    default_sort: str
    tie: str  # the column that orders rows with equal values
    #: ties follow the sort's direction (decisions: newest first among equal times)
    tie_follows: bool = False


TABLES: Mapping[str, Table] = {
    "workers": Table(
        ("handle", "host", "state", "attention", "cores_used", "memory_used", "age", "apps_text"),
        "attention", "handle",
    ),
    "apps": Table(("id", "name", "cores", "state", "user", "workers", "waiting_for", "started"),
                  "-waiting_for", "id"),
    "servers": Table(("user", "name", "started", "prewarm_credit"), "user", "key"),
    "users": Table(("user", "servers", "apps", "cores", "waiting_apps", "workers"), "-cores", "user"),
    "decisions": Table(("seq", "at", "action"), "-seq", "seq", tie_follows=True),
}
ACTIONS = tuple(a.value for a in Action)
PAGING = ("sort", "limit", "offset")
FILTERS = ("state", "user", "app", "action")
#: sent by scripts for the hub's XSRF check, not a query of ours
IGNORED = frozenset({"_xsrf"})


@dataclass(frozen=True)
class TableQuery:
    sort: str
    limit: int | None = None  # None: every row
    offset: int = 0


@dataclass(frozen=True)
class Query:
    state: tuple[str, ...] = ()
    user: str = ""
    app: str = ""
    action: tuple[str, ...] = ()
    tables: Mapping[str, TableQuery] = field(
        default_factory=lambda: {name: TableQuery(t.default_sort) for name, t in TABLES.items()})


def _got(value: str) -> str:
    return repr(value[:40])


def _one(name: str, values: Sequence[str]) -> str:
    if len(values) != 1:
        raise ValueError(f"{name} given {len(values)} times: give it once")
    return values[0].strip()


def _choices(name: str, values: Sequence[str], allowed: Sequence[str]) -> tuple[str, ...]:
    chosen = tuple(part.strip() for value in values for part in value.split(",") if part.strip())
    for part in chosen:
        if part not in allowed:
            raise ValueError(f"{name} must be one or more of {', '.join(allowed)}: got {_got(part)}")
    return chosen


def _number(name: str, value: str, *, low: int, high: int | None) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", value) or int(value) < low or (high is not None and int(value) > high):
        allowed = f"from {low} to {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be a whole number {allowed}: got {_got(value)}")
    return int(value)


def _sort(name: str, value: str, columns: Sequence[str]) -> str:
    if value.removeprefix("-") not in columns:
        raise ValueError(f"{name} must be one of {', '.join(columns)}, "
                         f"with - for descending: got {_got(value)}")
    return value


def _check_names(arguments: Mapping[str, Sequence[str]]) -> None:
    for name in arguments:
        table, _, part = name.rpartition(".")
        if name in IGNORED or name in FILTERS or name in PAGING or (table in TABLES and part in PAGING):
            continue
        raise ValueError(f"unknown parameter {_got(name)}: use {', '.join(FILTERS + PAGING)}, "
                         f"or <table>.sort, .limit, .offset with a table of {', '.join(TABLES)}")


def _table_query(name: str, table: Table, arguments: Mapping[str, Sequence[str]]) -> TableQuery:
    def given(part: str) -> tuple[str, str] | None:
        for key in (f"{name}.{part}", part):
            if key in arguments:
                return key, _one(key, arguments[key])
        return None

    sort = table.default_sort
    if (found := given("sort")) is not None:
        key, value = found
        if key != "sort" or value.removeprefix("-") in table.columns:  # unprefixed: the tables that have it
            sort = _sort(key, value, table.columns)
    limit = given("limit")
    offset = given("offset")
    return TableQuery(sort, None if limit is None else _number(limit[0], limit[1], low=1, high=MAX_LIMIT),
                      0 if offset is None else _number(offset[0], offset[1], low=0, high=None))


def parse(arguments: Mapping[str, Sequence[str]]) -> Query:
    """The query in `arguments` (tornado's query_arguments, decoded); ValueError: one line."""
    _check_names(arguments)
    if "sort" in arguments:
        value = _one("sort", arguments["sort"])
        every = sorted({c for t in TABLES.values() for c in t.columns})
        if not any(value.removeprefix("-") in t.columns for t in TABLES.values()):
            raise ValueError(f"sort must be a column of a table ({', '.join(every)}), "
                             f"with - for descending: got {_got(value)}")
    return Query(
        state=_choices("state", arguments.get("state", ()), STATES),
        user=_one("user", arguments["user"]) if "user" in arguments else "",
        app=_one("app", arguments["app"]) if "app" in arguments else "",
        action=_choices("action", arguments.get("action", ()), ACTIONS),
        tables={name: _table_query(name, t, arguments) for name, t in TABLES.items()},
    )


def page_query() -> Query:
    """What the page shows first: each table's default order, PAGE_SIZE rows."""
    return parse({"limit": [str(PAGE_SIZE)]})


# -- answering -------------------------------------------------------------------


def _runs(row: Mapping[str, Any], app: str) -> bool:
    return any(a["id"] == app or a["name"] == app for a in row["apps"])


def _filters(query: Query) -> dict[str, list[Callable[[Mapping[str, Any]], bool]]]:
    """Per table, the tests a row must pass."""
    tests: dict[str, list[Callable[[Mapping[str, Any]], bool]]] = {name: [] for name in TABLES}
    if query.state:
        states = frozenset(query.state)
        tests["workers"].append(lambda r: r["state"] in states)
    if query.user:
        user = query.user
        tests["workers"].append(lambda r: user in r["users"])
        for name in ("apps", "servers", "users"):
            tests[name].append(lambda r: r["user"] == user)
    if query.app:
        app = query.app
        tests["workers"].append(lambda r: _runs(r, app))
        tests["apps"].append(lambda r: r["id"] == app or r["name"] == app)
    if query.action:
        actions = frozenset(query.action)
        tests["decisions"].append(lambda r: r["action"] in actions)
    return tests


def _attention_tie(row: Mapping[str, Any]) -> tuple:
    age = row["age"]
    return (age is None, -(age or 0), row["handle"])  # the longest-standing first, unknown ages last


def sort_rows(rows: Sequence[Mapping[str, Any]], sort: str, table: Table) -> list[Mapping[str, Any]]:
    """`rows` ordered by `sort` ("col" or "-col"); nulls last either way; ties by the table's tie."""
    column, descending = sort.removeprefix("-"), sort.startswith("-")
    if column == "attention":
        tie: Callable[[Mapping[str, Any]], Any] = _attention_tie
        ordered = sorted(rows, key=tie)
    else:
        tie = (lambda r: r[table.tie])
        ordered = sorted(rows, key=tie, reverse=descending and table.tie_follows)
    known = [r for r in ordered if r[column] is not None]
    known.sort(key=lambda r: r[column], reverse=descending)  # stable: ties keep the tie order
    return known + [r for r in ordered if r[column] is None]


def answer(view: Mapping[str, Any], query: Query) -> dict[str, Any]:
    """`view` with every table filtered, sorted and paged by `query`, plus `tables` and `filters`."""
    result = dict(view)
    tables = {}
    for name, tests in _filters(query).items():
        rows = view[name]
        matched = [r for r in rows if all(test(r) for test in tests)]
        q = query.tables[name]
        ordered = sort_rows(matched, q.sort, TABLES[name])
        end = None if q.limit is None else q.offset + q.limit
        result[name] = ordered[q.offset:end]
        tables[name] = {"total": len(rows), "matched": len(matched), "offset": q.offset, "limit": q.limit,
                        "sort": q.sort}
    result["tables"] = tables
    result["filters"] = {"state": list(query.state), "user": query.user, "app": query.app,
                         "action": list(query.action)}
    return result
