"""The ``Cache`` contract (``tradeloom.cache.port``): both adapters pass the same tests.

The memory adapter runs on a manual monotonic clock, so its TTLs and windows are exact; the
Redis adapter runs on real time with short TTLs and polls with a deadline. Each Redis test
gets its own key prefix and deletes its keys at teardown. Tests that need only the port hold
the adapter as a ``Cache``, so mypy also checks that both adapters implement the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import cast

import pytest
import structlog.testing
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from tests.helpers import eventually_equals
from tradeloom.cache.memory import MemoryCache
from tradeloom.cache.port import SLIDING_WINDOW_LUA, Cache, CacheScript, ScriptCall, ScriptStore
from tradeloom.cache.redis import RedisCache, ScriptsOutOfOrder

Condition = Callable[[], Awaitable[bool]]


async def eventually(condition: Condition, within: float, what: str) -> None:
    await eventually_equals(condition, True, within, what=what)


class ManualMonotonic:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Subject:
    """One adapter under test, with the means to let time pass for it."""

    cache: MemoryCache | RedisCache
    clock: ManualMonotonic | None  # None: real time (Redis)
    admin: Redis | None = None  # a separate client for looking at Redis itself
    prefix: str = ""
    client_name: str = ""

    async def let_pass(self, seconds: float) -> None:
        """Let ``seconds`` pass: exactly on the manual clock, at least that long for Redis."""
        if self.clock is None:
            await asyncio.sleep(seconds)
        else:
            self.clock.now += seconds

    async def once(self, seconds: float, condition: Condition, what: str) -> None:
        """Require ``condition`` once ``seconds`` passed: the memory adapter moves its clock
        and checks once; Redis is polled with a deadline."""
        if self.clock is None:
            await eventually(condition, seconds + 3.0, what)
        else:
            self.clock.now += seconds
            assert await condition(), what


@contextlib.asynccontextmanager
async def redis_under_test(url: str, unique: str) -> AsyncIterator[Subject]:
    prefix, name = f"test:{unique}:", f"test-{unique}"
    cache = RedisCache(url, prefix=prefix, client_name=name, reconnect_delay=0.05)
    admin = Redis.from_url(url)
    await cache.start()
    try:
        yield Subject(cache, None, admin, prefix, name)
    finally:
        await cache.close()
        leftovers = [key async for key in admin.scan_iter(match=f"{prefix}*")]
        if leftovers:
            await admin.delete(*leftovers)
        await admin.aclose()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def subject(request: pytest.FixtureRequest, unique: str) -> AsyncIterator[Subject]:
    if request.param == "memory":
        clock = ManualMonotonic()
        yield Subject(MemoryCache(clock=clock), clock)
        return
    async with redis_under_test(request.getfixturevalue("redis_url"), unique) as redis_subject:
        yield redis_subject


@pytest.fixture
async def redis_subject(redis_url: str, unique: str) -> AsyncIterator[Subject]:
    async with redis_under_test(redis_url, unique) as subject:
        yield subject


# --- key/value -------------------------------------------------------------------------------


async def test_get_set_delete_and_get_many(subject: Subject) -> None:
    cache: Cache = subject.cache
    assert await cache.get("a") is None
    await cache.set("a", b"1")
    await cache.set("b", b"\x00\xff binary")
    assert await cache.get("a") == b"1"
    assert await cache.get_many(["a", "missing", "b"]) == [b"1", None, b"\x00\xff binary"]
    assert await cache.get_many([]) == []
    await cache.set("a", b"2")
    assert await cache.get("a") == b"2"
    assert await cache.delete("a") is True
    assert await cache.delete("a") is False
    assert await cache.get("a") is None


async def test_a_key_with_a_ttl_reads_as_absent_once_it_passed(subject: Subject) -> None:
    cache: Cache = subject.cache
    await cache.set("short", b"x", ttl=0.2)
    await cache.set("kept", b"y")
    await cache.set("renewed", b"z", ttl=0.2)
    await cache.set("renewed", b"z")  # set without ttl: the key stays
    assert await cache.get("short") == b"x"

    async def short_expired() -> bool:
        return await cache.get("short") is None

    await subject.once(0.2, short_expired, "a key set with ttl=0.2 s expires")
    assert await cache.get_many(["short", "kept", "renewed"]) == [None, b"y", b"z"]


@pytest.mark.parametrize("ttl", [0, -1.0])
async def test_a_ttl_must_be_positive(subject: Subject, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        await subject.cache.set("k", b"v", ttl=ttl)


async def test_set_many_stores_every_key_and_drops_earlier_expiries(subject: Subject) -> None:
    cache: Cache = subject.cache
    await cache.set("renewed", b"old", ttl=0.2)
    await cache.set_many({"a": b"1", "b": b"\x00\xff binary", "renewed": b"new"})
    assert await cache.get_many(["a", "b", "renewed"]) == [b"1", b"\x00\xff binary", b"new"]
    await cache.set_many({"a": b"2"})
    assert await cache.get("a") == b"2", "set_many overwrites like set"

    async def all_kept() -> bool:
        return await cache.get_many(["a", "b", "renewed"]) == [b"2", b"\x00\xff binary", b"new"]

    await subject.let_pass(0.3)
    assert await all_kept(), "keys set without ttl stay, an earlier ttl included"


async def test_set_many_with_a_ttl_expires_every_key(subject: Subject) -> None:
    cache: Cache = subject.cache
    prices = {f"price:{n}": f"{100 + n}.25".encode() for n in range(50)}
    await cache.set("kept", b"y")
    await cache.set_many(prices, ttl=0.2)
    assert await cache.get_many(list(prices)) == list(prices.values())

    async def all_expired() -> bool:
        return await cache.get_many(list(prices)) == [None] * len(prices)

    await subject.once(0.2, all_expired, "every key set_many wrote with ttl=0.2 s expires")
    assert await cache.get("kept") == b"y", "keys outside the batch are untouched"


async def test_set_many_of_nothing_is_a_no_op_and_a_bad_ttl_writes_nothing(
    subject: Subject,
) -> None:
    cache: Cache = subject.cache
    await cache.set_many({})
    await cache.set_many({}, ttl=1.0)
    with pytest.raises(ValueError, match="ttl"):
        await cache.set_many({"k": b"v", "j": b"w"}, ttl=0)
    assert await cache.get_many(["k", "j"]) == [None, None]
    if subject.admin is not None:
        assert [key async for key in subject.admin.scan_iter(match=f"{subject.prefix}*")] == []


async def test_compare_and_set(subject: Subject) -> None:
    cache: Cache = subject.cache
    assert await cache.compare_and_set("k", None, b"first") is True, "absent key, expected None"
    assert await cache.compare_and_set("k", None, b"again") is False, "present key, expected None"
    assert await cache.compare_and_set("k", b"wrong", b"second") is False
    assert await cache.get("k") == b"first"
    assert await cache.compare_and_set("k", b"first", b"second") is True
    assert await cache.get("k") == b"second"
    assert await cache.compare_and_set("absent", b"anything", b"v") is False
    assert await cache.get("absent") is None


async def test_compare_and_set_with_a_ttl_expires(subject: Subject) -> None:
    cache: Cache = subject.cache
    assert await cache.compare_and_set("lease", None, b"owner-1", ttl=0.2) is True

    async def lease_free() -> bool:
        return await cache.compare_and_set("lease", None, b"owner-2")

    await subject.once(0.2, lease_free, "an expired lease can be taken again")
    assert await cache.get("lease") == b"owner-2"


async def test_concurrent_compare_and_set_loses_no_update(subject: Subject) -> None:
    cache: Cache = subject.cache

    async def add_one() -> None:
        while True:
            current = await cache.get("counter")
            nxt = str(int(current or b"0") + 1).encode()
            if await cache.compare_and_set("counter", current, nxt):
                return

    await asyncio.gather(*(add_one() for _ in range(50)))
    assert await cache.get("counter") == b"50"


# --- counters and scripts ----------------------------------------------------------------------


async def test_increment(subject: Subject) -> None:
    cache: Cache = subject.cache
    assert await cache.increment("n") == 1
    assert await cache.increment("n", 5) == 6
    assert await cache.increment("n", -10) == -4
    assert await cache.get("n") == b"-4", "counters are stored as decimal text"


async def test_fifty_concurrent_increments_lose_nothing(subject: Subject) -> None:
    cache: Cache = subject.cache
    results = await asyncio.gather(*(cache.increment("hits", 2) for _ in range(50)))
    assert await cache.get("hits") == b"100"
    assert sorted(results) == list(range(2, 101, 2)), "each increment saw its own total"


async def test_increment_ttl_applies_only_when_it_creates_the_key(subject: Subject) -> None:
    cache: Cache = subject.cache
    assert await cache.increment("window", ttl=0.2) == 1
    assert await cache.increment("window", ttl=3600) == 2, "a later ttl does not extend the key"
    await cache.set("plain", b"7")
    assert await cache.increment("plain", ttl=0.2) == 8

    async def window_gone() -> bool:
        return await cache.get("window") is None

    await subject.once(0.2, window_gone, "the counter expires with the ttl it was created with")
    assert await cache.get("plain") == b"8", "an existing key keeps having no expiry"


def _reserve_twin(store: ScriptStore, keys: Sequence[str], args: Sequence[str]) -> object:
    limit, reserved = (int(store.get(key) or b"0") for key in keys)
    amount = int(args[0])
    if reserved + amount > limit:
        return [0, reserved]
    return [1, store.incrby(keys[1], amount)]


RESERVE = CacheScript(
    name="test_reserve_up_to_limit",
    lua="""
