// The dashboard's logic without a browser: exact decimals, quote merging and marks, and the
// order and position state kept from the stream's events. Run: node --test tests/js/

import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, it } from "node:test";

import { Dec, money } from "../../src/tradeloom/web/static/js/decimal.js";
import { Store } from "../../src/tradeloom/web/static/js/store.js";
import { refusalNotice } from "../../src/tradeloom/web/static/js/blotter.js";
import { USER_EVENTS } from "../../src/tradeloom/web/static/js/stream.js";

const d = (text) => Dec.parse(text);

describe("Dec", () => {
  it("adds and multiplies exactly", () => {
    assert.equal(d("0.1").add(d("0.2")).toString(), "0.3");
    assert.equal(d("187.22").mul(d("5")).toString(), "936.10");
    assert.equal(d("1.5").sub(d("2.25")).toString(), "-0.75");
  });

  it("rounds half away from zero when formatting", () => {
    assert.equal(d("1.245").format(2), "1.25");
    assert.equal(d("-1.245").format(2), "-1.25");
    assert.equal(d("1.2449").format(2), "1.24");
    assert.equal(d("-0.004").format(2), "0.00");
    assert.equal(d("1234567.5").format(2, { group: true }), "1,234,567.50");
  });

  it("divides to a scale and trims trailing zeros", () => {
    assert.equal(d("10").div(d("3"), 4).toString(), "3.3333");
    assert.equal(d("2").div(d("3"), 2).toString(), "0.67");
    assert.equal(d("1").div(d("0")), null);
    assert.equal(d("187.2000").trimmed(2).toString(), "187.20");
  });

  it("checks grids and rejects what is not a number", () => {
    assert.ok(d("187.25").isMultipleOf(d("0.01")));
    assert.ok(!d("187.255").isMultipleOf(d("0.01")));
    assert.equal(Dec.parse("abc"), null);
    assert.equal(Dec.parse(""), null);
    assert.equal(Dec.parse(null), null);
    assert.equal(money(null), "—");
  });
});

describe("Store quotes", () => {
  let now;
  const realNow = Date.now;
  beforeEach(() => {
    now = 1_000_000;
    Date.now = () => now;
  });
  afterEach(() => {
    Date.now = realNow;
  });

  it("keeps the fields an update does not carry", () => {
    const store = new Store();
    store.setQuote({ symbol: "AAPL", bid: "187.20", ask: "187.22", last: null, time: "t1" });
    store.setQuote({ symbol: "AAPL", bid: null, ask: null, last: "187.21", time: "t2" });
    assert.deepEqual(store.freshQuote("AAPL"), {
      symbol: "AAPL", bid: "187.20", ask: "187.22", last: "187.21", time: "t2",
    });
  });

  it("marks at the mid, else the last trade, and not at all once stale", () => {
    const store = new Store();
    store.setQuote({ symbol: "AAPL", bid: "187.20", ask: "187.21" });
    assert.equal(store.markPrice("AAPL").toString(), "187.205");
    store.setQuote({ symbol: "MSFT", last: "415.50" });
    assert.equal(store.markPrice("MSFT").toString(), "415.50");
    now += 5001;
    assert.equal(store.markPrice("AAPL"), null);
  });
});

function event(type, data, occurred_at = "2026-01-02T10:00:00Z") {
  return { id: 1, type, event_id: `e-${type}`, account_id: "acc", correlation_id: "c", occurred_at, data };
}

function submitted(store) {
  store.applyOrderEvent(event("order.submitted", {
    order_id: "o1", client_order_id: "c1", symbol: "AAPL", side: "buy", order_type: "limit",
    quantity: "10", time_in_force: "gtc", limit_price: "187.00", stop_price: null,
  }));
  return store.orders.get("o1");
}

function fill(type, quantity, price, cumulative, leaves) {
  return event(type, {
    order_id: "o1", fill_id: `f${cumulative}`, symbol: "AAPL", side: "buy", quantity, price,
    fee: "0", filled_at: "2026-01-02T10:00:01Z", cumulative_quantity: cumulative, leaves_quantity: leaves,
  });
}

