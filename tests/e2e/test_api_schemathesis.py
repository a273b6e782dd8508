"""The REST API fuzzed from its own OpenAPI document (schemathesis): no operation ever answers
a server error, and every error is in the JSON error model.

The app runs on the embedded platform in the schemathesis ASGI portal (its event loop), with
generous rate limits so the run is not all 429s. Its lifespan is wrapped to seed what a real
session has: an administrator, traders with API tokens and resting orders, and a live price
feed for a few symbols (a price older than 5 s is no price, and the run takes longer).

Every operation is exercised with schema-valid (positive) and schema-violating (negative)
requests, as the owner it is meant for: ``/api/admin`` as the administrator, ``/api/auth`` as
a throwaway user (revoking tokens must not log the traders out), the rest as a trader. Known
values are swapped in at random (real symbols, the trader's own and another user's order ids,
a sacrificial username) so the requests reach past "not found" into the OMS and risk. The
orders and market operations are also held to their documented status codes and bodies.

Deterministic: hypothesis is derandomized, the schemathesis config seeded, and every
operation runs a fixed number of examples.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS
from schemathesis.config import SchemathesisConfig
from schemathesis.errors import FailureGroup
from schemathesis.python import asgi

from tests.helpers import eventually_equals
from tradeloom.bootstrap import Platform, build_platform
from tradeloom.config import Settings
from tradeloom.domain.commands import PlaceOrder
from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.ids import new_id
from tradeloom.domain.orders import OrderType, Side, TimeInForce
from tradeloom.storage.migrate import upgrade_database
from tradeloom.users.model import Role
from tradeloom.users.passwords import CHEAP_PARAMETERS, Passwords
from tradeloom.web.app import build_web_services, create_app
from tradeloom.web.auth import WebServices
from tradeloom.web.ratelimit import RateLimit

EXAMPLES = 40  # per operation and generation mode
SEED = 20250314
PASSWORD = "correct horse battery"
GENEROUS = {kind: RateLimit(1_000_000, 1.0) for kind in ("orders", "reads", "login")}
PRICES = {"AAPL": ("187.20", "187.25"), "MSFT": ("415.40", "415.50"), "BRK.B": ("408.80", "409.00")}
# Run in this order: the trading routes while the traders are untouched, then the admin
# routes (which may halt trading), then auth (which may revoke its own user's tokens).
ORDER_OF_PREFIXES = (
    "/api/orders",
    "/api/market",
    "/api/",
    "/healthz",
    "/readyz",
    "/api/admin",
    "/api/auth",
)
HELD_TO_THE_DOCUMENT = ("/api/orders", "/api/market")


@dataclass
class Seeded:
    """What the lifespan seeded, for the test to swap in. Usernames end in ``suffix``: the
    PostgreSQL test database is shared by the whole session."""

    suffix: str
    tokens: dict[str, str] = field(default_factory=dict)
    order_ids: list[str] = field(default_factory=list)  # alice's, then bob's, then new ones

    def user(self, name: str) -> str:
        return f"{name}{self.suffix}"


async def seed(platform: Platform, services: WebServices, seeded: Seeded) -> None:
    for name, role in [
        ("root", Role.ADMIN),
        ("alice", Role.TRADER),
        ("bob", Role.TRADER),
        ("carol", Role.TRADER),
        ("dave", Role.TRADER),
    ]:
        username = seeded.user(name)
        await services.users.register(username, PASSWORD, role=role)
        seeded.tokens[name] = (await services.tokens.issue(username, "fuzz")).token
    await publish_prices(platform)
    for symbol in PRICES:
        await eventually_equals(lambda s=symbol: priced(platform, s), True, what=f"{symbol} priced")
    for name, count in (("alice", 3), ("bob", 2)):
        owner = seeded.user(name)
        [account] = await platform.accounts.list_for_owner(owner)
        for n in range(count):
            receipt = await platform.orders.place(
                PlaceOrder(
                    account_id=account.account_id,
                    client_order_id=f"{name}-resting-{n}",
                    symbol="AAPL",
                    side=Side.BUY,
                    order_type=OrderType.LIMIT,
                    quantity=Decimal(10),
                    time_in_force=TimeInForce.GTC,
                    limit_price=Decimal("180.00"),
                    correlation_id=new_id(),
                    user_id=owner,
                )
            )
            seeded.order_ids.append(receipt.order_id)


async def priced(platform: Platform, symbol: str) -> bool:
    return await platform.market_data.last_prices.last(symbol) is not None


async def publish_prices(platform: Platform) -> None:
    for symbol, (bid, ask) in PRICES.items():
        await platform.market_data.publisher.submit(
            PriceUpdate(
                symbol=symbol,
                bid=Decimal(bid),
                ask=Decimal(ask),
                last=Decimal(ask),
                volume=Decimal(100),
                exchange_time=datetime.now(UTC),
                venue="FUZZ",
            )
        )


async def live_prices(platform: Platform) -> None:
    """A price per symbol every second, so quotes stay fresher than their 5 s TTL."""
    while True:
        await asyncio.sleep(1.0)
        await publish_prices(platform)


def seeded_app(database_url: str, seeded: Seeded) -> FastAPI:
    platform = build_platform(Settings(database_url=database_url))
    services = build_web_services(
        platform, passwords=Passwords(CHEAP_PARAMETERS), rate_limits=GENEROUS
    )
    app = create_app(platform, services=services)
    started = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        async with started(app) as state:
            await seed(platform, services, seeded)
            feed = asyncio.create_task(live_prices(platform))
            try:
                yield state
            finally:
                feed.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feed

    app.router.lifespan_context = lifespan
    return app


@dataclass
class Fuzzed:
    schema: Any
    seeded: Seeded


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fuzzed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fuzzed]:
    if request.param == "postgres":
        database_url = request.getfixturevalue("postgres_url")
        asyncio.run(upgrade_database(database_url))
    else:
        database_url = f"sqlite:///{tmp_path}/fuzz.db"
    seeded = Seeded(suffix=f"_{uuid.uuid4().hex[:8]}")
    app = seeded_app(database_url, seeded)
    config = SchemathesisConfig.from_dict(
        {"seed": SEED, "max-stream-events": 1, "request-timeout": 10.0}
    )
    # Loading the document starts the app's lifespan in the schemathesis portal.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    try:
        yield Fuzzed(schema, seeded)
    finally:
        asgi.shutdown_lifespans()


@dataclass
class Tally:
    examples: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def record(self, label: str, status: int) -> None:
        self.examples[label] += 1
        self.statuses.setdefault(label, Counter())[status] += 1

    def summary(self) -> str:
        lines = [
            f"{label}: {self.examples[label]} examples, "
            + ", ".join(f"{s}x{n}" for s, n in sorted(self.statuses[label].items()))
            for label in self.examples
        ]
        total = sum(self.examples.values())
        lines.append(
            f"{len(self.examples)} operations, {total} examples, {len(self.failures)} failures"
        )
        return "\n".join(lines)


def error_model_problem(status: int, body: Any) -> str | None:
    """Why an error answer is not in the JSON error model, or None when it is."""
    if status < 400:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("code"), str):
        return f"an error answer outside the error model: {body!r:.300}"
    return None


def plausible_order(data: st.DataObject) -> dict[str, Any]:
    """Terms near a real order's, so the OMS and risk see orders that may well pass."""
    symbol = data.draw(st.sampled_from(sorted(PRICES)))
    ask = Decimal(PRICES[symbol][1])
    price = st.sampled_from([ask - 5, ask - Decimal("0.01"), ask, ask + 5, ask + Decimal("0.001")])
    return {
        "symbol": data.draw(st.sampled_from([symbol, symbol.lower()])),
        "side": data.draw(st.sampled_from(["buy", "sell"])),
        "qty": data.draw(st.sampled_from(["1", "3", "10", "150", "1e2", "0.5", 7])),
        "type": data.draw(st.sampled_from(["market", "limit", "stop", "stop_limit"])),
        "time_in_force": data.draw(st.sampled_from(["day", "gtc", "ioc", "fok"])),
        "limit_price": str(data.draw(price)),
        "stop_price": str(data.draw(price)),
    }