local limit = tonumber(redis.call('GET', KEYS[1]) or '0')
local reserved = tonumber(redis.call('GET', KEYS[2]) or '0')
local amount = tonumber(ARGV[1])
if reserved + amount > limit then return {0, reserved} end
return {1, redis.call('INCRBY', KEYS[2], amount)}
""",
    python=_reserve_twin,
)


async def test_a_script_reserves_up_to_a_limit_under_fifty_concurrent_callers(
    subject: Subject,
) -> None:
    """The risk engine's pattern: read a limit and reserve exposure against it in one step."""
    cache: Cache = subject.cache
    await cache.set("limit", b"255")
    keys = ["limit", "reserved"]
    replies = await asyncio.gather(*(cache.run_script(RESERVE, keys, ["10"]) for _ in range(50)))
    granted = [reply for reply in replies if reply[0] == 1]  # type: ignore[index]
    assert len(granted) == 25, f"25 reservations of 10 fit under 255, got {len(granted)}"
    assert sorted(r[1] for r in granted) == list(range(10, 251, 10))  # type: ignore[index]
    assert await cache.get("reserved") == b"250"
    assert await cache.run_script(RESERVE, keys, ["5"]) == [1, 255]
    assert await cache.run_script(RESERVE, keys, ["1"]) == [0, 255]


