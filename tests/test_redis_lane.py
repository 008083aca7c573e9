"""The store's fast lane (exporter/redis_lane.py) against a real Redis:
batching, reply order, error replies, lost connections, overdue replies,
AUTH and SELECT, and which clients get a lane at all."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as redis
from redis import exceptions as redis_errors

from exporter.core import Core
from exporter.model import CheckIn, Kind
from exporter.redis_lane import FLUSH_AT, PreparedCall, ScriptLane
from exporter.store import Store, connect

from .conftest import T0, registry_from, write_config

ECHO = "return ARGV[1]"
FAIL = "return redis.error_reply('cronmon test: ' .. ARGV[1])"
# Keeps Redis busy (no other client is answered) for ARGV[1] seconds.
BUSY = """
local start = redis.call('TIME')
local until_ = tonumber(start[1]) + tonumber(start[2]) / 1e6 + tonumber(ARGV[1])
while true do
  local now = redis.call('TIME')
  if tonumber(now[1]) + tonumber(now[2]) / 1e6 >= until_ then return 1 end
end
"""


@pytest.fixture
async def admin(redis_server):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def lane(redis_server):
    lane = ScriptLane(host="127.0.0.1", port=redis_server.port, reply_timeout=5.0)
    yield lane
    await lane.aclose()


async def test_calls_made_together_leave_together_and_reply_in_order(lane, admin):
    """A turn's calls leave FLUSH_AT to a write (the first write before the
    turn ends), the rest at its end; replies come back in call order."""
    echo = await admin.script_load(ECHO)
    assert lane.flush_at == FLUSH_AT > 1
    await lane.call(echo, [], ["connect"])
    writes = lane.writes
    calls = [lane.call(echo, [], [f"call {i}"]) for i in range(2 * FLUSH_AT + 1)]
    assert lane.writes == writes + 2  # two full writes, made as the calls came
    assert await asyncio.gather(*calls) == [f"call {i}" for i in range(2 * FLUSH_AT + 1)]
    assert lane.writes == writes + 3  # and the one left over, at the end of the turn
    # Calls of later turns: a write each, on the same connection.
    assert await lane.call(echo, [], ["again"]) == "again"
    assert await lane.call(echo, [], ["and again"]) == "and again"
    assert lane.writes == writes + 5


async def test_a_lane_can_send_all_of_a_turns_calls_in_one_write(redis_server, admin):
    lane = ScriptLane(host="127.0.0.1", port=redis_server.port, flush_at=1000)
    try:
        echo = await admin.script_load(ECHO)
        replies = await asyncio.gather(*(lane.call(echo, [], [f"call {i}"]) for i in range(200)))
        assert replies == [f"call {i}" for i in range(200)]
        assert lane.writes == 1
    finally:
        await lane.aclose()


def test_a_prepared_call_is_the_command_hiredis_packs():
    """PreparedCall + call_prepared's arguments: byte for byte what
    hiredis.pack_command makes of the whole EVALSHA (str as UTF-8)."""
    import hiredis
    from hypothesis import given, settings
    from hypothesis import strategies as st

    text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)  # (no lone surrogates: not UTF-8)
    arg = st.one_of(text, st.binary(max_size=40))

    @settings(max_examples=300, deadline=None)
    @given(st.lists(text, max_size=17), st.lists(arg, max_size=3), st.lists(st.binary(max_size=40), max_size=3))
    def check(keys, first, more):
        head = PreparedCall.of("f" * 40, keys, first, len(more))
        expected = hiredis.pack_command(("EVALSHA", "f" * 40, len(keys), *keys, *first, *more))
        parts = [head.encoded] + [b"$%d\r\n%b\r\n" % (len(m), m) for m in more]
        assert b"".join(parts) == expected

    check()


async def test_a_prepared_call_runs_as_the_same_call_would(lane, admin):
    script = await admin.script_load("return {KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3]}")
    head = PreparedCall.of(script, ["k1", "kä"], ["fixed"], 2)
    replies = await asyncio.gather(
        lane.call_prepared(head, (b"one", "z\u00e9".encode())), lane.call(script, ["k1", "kä"], ["fixed", "x", ""]),
        lane.call_prepared(head, (b"", b"\x00\r\n")),
    )
    assert replies == [["k1", "kä", "fixed", "one", "zé"], ["k1", "kä", "fixed", "x", ""],
                       ["k1", "kä", "fixed", "", "\x00\r\n"]]
    assert lane.writes == 1
    with pytest.raises(ValueError, match="takes 2 more arguments, not 1"):
        lane.call_prepared(head, (b"one",))


async def test_an_error_reply_is_the_result_of_its_call_only(lane, admin):
    echo, fail = await admin.script_load(ECHO), await admin.script_load(FAIL)
    missing = "0" * 40
    replies = await asyncio.gather(
        lane.call(echo, [], ["before"]), lane.call(fail, [], ["boom"]), lane.call(missing, [], []),
        lane.call(echo, [], ["after"]),
    )
    assert replies[0] == "before" and replies[3] == "after"
    assert isinstance(replies[1], redis_errors.ResponseError) and "cronmon test: boom" in str(replies[1])
    assert isinstance(replies[2], redis_errors.NoScriptError)  # redis-py's class for it, as the store expects


async def test_a_connection_closed_by_redis_is_opened_again_by_the_next_call(lane, admin):
    echo = await admin.script_load(ECHO)
    assert await lane.call(echo, [], ["first"]) == "first"
    host, port = lane._protocol.transport.get_extra_info("sockname")[:2]
    assert await admin.client_kill(f"{host}:{port}")
    for _ in range(100):  # the close reaches the lane
        if lane._protocol is None:
            break
        await asyncio.sleep(0.01)
    assert lane._protocol is None
    assert await lane.call(echo, [], ["second"]) == "second"


async def test_calls_in_flight_when_the_connection_drops_fail_and_later_calls_work(lane, admin):
    echo, busy = await admin.script_load(ECHO), await admin.script_load(BUSY)
    assert await lane.call(echo, [], ["connected"]) == "connected"
    in_flight = [lane.call(busy, [], ["0.3"]), lane.call(echo, [], ["queued"])]
    await asyncio.sleep(0.05)  # written, Redis busy with the first
    lane._protocol.transport.abort()
    for call in in_flight:
        with pytest.raises(redis_errors.ConnectionError):
            await call
    assert await lane.call(echo, [], ["reconnected"]) == "reconnected"


async def test_an_overdue_reply_fails_the_calls_in_flight_and_closes_the_connection(redis_server, admin):
    lane = ScriptLane(host="127.0.0.1", port=redis_server.port, reply_timeout=0.3)
    try:
        echo, busy = await admin.script_load(ECHO), await admin.script_load(BUSY)
        assert await lane.call(echo, [], ["connected"]) == "connected"
        blocker = asyncio.create_task(admin.evalsha(busy, 0, "1.2"))  # Redis answers no one for 1.2 s
        await asyncio.sleep(0.1)
        started = asyncio.get_running_loop().time()
        with pytest.raises(redis_errors.TimeoutError, match="no reply from Redis within 0.3 s"):
            await lane.call(echo, [], ["late"])
        assert asyncio.get_running_loop().time() - started < 1.0  # given up, not waited out
        assert lane._protocol is None
        await blocker
        assert await lane.call(echo, [], ["later"]) == "later"
    finally:
        await lane.aclose()


async def test_auth_and_select_come_first_on_every_connection(redis_server, admin):
    user, password = f"lane-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    await admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"])
    key = f"lane-test:{uuid.uuid4().hex}"
    lane = ScriptLane(host="127.0.0.1", port=redis_server.port, db=3, username=user, password=password)
    setter = await admin.script_load("redis.call('SET', KEYS[1], ARGV[1]) return 1")
    try:
        # Many calls while the connection is being made: none may run
        # between AUTH and SELECT (it would write to db 0).
        assert await asyncio.gather(*(lane.call(setter, [key], ["3"]) for _ in range(20))) == [1] * 20
        assert await admin.get(key) is None  # not in db 0
        db3 = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/3", decode_responses=True)
        try:
            assert await db3.get(key) == "3"
            await db3.delete(key)
        finally:
            await db3.aclose()
        refused = ScriptLane(host="127.0.0.1", port=redis_server.port, username=user, password="wrong")
        with pytest.raises(redis_errors.ConnectionError, match="Redis refused AUTH"):
            await refused.call(setter, [key], ["x"])
        await refused.aclose()
        # A SELECT Redis refuses: the calls made while its reply is awaited
        # (more than one write's worth) are not sent behind it; they fail,
        # and none ran on db 0.
        no_such_db = ScriptLane(host="127.0.0.1", port=redis_server.port, db=100_000)
        first = no_such_db.call(setter, [key], ["0"])
        while no_such_db._protocol is None:  # connected, AUTH/SELECT sent, no reply yet
            await asyncio.sleep(0)
        meanwhile = [no_such_db.call(setter, [key], ["0"]) for _ in range(3 * FLUSH_AT)]
        results = await asyncio.gather(first, *meanwhile, return_exceptions=True)
        assert all(isinstance(r, redis_errors.ConnectionError) and "refused SELECT" in str(r) for r in results)
        assert await admin.get(key) is None
        await no_such_db.aclose()
    finally:
        await lane.aclose()
        await admin.acl_deluser(user)


async def test_an_unreachable_server_fails_the_call_with_a_connection_error():
    from .conftest import free_port

    lane = ScriptLane(host="127.0.0.1", port=free_port(), connect_timeout=1.0)
    with pytest.raises(redis_errors.ConnectionError, match="cannot connect to Redis at 127.0.0.1"):
        await lane.call("0" * 40, [], [])
    await lane.aclose()


async def test_only_a_plain_server_without_tls_gets_a_lane(tmp_path):
    plain = connect("redis://127.0.0.1:6399/2")
    unix = connect(f"unix://{tmp_path}/redis.sock")
    for client, expected in ((plain, {"host": "127.0.0.1", "port": 6399, "path": None}),
                             (unix, {"host": None, "path": f"{tmp_path}/redis.sock"})):
        lane = ScriptLane.for_client(client)
        assert lane is not None
        for name, value in expected.items():
            assert getattr(lane, name) == value
        await client.aclose()
    assert ScriptLane.for_client(connect("redis://127.0.0.1:6399/2"))._hello == [("SELECT", 2)]
    for url in ("rediss://127.0.0.1:6399/0", "redis+sentinel://127.0.0.1:26379/mymaster",
                "redis+cluster://127.0.0.1:7000"):
        client = connect(url)
        assert ScriptLane.for_client(client) is None, url
        await client.aclose()


async def test_the_store_loads_a_script_redis_forgot_and_calls_it_again(redis_server, admin, prefix, tmp_path):
    """NOSCRIPT (a Redis restarted, or SCRIPT FLUSH): the script did not
    run; the store loads it and sends the call again, through the lane."""
    store = Store(connect(redis_server.url), prefix)
    try:
        assert store._lane is not None
        for _ in range(2):
            await admin.script_flush()
            assert await admin.script_exists(store._facts.sha) == [False]
            facts = await store.facts("lane-test")  # facts.lua, through the lane
            assert facts.first_checkin is None
            assert await admin.script_exists(store._facts.sha) == [True]
        # record.lua goes as a PreparedCall, made for its SHA: sent again
        # as it was once the script is loaded.
        core = Core(store, registry_from(write_config(tmp_path, "monitors:\n  - {id: job, schedule: {interval: 1h}}\n"),
                                         tmp_path / "data"), lambda: T0)
        for seq in (1, 2):
            await admin.script_flush()
            result = await core.record(CheckIn("job", Kind.SUCCESS, T0 + seq))
            assert result.status == "ok" and result.seq == seq
            assert await admin.script_exists(store._record.sha) == [True]
    finally:
        await store.close()


class _Closing:
    """A transport whose peer hung up, before the loop says so."""

    def __init__(self, transport):
        self.transport = transport

    def is_closing(self) -> bool:
        return True

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def abort(self) -> None:
        self.transport.abort()


async def test_calls_after_redis_hung_up_never_take_an_old_calls_reply(lane, admin, monkeypatch):
    """The connection is closing (Redis hung up) but the loop has not yet
    told the protocol (connection_lost comes later): a call made then goes
    out on a new connection, and the calls sent on the old one fail rather
    than take the new connection's replies for theirs."""
    echo, busy = await admin.script_load(ECHO), await admin.script_load(BUSY)
    assert await lane.call(echo, [], ["connected"]) == "connected"
    stranded = lane.call(busy, [], ["0.2"])
    await asyncio.sleep(0.05)  # written; Redis is busy with it
    old = lane._protocol.transport
    # Closing, not yet lost: as the protocol sees its transport then. (A
    # stand-in, not a patched method: uvloop's transports are C types.)
    monkeypatch.setattr(lane._protocol, "transport", _Closing(old))
    fresh = lane.call(echo, [], ["fresh"])
    try:
        with pytest.raises(redis_errors.ConnectionError):
            await asyncio.wait_for(stranded, 2)
        assert await asyncio.wait_for(fresh, 2) == "fresh"
    finally:
        old.abort()