describe("Store orders", () => {
  it("follows an order through acceptance and fills, counting each fill once", () => {
    const store = new Store();
    submitted(store);
    store.applyOrderEvent(event("order.accepted", { order_id: "o1", broker_order_id: "b1" }));
    assert.equal(store.orders.get("o1").status, "accepted");

    store.applyOrderEvent(fill("order.partially_filled", "4", "187.00", "4", "6"));
    store.applyOrderEvent(fill("order.partially_filled", "4", "187.00", "4", "6"));
    let order = store.orders.get("o1");
    assert.equal(order.status, "partially_filled");
    assert.equal(order.filled_qty, "4");

    store.applyOrderEvent(fill("order.filled", "6", "186.50", "10", "0"));
    order = store.orders.get("o1");
    assert.equal(order.status, "filled");
    assert.equal(order.is_open, false);
    assert.equal(order.average_fill_price, "186.70");
    assert.equal(order.remaining_qty, "0");
  });

  it("returns to the earlier status when a cancel is refused", () => {
    const store = new Store();
    submitted(store);
    store.applyOrderEvent(event("order.accepted", { order_id: "o1", broker_order_id: "b1" }));
    store.applyOrderEvent(event("order.cancel_requested", { order_id: "o1" }));
    assert.equal(store.orders.get("o1").status, "pending_cancel");
    store.applyOrderEvent(event("order.cancel_rejected", { order_id: "o1", reason: "too late" }));
    assert.equal(store.orders.get("o1").status, "accepted");
    assert.equal(store.orders.get("o1").reason, "too late");
  });

  it("goes back to a pending replace when a cancel asked during it is refused", () => {
    const store = new Store();
    submitted(store);
    store.applyOrderEvent(event("order.accepted", { order_id: "o1", broker_order_id: "b1" }));
    store.applyOrderEvent(event("order.amend_requested", { order_id: "o1", quantity: "5" }));
    store.applyOrderEvent(event("order.cancel_requested", { order_id: "o1" }));
    assert.equal(store.orders.get("o1").status, "pending_cancel");
    store.applyOrderEvent(event("order.cancel_rejected", { order_id: "o1", reason: "too late" }));
    assert.equal(store.orders.get("o1").status, "pending_replace");
    store.applyOrderEvent(event("order.cancel_rejected", { order_id: "o1", reason: "refused" }));
    assert.equal(store.orders.get("o1").status, "accepted");
  });

  it("returns to the earlier status when an amend is refused, and tells it from a refused cancel", () => {
    const store = new Store();
    submitted(store);
    store.applyOrderEvent(event("order.accepted", { order_id: "o1", broker_order_id: "b1" }));
    store.applyOrderEvent(event("order.amend_requested", { order_id: "o1", quantity: "5" }));
    assert.equal(store.orders.get("o1").status, "pending_replace");
    const changes = [];
    store.on("orders", (change) => changes.push(change));
    store.applyOrderEvent(event("order.replace_rejected", { order_id: "o1", reason: "price moved" }));
    const order = store.orders.get("o1");
    assert.equal(order.status, "accepted");
    assert.equal(order.qty, "10", "a refused amend keeps the order's terms");
    assert.equal(order.reason, "price moved");
    assert.deepEqual(changes.map((c) => c.message.type), ["order.replace_rejected"]);
    assert.equal(refusalNotice(changes[0].message, order), "Amend refused for AAPL o1: price moved");
  });

  it("keeps a cancel asked during an amend pending when the amend is refused", () => {
    const store = new Store();
    submitted(store);
    store.applyOrderEvent(event("order.accepted", { order_id: "o1", broker_order_id: "b1" }));
    store.applyOrderEvent(fill("order.partially_filled", "2", "187.00", "2", "8"));
    store.applyOrderEvent(event("order.amend_requested", { order_id: "o1", quantity: "5" }));
    store.applyOrderEvent(event("order.cancel_requested", { order_id: "o1" }));
    store.applyOrderEvent(event("order.replace_rejected", { order_id: "o1", reason: "price moved" }));
    assert.equal(store.orders.get("o1").status, "pending_cancel");
    store.applyOrderEvent(event("order.cancel_rejected", { order_id: "o1", reason: "too late" }));
    assert.equal(store.orders.get("o1").status, "partially_filled", "the amend is over, not pending");
  });

  it("says which request the broker refused, and nothing for other events", () => {
    const order = { symbol: "AAPL", order_id: "o1" };
    const refused = (type) => refusalNotice(event(type, { order_id: "o1", reason: "too late" }), order);
    assert.equal(refused("order.cancel_rejected"), "Cancel refused for AAPL o1: too late");
    assert.equal(refused("order.replace_rejected"), "Amend refused for AAPL o1: too late");
    assert.equal(refused("order.canceled"), null);
    assert.ok(USER_EVENTS.includes("order.replace_rejected"), "the stream must listen for it");
  });

  it("applies an amendment to the quantity, price and what remains", () => {
    const store = new Store();
    submitted(store);
    store.applyOrderEvent(event("order.accepted", { order_id: "o1", broker_order_id: "b1" }));
    store.applyOrderEvent(fill("order.partially_filled", "2", "187.00", "2", "8"));
    store.applyOrderEvent(event("order.amend_requested", { order_id: "o1", quantity: "5" }));
    store.applyOrderEvent(event("order.replaced", { order_id: "o1", quantity: "5", limit_price: "186.00", stop_price: null }));
    const order = store.orders.get("o1");
    assert.equal(order.status, "partially_filled");
    assert.equal(order.qty, "5");
    assert.equal(order.remaining_qty, "3");
    assert.equal(order.limit_price, "186.00");
  });

  it("shows why an order was rejected, and ignores events once it ended", () => {
    const store = new Store();
    submitted(store);
    store.applyOrderEvent(event("order.rejected", { order_id: "o1", code: "BROKER_UNAVAILABLE", reason: "down" }));
    store.applyOrderEvent(event("order.accepted", { order_id: "o1", broker_order_id: "b1" }));
    const order = store.orders.get("o1");
    assert.equal(order.status, "rejected");
    assert.equal(order.reason, "BROKER_UNAVAILABLE: down");
  });

  it("reports an event of an order it does not know, and a server view replaces older state", () => {
    const store = new Store();
    assert.equal(store.applyOrderEvent(event("order.accepted", { order_id: "nope" })), false);
    submitted(store);
    store.mergeOrders([{ ...store.orders.get("o1"), status: "canceled", updated_at: "2026-01-02T10:00:05Z" }]);
    assert.equal(store.orders.get("o1").status, "canceled");
    assert.equal(store.orders.get("o1").is_open, false);
  });
});

describe("Store positions and account", () => {
  it("values positions at the live mark and keeps cash and realized P&L from events", () => {
    const store = new Store();
    store.setAccount({ cash: "100000", realized_pnl: "0", unrealized_pnl: null, equity: null });
    store.applyPositionEvent(event("position.updated", {
      symbol: "AAPL", quantity: "5", average_cost: "187.22", cost_basis: "936.10",
      realized_pnl: "-1.00", fees: "1.00", cash: "99062.90", fill_id: "f1", order_id: "o1",
      filled_at: "2026-01-02T10:00:01Z",
    }));
    let account = store.liveAccount();
    assert.equal(account.cash.toString(), "99062.90");
    assert.equal(account.realized.toString(), "-1.00");
    assert.equal(account.equity, null, "no price yet: equity unknown, not wrong");

    store.setQuote({ symbol: "AAPL", bid: "187.30", ask: "187.32" });
    const live = store.livePosition(store.positions.get("AAPL"));
    assert.equal(live.marketValue.toString(), "936.55");
    assert.equal(live.unrealized.toString(), "0.45");
    account = store.liveAccount();
    assert.equal(account.unrealized.format(2), "0.45");
    assert.equal(account.equity.format(2), "99999.45");
  });
});