def _describe_twin(store: ScriptStore, keys: Sequence[str], args: Sequence[str]) -> object:
    store.set(keys[1], args[0].encode(), ttl=float(args[1]) / 1000)
    return [args[0], int(args[1]), store.get(keys[0]) or False]


DESCRIBE = CacheScript(
    name="test_describe",
    lua="""
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return {ARGV[1], tonumber(ARGV[2]), redis.call('GET', KEYS[1])}
""",
    python=_describe_twin,
)


async def test_script_replies_and_writes_look_alike_on_every_adapter(subject: Subject) -> None:
    cache: Cache = subject.cache
    await cache.set("source", b"payload")
    assert await cache.run_script(DESCRIBE, ["source", "made"], ["text", "200"]) == [
        b"text",
        200,
        b"payload",
    ]
    assert await cache.get("made") == b"text"

    async def made_expired() -> bool:
        return await cache.get("made") is None

    await subject.once(0.2, made_expired, "a key a script set with a ttl expires")


def _append_twin(store: ScriptStore, keys: Sequence[str], args: Sequence[str]) -> object:
    if args[0] == "fail":
        raise ValueError("the script failed")
    value = (store.get(keys[0]) or b"") + args[0].encode()
    store.set(keys[0], value)
    return value


APPEND = CacheScript(
    name="test_append",
    lua="""
if ARGV[1] == 'fail' then return redis.error_reply('the script failed') end
local value = (redis.call('GET', KEYS[1]) or '') .. ARGV[1]
redis.call('SET', KEYS[1], value)
return value
""",
    python=_append_twin,
)


