// What the dashboard knows: instruments, quotes, the user's orders, positions and account.
//
// Filled from REST and the stream's snapshot, then kept current by the stream's events.
// Server data is the truth: a REST answer or snapshot replaces what events built, and an event
// that is already reflected (a fill whose cumulative quantity is not beyond the order's)
// changes nothing. Views subscribe to topics ("quote", "orders", "positions", "account").

import { Dec } from "./decimal.js";

export const TERMINAL = new Set(["filled", "canceled", "rejected", "expired"]);
const STALE_AFTER_MS = 5000; // the server's last-price TTL: an older price is no price

export class Store {
  constructor() {
    this.instruments = new Map();
    this.quotes = new Map(); // symbol -> {quote, receivedAt}
    this.orders = new Map();
    this.positions = new Map();
    this.account = null;
    this.listeners = new Map();
  }

  on(topic, listener) {
    if (!this.listeners.has(topic)) this.listeners.set(topic, []);
    this.listeners.get(topic).push(listener);
  }

  emit(topic, detail) {
    for (const listener of this.listeners.get(topic) || []) listener(detail);
  }

  // After a logout: nothing of the previous user stays on the page.
  forgetUser() {
    this.orders.clear();
    this.positions.clear();
    this.account = null;
    this.emit("orders");
    this.emit("positions");
    this.emit("account");
  }

  setInstruments(symbols) {
    this.instruments = new Map(symbols.map((item) => [item.symbol, item]));
  }

  // -- quotes -------------------------------------------------------------------------------

  // A feed update may carry only some fields (a quote has bid and ask, a trade has last):
  // the held quote keeps the others. Listeners get the merged quote and the update itself.
  setQuote(update) {
    if (!update || !update.symbol) return;
    const held = this.quotes.get(update.symbol);
    const previous = held ? held.quote : null;
    const quote = { ...(previous || {}) };
    for (const [field, value] of Object.entries(update)) {
      if (value !== null && value !== undefined) quote[field] = value;
    }
    this.quotes.set(update.symbol, { quote, receivedAt: Date.now() });
    this.emit("quote", { quote, update, previous });
  }

  setQuotes(quotes) {
    for (const [symbol, quote] of Object.entries(quotes || {})) {
      if (quote) this.setQuote(quote);
      else this.quotes.delete(symbol);
    }
  }

  // The quote of `symbol` if it is fresh (younger than the server's 5 s TTL), else null.
  freshQuote(symbol) {
    const held = this.quotes.get(symbol);
    if (!held || Date.now() - held.receivedAt > STALE_AFTER_MS) return null;
    return held.quote;
  }

  // What positions are valued at, as on the server: the mid of bid and ask when both are
  // quoted, else the last trade; null without a fresh quote.
  markPrice(symbol) {
    const quote = this.freshQuote(symbol);
    if (!quote) return null;
    const bid = Dec.parse(quote.bid);
    const ask = Dec.parse(quote.ask);
    if (bid && ask && bid.sign() > 0 && ask.sign() > 0) {
      return bid.add(ask).mul(Dec.parse("0.5")).trimmed(Math.max(bid.scale, ask.scale));
    }
    const last = Dec.parse(quote.last);
    return last && last.sign() > 0 ? last : null;
  }

  // -- orders -------------------------------------------------------------------------------

  // Replace what events built with the server's view of these orders; `openOnly` lists are
  // complete for open orders, so an open order they lack has closed since: it is reported
  // in the returned list for the caller to fetch.
  mergeOrders(views, { openOnly = false } = {}) {
    const seen = new Set();
    for (const view of views) {
      seen.add(view.order_id);
      const held = this.orders.get(view.order_id);
      if (!held || !isNewer(held.updated_at, view.updated_at)) {
        this.orders.set(view.order_id, { ...view, is_open: !TERMINAL.has(view.status) });
      }
    }
    const missing = openOnly
      ? [...this.orders.values()].filter((o) => o.is_open && !seen.has(o.order_id)).map((o) => o.order_id)
      : [];
    this.emit("orders");
    return missing;
  }

