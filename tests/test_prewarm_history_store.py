"""The pre-warm history's stores, fast: the record (`prewarm_history.record`/`parse_record`),
the store contract on the local file store, and `PrewarmKeeper` (when it reads and writes,
what it logs) driven with a store in memory that can fail or hang. The ConfigMap store on
the real kube-apiserver: tests/test_prewarm_history_store_kube.py."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time

import pytest

from jhub_spark_scaler.activity import Server
from jhub_spark_scaler.backends.history_store import (
    FILE_NAME, FileStore, HistoryStore, StoreError, Unreadable,
)
from jhub_spark_scaler.model import AppStart
from jhub_spark_scaler.prewarm_history import PrewarmHistory, parse_record
from jhub_spark_scaler.prewarm_keeper import PrewarmKeeper

LOG = logging.getLogger("test-prewarm-store")
OTHER = AppStart(0.0, "other")  # the master answers, and lists apps
#: hub user names are untrusted data: anything a hub accepts must come back the same
NAMES = ["alice", "a.b", "a/b", "../etc/passwd", "Ünïcødé", "日本語", "emoji 🎉", "o'neil", 'quo"te',
         "back\\slash", "tab\tnew\nline", "\u2028", "", "x" * 255, "\ud800 lone surrogate", "users"]


def ended(history: PrewarmHistory, user: str, *, started: float, at: float) -> None:
    """A server of `user` seen running, then gone at `at`, with no app of theirs."""
    s = Server(user, "", started, None, True, "")
    history.observe([s], [OTHER], now=started)
    history.observe([], [OTHER], now=at)


def cold_history(*users: str, keep: int = 2) -> PrewarmHistory:
    history = PrewarmHistory(keep=keep)
    for user in users:
        for started in (100.0, 300.0):
            ended(history, user, started=started, at=started + 50)
    return history


# -- the record ------------------------------------------------------------------------


def test_every_user_name_round_trips_through_the_record_as_json_text():
    history = cold_history(*NAMES)
    text = json.dumps(history.record(max_bytes=10**6), separators=(",", ":"))
    assert text.isascii()  # escaped: valid in any store, whatever the name holds
    again = PrewarmHistory(keep=2)
    again.merge(parse_record(json.loads(text), keep=2))
    assert again.users == history.users and again.cold(()) == frozenset(NAMES)


def test_the_record_is_bounded_and_the_users_whose_last_server_ended_longest_ago_go_first():
    history = PrewarmHistory(keep=3)
    for i in range(5000):
        at = 1.7e9 + i
        history.users[f"user-{i:05d}"] = [[at, False], [at + 0.5, True], [at + 0.75, False]]
    record = history.record(max_bytes=100_000)
    size = len(json.dumps(record, separators=(",", ":")))
    assert 99_000 < size <= 100_000
    kept = sorted(record["users"])
    assert kept[-1] == "user-04999" and kept == [f"user-{i:05d}" for i in range(5000 - len(kept), 5000)]
    print(f"{len(kept)} users in 100,000 bytes")  # about 1,300 at keep 3


@pytest.mark.parametrize("doc", [
    [], "x", {"users": []}, {"users": {"a": [[1]]}}, {"users": {"a": [["x", False]]}},
    {"users": {"a": [[True, False]]}}, {"users": {"a": [[math.nan, False]]}}, {"users": {"a": [[1.0, 0]]}},
    {"users": {"a": {}}},
])
def test_a_damaged_record_is_refused_whole(doc):
    with pytest.raises(ValueError):
        parse_record(doc, keep=2)


def test_stored_runs_merge_with_those_seen_since_the_start_in_the_order_they_ended():
    history = PrewarmHistory(keep=3)
    ended(history, "a", started=500.0, at=600.0)
    version = history.version
    history.merge(parse_record({"users": {"a": [[100, True], [200, False], [300, False]], "b": []}}, keep=3))
    assert history.users == {"a": [[200.0, False], [300.0, False], [600.0, False]]}
    assert history.version > version and history.cold(()) == {"a"}


# -- the file store (the contract every store keeps) -----------------------------------


async def test_the_file_store_keeps_one_object_in_state_dir_0600(tmp_path):
    store = FileStore(str(tmp_path), log=LOG)
    assert await store.read() is None  # nothing stored yet: no trouble
    record = cold_history(*NAMES).record(max_bytes=store.max_bytes)
    await store.write(record)
    assert await store.read() == record
    assert oct(os.stat(tmp_path / FILE_NAME).st_mode & 0o777) == "0o600"
    (tmp_path / FILE_NAME).write_text("not json")
    with pytest.raises(Unreadable):
        await store.read()
    (tmp_path / FILE_NAME).unlink()
    (tmp_path / FILE_NAME).mkdir()  # cannot be replaced: StoreError, one line
    with pytest.raises(StoreError, match=f"cannot write {tmp_path / FILE_NAME}"):
        await store.write(record)


async def test_a_planted_symlink_is_neither_read_nor_written_through(tmp_path, caplog):
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"users": {"victim": [[1.0, False], [2.0, False]]}}))
    state = tmp_path / "state"
    state.mkdir()
    (state / FILE_NAME).symlink_to(elsewhere)
    keeper = PrewarmKeeper(PrewarmHistory(keep=2), store=FileStore(str(state), log=LOG), log=LOG)
    await keeper.load()
    assert keeper.history.users == {} and "refusing state file" in caplog.text
    ended(keeper.history, "a", started=1.0, at=2.0)
    await keeper.flush()
    assert json.loads(elsewhere.read_text())["users"] == {"victim": [[1.0, False], [2.0, False]]}
    assert not (state / FILE_NAME).is_symlink()


async def test_the_history_survives_a_restart_in_the_state_dir(tmp_path):
    keeper = PrewarmKeeper(cold_history("a"), store=FileStore(str(tmp_path), log=LOG), log=LOG)
    await keeper.load()
    await keeper.flush()  # at exit
    for keep, users in [(2, {"a": [[150.0, False], [350.0, False]]}), (1, {"a": [[350.0, False]]}), (0, {})]:
        again = PrewarmKeeper(PrewarmHistory(keep=keep), store=FileStore(str(tmp_path), log=LOG), log=LOG)
        await again.load()
        assert again.history.users == users  # a smaller `keep` reads the last ones; 0: off


# -- the keeper ---------------------------------------------------------------------------


class MemoryStore(HistoryStore):
    """A store in memory; `fail` makes each call raise it, `hang` makes each call wait forever."""

    what = "the test's store"

    def __init__(self, doc: dict | None = None, *, interval: float = 30.0):
        self.doc, self.write_interval = doc, interval
        self.fail: Exception | None = None
        self.hang = False
        self.reads = self.writes = 0

    async def _trouble(self) -> None:
        if self.hang:
            await asyncio.Event().wait()
        if self.fail is not None:
            raise self.fail

    async def read(self) -> dict | None:
        self.reads += 1
        await self._trouble()
        return self.doc

    async def write(self, record: dict) -> None:
        self.writes += 1
        await self._trouble()
        self.doc = json.loads(json.dumps(record))


def ours(caplog) -> list[logging.LogRecord]:
    """The keeper's records: other tests' leftovers on the shared event loop log too."""
    return [r for r in caplog.records if r.name == LOG.name]


async def settle(keeper: PrewarmKeeper) -> None:
    if keeper._task is not None:
        await asyncio.wait([keeper._task], timeout=5)


async def test_writes_only_changes_and_at_most_once_per_interval():
    store = MemoryStore(interval=30.0)
    keeper = PrewarmKeeper(PrewarmHistory(keep=2), store=store, log=LOG)
    await keeper.load()
    for now in (1.0, 40.0, 80.0):  # nothing changed: nothing written
        keeper.tick(now)
        await settle(keeper)
    assert (store.reads, store.writes) == (1, 0)
    ended(keeper.history, "a", started=100.0, at=110.0)
    keeper.tick(120.0)
    await settle(keeper)
    ended(keeper.history, "a", started=130.0, at=140.0)
    for now in (141.0, 149.9):  # changed again, within 30 s of the last write: held back
        keeper.tick(now)
        await settle(keeper)
    assert store.writes == 1 and store.doc == {"users": {"a": [[110.0, False]]}}
    keeper.tick(150.0)
    await settle(keeper)
    assert store.writes == 2 and store.doc == {"users": {"a": [[110.0, False], [140.0, False]]}}
    ended(keeper.history, "b", started=160.0, at=170.0)
    await keeper.flush()  # at exit: the last change, whenever the last write was
    assert store.writes == 3 and "b" in store.doc["users"]


async def test_a_hanging_store_holds_up_nothing_and_warns_once(caplog):
    caplog.set_level(logging.INFO)
    store = MemoryStore({"users": {}})
    keeper = PrewarmKeeper(PrewarmHistory(keep=1), store=store, log=LOG, timeout=0.2)
    await keeper.load()
    store.hang = True
    took = []
    for i in range(3):
        ended(keeper.history, f"u{i}", started=100.0 * i, at=100.0 * i + 1)
        began = time.monotonic()
        keeper.tick(1000.0 + 60 * i)
        took.append(time.monotonic() - began)
        await settle(keeper)
    assert max(took) < 0.1, took  # the cycle never waits for the store (0.2 s)
    warnings = [r.getMessage() for r in ours(caplog) if r.levelno == logging.WARNING]
    assert warnings == ["pre-warm history not saved: the test's store: no answer within 0.2 s; kept in "
                        "memory, written again in 30 s"]
    store.hang = False  # back: the next write has everything, and says so
    keeper.tick(2000.0)
    await settle(keeper)
    assert set(store.doc["users"]) == {"u0", "u1", "u2"}
    assert ours(caplog)[-1].getMessage() == "pre-warm history saved in the test's store again"


async def test_a_store_that_cannot_be_read_is_never_written_and_is_read_again(caplog):
    stored = {"users": {"a": [[50.0, False]]}}
    store = MemoryStore(stored)
    store.fail = StoreError("missing RBAC permission: cannot get configmaps ...")
    keeper = PrewarmKeeper(PrewarmHistory(keep=2), store=store, log=LOG)
    await keeper.load()
    assert not keeper.loaded and keeper.history.users == {}  # fresh: everyone pre-warms
    ended(keeper.history, "a", started=100.0, at=110.0)
    for now in (10.0, 35.0, 70.0):
        keeper.tick(now)
        await settle(keeper)
    await keeper.flush()
    assert store.writes == 0 and store.reads == 3  # at start, at 10 s and 70 s: never its record replaced
    warnings = [r.getMessage() for r in ours(caplog) if r.levelno == logging.WARNING]
    assert warnings == ["pre-warm history not read: missing RBAC permission: cannot get configmaps ...; "
                        "kept in memory only (a restart forgets it), read again every 30 s"]
    store.fail = None  # fixed: read, merged with what was seen meanwhile, written
    keeper.tick(100.0)
    await settle(keeper)
    assert keeper.loaded and keeper.history.users == {"a": [[50.0, False], [110.0, False]]}
    keeper.tick(130.0)
    await settle(keeper)
    assert store.writes == 1 and store.doc == {"users": {"a": [[50.0, False], [110.0, False]]}}


@pytest.mark.parametrize("doc", [{"users": "x"}, {"users": {"a": [["x", 1]]}}])
async def test_a_damaged_store_warns_once_starts_fresh_and_is_replaced(caplog, doc):
    store = MemoryStore(doc, interval=0)
    keeper = PrewarmKeeper(PrewarmHistory(keep=2), store=store, log=LOG)
    await keeper.load()
    assert keeper.loaded and keeper.history.users == {}
    (warning,) = [r.getMessage() for r in ours(caplog) if r.levelno == logging.WARNING]
    assert warning.startswith("pre-warm history not read: the test's store holds no pre-warm history: ")
    assert warning.endswith("; starting with none (everyone pre-warms), replaced by the next write")
    ended(keeper.history, "a", started=100.0, at=110.0)
    keeper.tick(120.0)
    await settle(keeper)
    assert store.doc == {"users": {"a": [[110.0, False]]}}


async def test_a_bug_in_a_store_is_logged_and_the_scaler_goes_on(caplog):
    store = MemoryStore()
    store.fail = KeyError("a bug")
    keeper = PrewarmKeeper(PrewarmHistory(keep=1), store=store, log=LOG)
    await keeper.load()  # does not raise
    keeper.tick(100.0)
    await settle(keeper)
    await keeper.flush()
    assert "reading or writing the test's store failed" in caplog.text


async def test_off_or_without_a_store_nothing_is_read_or_written():
    store = MemoryStore({"users": {"a": [[1.0, False]]}}, interval=0)
    for keeper in (PrewarmKeeper(cold_history("a", keep=0), store=store, log=LOG),
                   PrewarmKeeper(cold_history("a"), store=None, log=LOG)):
        await keeper.load()
        keeper.tick(1000.0)
        await keeper.flush()
    assert (store.reads, store.writes) == (0, 0)


async def test_after_standing_by_the_store_is_read_again_before_it_is_written():
    """Another scaler held the pool meanwhile and wrote its history: merged, not replaced."""
    store = MemoryStore({"users": {"a": [[50.0, False]]}}, interval=30.0)
    keeper = PrewarmKeeper(PrewarmHistory(keep=2), store=store, log=LOG)
    await keeper.load()
    store.doc = {"users": {"a": [[50.0, False]], "b": [[90.0, True]]}}  # the other scaler's write
    ended(keeper.history, "a", started=100.0, at=110.0)
    keeper.reread()  # the pool is held again
    keeper.tick(120.0)
    await settle(keeper)
    assert (store.reads, store.writes) == (2, 0)  # read first, nothing written yet
    assert keeper.history.users == {"a": [[50.0, False], [110.0, False]], "b": [[90.0, True]]}
    keeper.tick(150.0)  # the next write has both
    await settle(keeper)
    assert store.writes == 1 and store.doc == {"users": {"a": [[50.0, False], [110.0, False]],
                                                         "b": [[90.0, True]]}}