def append(key: str, text: str) -> ScriptCall:
    return ScriptCall(APPEND, [key], [text])


async def test_run_scripts_runs_every_call_in_the_given_order(subject: Subject) -> None:
    cache: Cache = subject.cache
    await cache.set("source", b"payload")
    results = await cache.run_scripts(
        [
            append("log", "a"),
            ScriptCall(DESCRIBE, ["source", "made"], ["text", "60000"]),
            append("other", "x"),
            append("log", "b"),
            append("log", "c"),
        ]
    )
    assert results == [b"a", [b"text", 60000, b"payload"], b"x", b"ab", b"abc"]
    assert await cache.get_many(["log", "other", "made"]) == [b"abc", b"x", b"text"]
    assert await cache.run_scripts([]) == []
    assert await cache.run_scripts([append("log", "d")]) == [b"abcd"], "scripts known by now"


async def test_concurrent_script_batches_are_atomic_per_script_and_ordered(
    subject: Subject,
) -> None:
    cache: Cache = subject.cache
    await cache.set("limit", b"255")
    keys = ["limit", "reserved"]
    batch = [ScriptCall(RESERVE, keys, ["10"]), ScriptCall(RESERVE, keys, ["10"])]
    replies = await asyncio.gather(*(cache.run_scripts(batch) for _ in range(25)))
    pairs = cast(list[list[list[int]]], replies)  # per batch, per call: [granted, reserved]
    granted = [reply for pair in pairs for reply in pair if reply[0] == 1]
    assert len(granted) == 25, f"25 reservations of 10 fit under 255, got {len(granted)}"
    assert await cache.get("reserved") == b"250"
    for first, second in pairs:
        if second[0] == 1:
            assert first[0] == 1, "the second call of a batch cannot pass where the first failed"
            assert first[1] < second[1], "the second call of a batch runs after the first"


async def test_a_failing_script_makes_run_scripts_raise_after_the_calls_before_it(
    subject: Subject,
) -> None:
    cache: Cache = subject.cache
    with pytest.raises((ValueError, ResponseError), match="the script failed"):
        await cache.run_scripts([append("log", "a"), append("log", "fail"), append("x", "y")])
    assert await cache.get("log") == b"a"


async def test_redis_runs_a_batch_again_when_it_lost_its_scripts(redis_subject: Subject) -> None:
    """Redis lost a script the adapter had loaded (a restart): every call from the first
    refused one on was refused, so they run again, loaded, in order."""
    cache = redis_subject.cache
    assert isinstance(cache, RedisCache)
    lost = _script_unknown_to_redis(redis_subject)
    assert await cache.run_scripts([append("log", "a")]) == [b"a"]
    results = await cache.run_scripts([append("log", "b"), lost("log", "c"), lost("log", "d")])
    assert results == [b"ab", b"abc", b"abcd"]
    assert await cache.run_scripts([lost("log", "e")]) == [b"abcde"], "loaded now"


async def test_redis_refuses_to_run_a_batch_out_of_order(redis_subject: Subject) -> None:
    """A later call's script ran while an earlier one's was lost: the adapter raises rather
    than run the earlier call after the later one; a retry loads both and runs in order."""
    cache = redis_subject.cache
    assert isinstance(cache, RedisCache)
    lost = _script_unknown_to_redis(redis_subject)
    await cache.run_scripts([append("log", "a")])
    with pytest.raises(ScriptsOutOfOrder):
        await cache.run_scripts([lost("log", "b"), append("log", "c")])
    assert await cache.get("log") == b"ac", "only the call whose script Redis had ran"
    assert await cache.run_scripts([lost("log", "d"), append("log", "e")]) == [b"acd", b"acde"]