  // The order a just-answered POST created, until its events arrive. `now` (this browser's
  // clock) only sorts it; with no updated_at, any server view of it replaces it.
  addPlacedOrder(receipt, request, now) {
    if (this.orders.has(receipt.order_id)) return;
    this.orders.set(receipt.order_id, {
      order_id: receipt.order_id,
      client_order_id: receipt.client_order_id,
      symbol: request.symbol,
      side: request.side,
      type: request.type,
      time_in_force: request.time_in_force,
      qty: request.qty,
      filled_qty: "0",
      remaining_qty: request.qty,
      average_fill_price: null,
      limit_price: request.limit_price ?? null,
      stop_price: request.stop_price ?? null,
      status: receipt.status,
      is_open: !TERMINAL.has(receipt.status),
      reason: null,
      submitted_at: now,
      updated_at: null,
    });
    this.emit("orders");
  }

  // Apply one order event of the stream; returns false when the order is unknown here (the
  // caller fetches it).
  applyOrderEvent(message) {
    const data = message.data || {};
    if (message.type === "order.submitted") {
      if (!this.orders.has(data.order_id)) this.orders.set(data.order_id, submittedOrder(message));
      this.emit("orders");
      return true;
    }
    const order = this.orders.get(data.order_id);
    if (!order) return false;
    const changed = applyToOrder(order, message);
    if (changed) {
      order.updated_at = message.occurred_at;
      order.is_open = !TERMINAL.has(order.status);
      this.emit("orders", { order, message });
    }
    return true;
  }

  // -- positions and account -----------------------------------------------------------------

  replacePositions(positions) {
    this.positions = new Map(positions.map((p) => [p.symbol, { ...p }]));
    this.emit("positions");
  }

  setAccount(account) {
    this.account = account ? { ...account } : null;
    this.emit("account");
  }

  applyPositionEvent(message) {
    const data = message.data || {};
    const held = this.positions.get(data.symbol);
    const before = Dec.parse(held ? held.realized_pnl : "0") || Dec.zero();
    this.positions.set(data.symbol, {
      ...(held || {}),
      account_id: message.account_id,
      symbol: data.symbol,
      qty: data.quantity,
      average_cost: data.average_cost,
      cost_basis: data.cost_basis,
      realized_pnl: data.realized_pnl,
      fees: data.fees,
    });
    if (this.account) {
      const realized = Dec.parse(this.account.realized_pnl) || Dec.zero();
      const after = Dec.parse(data.realized_pnl) || Dec.zero();
      this.account.cash = data.cash;
      this.account.realized_pnl = realized.add(after.sub(before)).toString();
    }
    this.emit("positions");
    this.emit("account");
  }

  // A position valued at the live mark: market value and unrealized P&L are null without one.
  livePosition(position) {
    const qty = Dec.parse(position.qty) || Dec.zero();
    const mark = this.markPrice(position.symbol);
    if (qty.sign() === 0) {
      return { position, mark, marketValue: Dec.zero(), unrealized: Dec.zero() };
    }
    if (!mark) return { position, mark: null, marketValue: null, unrealized: null };
    const marketValue = qty.mul(mark);
    const basis = Dec.parse(position.cost_basis);
    const average = Dec.parse(position.average_cost) || Dec.zero();
    const unrealized = basis ? marketValue.sub(basis) : mark.sub(average).mul(qty);
    return { position, mark, marketValue, unrealized };
  }

  // Cash, equity and P&L with every position at its live price; equity and unrealized are
  // null while any open position has no fresh price (as the server answers).
  liveAccount() {
    if (!this.account) return null;
    const cash = Dec.parse(this.account.cash);
    let marketValue = Dec.zero();
    let unrealized = Dec.zero();
    let priced = true;
    for (const position of this.positions.values()) {
      const live = this.livePosition(position);
      if (live.marketValue === null) {
        priced = false;
        continue;
      }
      marketValue = marketValue.add(live.marketValue);
      unrealized = unrealized.add(live.unrealized);
    }
    return {
      cash,
      realized: Dec.parse(this.account.realized_pnl),
      unrealized: priced ? unrealized : null,
      equity: priced && cash ? cash.add(marketValue) : null,
    };
  }

  // Symbols the user holds (they are streamed so that P&L stays live).
  heldSymbols() {
    return [...this.positions.values()]
      .filter((p) => (Dec.parse(p.qty) || Dec.zero()).sign() !== 0)
      .map((p) => p.symbol);
  }
}

function isNewer(held, incoming) {
  const a = Date.parse(held || "");
  const b = Date.parse(incoming || "");
  return Number.isFinite(a) && Number.isFinite(b) && a > b;
}