def plausible_amend(data: st.DataObject) -> dict[str, Any]:
    change = {"qty": data.draw(st.sampled_from(["1", "5", "9", "11"]))}
    change |= {"limit_price": data.draw(st.sampled_from(["170.00", "179.99", "185.00"]))}
    change |= {"stop_price": "175.00"}
    keys = data.draw(st.lists(st.sampled_from(sorted(change)), min_size=1, unique=True))
    return {key: change[key] for key in keys}


def inject_nul(case: Any, data: st.DataObject) -> None:
    """In one case of four, a NUL inside one string: PostgreSQL refuses it in text, so a value
    that reaches a query unchecked fails the request (the generator rarely makes one)."""
    strings = [
        (values, key)
        for values in (case.path_parameters, case.query, case.body)
        if isinstance(values, dict)
        for key, value in values.items()
        if isinstance(value, str)
    ]
    if not strings or data.draw(st.integers(0, 3)) != 0:
        return
    values, key = data.draw(st.sampled_from(strings))
    at = data.draw(st.integers(0, len(values[key])))
    values[key] = values[key][:at] + "\x00" + values[key][at:]


def swap_in_known_values(case: Any, data: st.DataObject, fuzzed: Fuzzed) -> None:
    """Replace some generated values with real ones (the draw decides, deterministically):
    plausible order terms, known ids and symbols; or else, now and then, a NUL."""
    label, body = case.operation.label, case.body
    plausible = False
    if label == "POST /api/orders" and isinstance(body, dict) and data.draw(st.integers(0, 3)):
        terms = plausible_order(data)
        case.body = {key: terms[key] for key in data.draw(st.sets(st.sampled_from(sorted(terms))))}
        case.body |= {key: terms[key] for key in ("symbol", "side", "qty", "type")}
        plausible = True
    if label == "PATCH /api/orders/{order_id}" and data.draw(st.booleans()):
        case.body = plausible_amend(data)
        plausible = True
    if not plausible:
        inject_nul(case, data)
    path = case.path_parameters or {}
    if "order_id" in path and data.draw(st.booleans()):
        path["order_id"] = data.draw(st.sampled_from(fuzzed.seeded.order_ids))
    if "symbol" in path and data.draw(st.booleans()):
        path["symbol"] = data.draw(st.sampled_from(sorted(PRICES)))
    if "username" in path and data.draw(st.booleans()):
        path["username"] = fuzzed.seeded.user("carol")
    if isinstance(case.query, dict) and "symbols" in case.query and data.draw(st.booleans()):
        case.query["symbols"] = ",".join(data.draw(st.lists(st.sampled_from(sorted(PRICES)))))