async def test_redis_raises_the_error_of_a_script_it_cannot_load(redis_subject: Subject) -> None:
    broken = CacheScript(name="test_broken", lua="return {", python=_append_twin)
    with pytest.raises(ResponseError, match="compil"):
        await redis_subject.cache.run_scripts([append("log", "a"), ScriptCall(broken, [], [])])


def _script_unknown_to_redis(subject: Subject) -> Callable[[str, str], ScriptCall]:
    """A twin of APPEND that Redis has never seen, which the adapter believes loaded: stands in
    for a Redis restart (a shared test server must not flush its scripts)."""
    lua = f"-- {subject.prefix}\n{APPEND.lua}"
    script = CacheScript(name=f"test_append_{subject.prefix}", lua=lua, python=_append_twin)
    assert isinstance(subject.cache, RedisCache)
    subject.cache._loaded.add(hashlib.sha1(lua.encode()).hexdigest())
    return lambda key, text: ScriptCall(script, [key], [text])


def _window_twin(store: ScriptStore, keys: Sequence[str], args: Sequence[str]) -> object:
    decision = store.hit_window(keys[0], int(args[0]), int(args[1]) / 1_000_000)
    return [int(decision.allowed), decision.count]


WINDOW = CacheScript(
    name="test_window",
    lua=SLIDING_WINDOW_LUA
    + """
local allowed, count = hit_window(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3])
return {allowed, count}
""",
    python=_window_twin,
)


async def test_a_script_shares_the_sliding_window_of_hit_rate_limit(subject: Subject) -> None:
    cache: Cache = subject.cache

    async def hit() -> object:
        return await cache.run_script(WINDOW, ["w"], ["2", "300000", uuid.uuid4().hex])

    assert [await hit(), await hit(), await hit()] == [[1, 1], [1, 2], [0, 2]]
    assert not (await cache.hit_rate_limit("w", limit=2, window=0.3)).allowed, "one window"

    async def admitted_again() -> bool:
        # Admitted, whatever the count: a poll that lands after the first hit left the window
        # and before the second is admitted with a count of 2 (and then refused ones are not
        # counted), so requiring [1, 1] could wait forever.
        result = await hit()
        assert isinstance(result, list)
        return bool(result[0] == 1)

    await subject.once(0.3, admitted_again, "the window slides for scripts too")


# --- rate limiting ------------------------------------------------------------------------------


async def test_sliding_window_admits_limit_hits_then_refuses_until_the_window_slides(
    subject: Subject,
) -> None:
    cache: Cache = subject.cache
    admitted = [await cache.hit_rate_limit("user:1", limit=3, window=0.3) for _ in range(3)]
    assert [(d.allowed, d.count, d.retry_after) for d in admitted] == [
        (True, 1, 0.0),
        (True, 2, 0.0),
        (True, 3, 0.0),
    ]
    refused = await cache.hit_rate_limit("user:1", limit=3, window=0.3)
    assert not refused.allowed
    assert refused.count == 3
    assert 0 < refused.retry_after <= 0.3
    again = await cache.hit_rate_limit("user:1", limit=3, window=0.3)
    assert (again.allowed, again.count) == (False, 3), "refused hits are not counted"
    assert (await cache.hit_rate_limit("user:2", limit=3, window=0.3)).allowed, "keys are apart"

    async def admitted_again() -> bool:
        return (await cache.hit_rate_limit("user:1", limit=3, window=0.3)).allowed

    await subject.once(refused.retry_after, admitted_again, "a hit is admitted after retry_after")


async def test_the_window_slides_rather_than_resets(subject: Subject) -> None:
    cache: Cache = subject.cache
    assert (await cache.hit_rate_limit("k", limit=2, window=0.5)).allowed
    await subject.let_pass(0.25)
    assert (await cache.hit_rate_limit("k", limit=2, window=0.5)).allowed
    refused = await cache.hit_rate_limit("k", limit=2, window=0.5)
    assert not refused.allowed
    assert 0 < refused.retry_after <= 0.25, "retry_after counts from the oldest admitted hit"

    decisions = []

    async def admitted_again() -> bool:
        decisions.append(await cache.hit_rate_limit("k", limit=2, window=0.5))
        return decisions[-1].allowed

    await subject.once(refused.retry_after, admitted_again, "the oldest hit left the window")
    assert decisions[-1].count == 2, "the second hit is still in the window"