function submittedOrder(message) {
  const d = message.data;
  return {
    order_id: d.order_id,
    account_id: message.account_id,
    client_order_id: d.client_order_id,
    symbol: d.symbol,
    side: d.side,
    type: d.order_type,
    time_in_force: d.time_in_force,
    qty: d.quantity,
    filled_qty: "0",
    remaining_qty: d.quantity,
    average_fill_price: null,
    limit_price: d.limit_price ?? null,
    stop_price: d.stop_price ?? null,
    status: "pending_new",
    is_open: true,
    reason: null,
    correlation_id: message.correlation_id,
    submitted_at: message.occurred_at,
    updated_at: message.occurred_at,
  };
}

// Where an acknowledged order with no request pending stands, by its fills.
function restingStatus(order) {
  const filled = (Dec.parse(order.filled_qty) || Dec.zero()).sign() > 0;
  return filled ? "partially_filled" : "accepted";
}

// Back to the status the order had before a refused cancel or replace request, as the domain's
// Order.refuse_request does: a cancel asked while a replace was pending goes back to that
// pending replace, which returns to the resting status in its turn.
function refuseRequest(order) {
  const back = order.status_before_request || restingStatus(order);
  order.status = back;
  if (back === "pending_replace") order.status_before_request = restingStatus(order);
  else delete order.status_before_request;
}

// A refused amend, as the domain's Order.refuse_replace does: a pending replace goes back like
// any refused request; a cancel asked during the replace stays pending, and its own refusal
// will return the order to the resting status. With no replace pending, the status stays.
function refuseReplace(order) {
  if (order.status === "pending_replace") refuseRequest(order);
  else if (order.status === "pending_cancel" && order.status_before_request === "pending_replace") {
    order.status_before_request = restingStatus(order);
  }
}

function applyFill(order, message) {
  const d = message.data;
  const cumulative = Dec.parse(d.cumulative_quantity);
  const filled = Dec.parse(order.filled_qty) || Dec.zero();
  if (!cumulative || cumulative.cmp(filled) <= 0) return false; // already counted
  const average = Dec.parse(order.average_fill_price) || Dec.zero();
  const price = Dec.parse(d.price);
  const notional = average.mul(filled).add(price.mul(Dec.parse(d.quantity)));
  const mean = notional.div(cumulative, 6);
  order.filled_qty = d.cumulative_quantity;
  order.remaining_qty = d.leaves_quantity;
  order.average_fill_price = mean ? mean.trimmed(price.scale).toString() : order.average_fill_price;
  order.last_fill_at = d.filled_at || message.occurred_at;
  if (TERMINAL.has(order.status)) {
    return true; // a late report of an order already ended: its quantities only
  } else if (message.type === "order.filled") {
    order.status = "filled";
    order.closed_at = order.last_fill_at;
  } else if (order.status === "pending_cancel" || order.status === "pending_replace") {
    order.status_before_request = "partially_filled";
  } else {
    order.status = "partially_filled";
  }
  return true;
}

function applyToOrder(order, message) {
  const d = message.data;
  const type = message.type;
  if (type === "order.partially_filled" || type === "order.filled") return applyFill(order, message);
  if (TERMINAL.has(order.status)) return false;
  switch (type) {
    case "order.accepted":
      if (order.status !== "pending_new") return false;
      order.status = "accepted";
      order.accepted_at = message.occurred_at;
      return true;
    case "order.rejected":
      order.status = "rejected";
      order.reason = [d.code, d.reason].filter(Boolean).join(": ");
      return true;
    case "order.canceled":
    case "order.expired":
      order.status = type === "order.canceled" ? "canceled" : "expired";
      order.reason = d.reason || order.reason;
      order.closed_at = message.occurred_at;
      return true;
    case "order.cancel_requested":
    case "order.amend_requested":
      if (!order.status.startsWith("pending_") || order.status === "pending_replace") {
        order.status_before_request = order.status;
      }
      order.status = type === "order.cancel_requested" ? "pending_cancel" : "pending_replace";
      return true;
    case "order.cancel_rejected":
      refuseRequest(order);
      order.reason = d.reason || order.reason;
      return true;
    case "order.replace_rejected":
      refuseReplace(order);
      order.reason = d.reason || order.reason;
      return true;
    case "order.replaced": {
      order.qty = d.quantity;
      if ("limit_price" in d) order.limit_price = d.limit_price;
      if ("stop_price" in d) order.stop_price = d.stop_price;
      const remaining = Dec.parse(d.quantity).sub(Dec.parse(order.filled_qty) || Dec.zero());
      order.remaining_qty = remaining.toString();
      order.status = restingStatus(order); // new terms end any request pending
      delete order.status_before_request;
      return true;
    }
    default:
      return false;
  }
}