def caller(path: str) -> str:
    if path.startswith("/api/admin"):
        return "root"
    if path.startswith("/api/auth"):
        return "dave"
    return "alice"


def rank(operation: Any) -> tuple[int, bool]:
    """Where the operation runs: by its longest prefix in ``ORDER_OF_PREFIXES``, deletes
    last within a group."""
    path = operation.path
    matches = [prefix for prefix in ORDER_OF_PREFIXES if path.startswith(prefix)]
    group = ORDER_OF_PREFIXES.index(max(matches, key=len)) if matches else len(ORDER_OF_PREFIXES)
    return group, operation.method.upper() == "DELETE"


def exercise(operation: Any, mode: GenerationMode, fuzzed: Fuzzed, tally: Tally) -> None:
    token = fuzzed.seeded.tokens[caller(operation.path)]
    held = operation.path.startswith(HELD_TO_THE_DOCUMENT)
    names = ["not_a_server_error"]
    if held:
        names += ["status_code_conformance", "content_type_conformance"]
        names += [
            "response_schema_conformance"
            if mode is GenerationMode.POSITIVE
            else "negative_data_rejection"
        ]
    checks = CHECKS.get_by_names([name for name in names if name])

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    def run(case: Any, data: st.DataObject) -> None:
        swap_in_known_values(case, data, fuzzed)
        try:
            response = case.call(headers={"Authorization": f"Bearer {token}"})
        except Exception as error:  # the app raised: its client got a 500
            tally.record(operation.label, 500)
            reproduce = f"{case.as_curl_command()}\n  {type(error).__name__}: {error}"
            tally.failures.append(f"{operation.label} [{mode.value}] {reproduce[:800]}")
            return
        tally.record(operation.label, response.status_code)
        if operation.label == "POST /api/orders" and response.status_code == 202:
            fuzzed.seeded.order_ids.append(response.json()["order_id"])
        try:
            case.validate_response(response, checks=checks)
        except FailureGroup as failure:
            tally.failures.append(
                f"{operation.label} [{mode.value}] {case.as_curl_command()}\n"
                f"  -> {response.status_code} {response.text[:300]}\n"
                f"  {failure}"
            )
            return
        body = response.json() if response.content and response.status_code >= 400 else None
        problem = error_model_problem(response.status_code, body)
        if problem:
            tally.failures.append(f"{operation.label} [{mode.value}]: {problem}")

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise  # an operation without any parameter has no negative case; others must run


def test_no_operation_answers_a_server_error(fuzzed: Fuzzed) -> None:
    operations = sorted((result.ok() for result in fuzzed.schema.get_all_operations()), key=rank)
    tally = Tally()

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            exercise(operation, mode, fuzzed, tally)

    print(tally.summary())
    assert len(tally.examples) == len(operations) >= 25, tally.summary()
    assert not tally.failures, "\n\n".join(tally.failures[:20]) + "\n\n" + tally.summary()