@pytest.mark.parametrize(("limit", "window"), [(0, 1.0), (1, 0.0)])
async def test_rate_limit_arguments_are_checked(
    subject: Subject, limit: int, window: float
) -> None:
    with pytest.raises(ValueError, match=r"limit|window"):
        await subject.cache.hit_rate_limit("k", limit, window)


# --- pub/sub ------------------------------------------------------------------------------------


class Inbox:
    """A callback that records what it was given."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def __call__(self, channel: str, message: bytes) -> None:
        self.messages.append((channel, message))


async def test_every_local_subscriber_gets_every_message_in_order(subject: Subject) -> None:
    cache = subject.cache
    inboxes = [Inbox() for _ in range(10)]
    for inbox in inboxes:
        await cache.subscribe("prices", inbox)
    other = Inbox()
    await cache.subscribe("orders", other)
    sent = [f"m{i}".encode() for i in range(20)]
    for message in sent:  # right after subscribe returned: nothing may be missed
        await cache.publish("prices", message)

    async def all_delivered() -> bool:
        return all(len(inbox.messages) == len(sent) for inbox in inboxes)

    await eventually(all_delivered, 3.0, "20 messages reach 10 subscribers")
    for inbox in inboxes:
        assert inbox.messages == [("prices", m) for m in sent]
    assert other.messages == [], "a subscriber of another channel gets nothing"


async def test_publish_many_delivers_in_the_given_order_across_channels(
    subject: Subject,
) -> None:
    """The market-data pattern: one batch of price updates spread over per-symbol channels."""
    cache = subject.cache
    symbols = ["prices:AAA", "prices:BBB", "prices:CCC"]
    per_channel = {symbol: Inbox() for symbol in symbols}
    everything = Inbox()  # one callback on every channel sees the interleaving
    for symbol in symbols:
        await cache.subscribe(symbol, per_channel[symbol])
        await cache.subscribe(symbol, everything)
    unrelated = Inbox()
    await cache.subscribe("orders", unrelated)
    batch = [(symbols[n % 3 if n % 5 else 0], f"tick-{n}".encode()) for n in range(60)]
    await cache.publish("prices:BBB", b"before")
    await cache.publish_many(batch)
    await cache.publish_many([])
    await cache.publish("prices:BBB", b"after")
    expected = [("prices:BBB", b"before"), *batch, ("prices:BBB", b"after")]

    async def all_delivered() -> bool:
        return len(everything.messages) == len(expected)

    await eventually(all_delivered, 3.0, "a batch of 60 reaches every subscriber")
    assert everything.messages == expected, "the batch keeps its order across channels"
    for symbol, inbox in per_channel.items():
        assert inbox.messages == [m for m in expected if m[0] == symbol], symbol
    assert unrelated.messages == [], "a subscriber of another channel gets nothing"


async def test_publish_many_of_nothing_delivers_nothing(subject: Subject) -> None:
    cache = subject.cache
    inbox = Inbox()
    await cache.subscribe("ch", inbox)
    await cache.publish_many([])
    await cache.publish("ch", b"marker")

    async def marker_arrived() -> bool:
        return bool(inbox.messages)

    await eventually(marker_arrived, 3.0, "a message published after an empty batch arrives")
    assert inbox.messages == [("ch", b"marker")]


async def test_a_closed_subscription_gets_nothing_more(subject: Subject) -> None:
    cache = subject.cache
    leaving, staying = Inbox(), Inbox()
    subscription = await cache.subscribe("ch", leaving)
    await cache.subscribe("ch", staying)
    await cache.publish("ch", b"1")

    async def both_got_one() -> bool:
        return len(leaving.messages) == len(staying.messages) == 1

    await eventually(both_got_one, 3.0, "both subscribers get the first message")
    await subscription.close()
    await subscription.close()  # idempotent
    await cache.publish("ch", b"2")

    async def staying_got_two() -> bool:
        return len(staying.messages) == 2

    await eventually(staying_got_two, 3.0, "the remaining subscriber gets the second message")
    assert leaving.messages == [("ch", b"1")]


async def test_a_raising_callback_is_logged_and_counted_and_others_still_receive(
    subject: Subject,
) -> None:
    cache = subject.cache

    def broken(channel: str, message: bytes) -> None:
        raise RuntimeError("subscriber bug")

    before, after = Inbox(), Inbox()
    await cache.subscribe("ch", before)
    await cache.subscribe("ch", broken)
    await cache.subscribe("ch", after)
    with structlog.testing.capture_logs() as logs:
        await cache.publish("ch", b"1")
        await cache.publish("ch", b"2")

        async def delivered() -> bool:
            return len(before.messages) == len(after.messages) == 2

        await eventually(delivered, 3.0, "subscribers around a broken one get both messages")
    assert cache.callback_failures == 2
    failures = [entry for entry in logs if entry["event"] == "cache.subscriber_failed"]
    assert len(failures) == 2, logs
    assert failures[0]["log_level"] == "error"
    assert failures[0]["channel"] == "ch"


# --- Redis only: one upstream subscription per process ------------------------------------------


async def _pubsub_clients(subject: Subject) -> list[dict[str, str]]:
    assert subject.admin is not None
    clients = await subject.admin.client_list(_type="pubsub")
    return [c for c in clients if c["name"] == f"{subject.client_name}:pubsub"]


@pytest.mark.redis
async def test_redis_holds_one_upstream_subscription_for_all_local_subscribers(
    redis_subject: Subject,
) -> None:
    subject = redis_subject
    assert subject.admin is not None
    cache = subject.cache
    channels = [f"user:{n}" for n in range(4)]
    inboxes = {channel: [Inbox() for _ in range(25)] for channel in channels}
    subscriptions = {
        channel: [await cache.subscribe(channel, inbox) for inbox in boxes]
        for channel, boxes in inboxes.items()
    }

    clients = await _pubsub_clients(subject)
    assert len(clients) == 1, f"one pub/sub connection expected, got {clients}"
    assert clients[0]["sub"] == "4", clients[0]
    upstream = [subject.prefix + channel for channel in channels]
    assert await subject.admin.pubsub_numsub(*upstream) == [(c.encode(), 1) for c in upstream]

    for channel in channels:
        await cache.publish(channel, channel.encode())

    async def all_delivered() -> bool:
        return all(len(i.messages) == 1 for boxes in inboxes.values() for i in boxes)

    await eventually(all_delivered, 3.0, "each of 100 subscribers gets its channel's message")

    for subscription in subscriptions["user:0"]:
        await subscription.close()

    async def channel_released() -> bool:
        assert subject.admin is not None
        counts = dict(await subject.admin.pubsub_numsub(*upstream))
        return counts[upstream[0].encode()] == 0 and counts[upstream[1].encode()] == 1

    await eventually(channel_released, 3.0, "the last local close unsubscribes upstream")


@pytest.mark.redis
async def test_redis_reader_reconnects_and_resubscribes(redis_subject: Subject) -> None:
    subject = redis_subject
    assert subject.admin is not None
    cache = subject.cache
    inbox = Inbox()
    await cache.subscribe("ch", inbox)
    [client] = await _pubsub_clients(subject)
    with structlog.testing.capture_logs() as logs:
        await subject.admin.client_kill_filter(_id=client["id"])

        async def delivered_after_reconnect() -> bool:
            await cache.publish("ch", b"after")
            return bool(inbox.messages)

        await eventually(delivered_after_reconnect, 5.0, "delivery resumes after a reconnect")
    events = [entry["event"] for entry in logs]
    assert "cache.pubsub_disconnected" in events, events
    assert "cache.pubsub_reconnected" in events, events
    clients = await _pubsub_clients(subject)
    assert len(clients) == 1, clients
    assert clients[0]["id"] != client["id"]
