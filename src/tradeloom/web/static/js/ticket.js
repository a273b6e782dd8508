// The order ticket. Hints (lot and tick grid, notional, a limit that crosses the market) are
// advice only: the order is sent as typed and the server's answer is the truth, shown in full
// (a risk rejection names its rule).

import { api } from "./api.js";
import { Dec, money } from "./decimal.js";

const NEEDS_LIMIT = new Set(["limit", "stop_limit"]);
const NEEDS_STOP = new Set(["stop", "stop_limit"]);

export class OrderTicket {
  constructor(store, form, onPlaced) {
    this.store = store;
    this.form = form;
    this.onPlaced = onPlaced;
    this.el = {
      symbol: form.querySelector("#ticket-symbol"),
      qty: form.querySelector("#ticket-qty"),
      type: form.querySelector("#ticket-type"),
      limit: form.querySelector("#ticket-limit"),
      stop: form.querySelector("#ticket-stop"),
      tif: form.querySelector("#ticket-tif"),
      hints: form.querySelector("#ticket-hints"),
      submit: form.querySelector("#ticket-submit"),
      result: form.querySelector("#ticket-result"),
    };
    form.addEventListener("input", () => this.refresh());
    form.addEventListener("change", () => this.refresh());
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    store.on("quote", ({ quote }) => {
      if (quote.symbol === this.el.symbol.value) this.refresh();
    });
  }

  setSymbols(symbols) {
    this.el.symbol.replaceChildren(...symbols.map((s) => new Option(s, s)));
  }

  setSymbol(symbol) {
    this.el.symbol.value = symbol;
    this.refresh();
  }

  get side() {
    return this.form.querySelector('input[name="side"]:checked').value;
  }

  // The request exactly as typed (blank fields left out).
  request() {
    const type = this.el.type.value;
    const order = {
      symbol: this.el.symbol.value,
      side: this.side,
      qty: this.el.qty.value.trim(),
      type,
      time_in_force: this.el.tif.value,
    };
    if (NEEDS_LIMIT.has(type) && this.el.limit.value.trim()) order.limit_price = this.el.limit.value.trim();
    if (NEEDS_STOP.has(type) && this.el.stop.value.trim()) order.stop_price = this.el.stop.value.trim();
    return order;
  }

  refresh() {
    const type = this.el.type.value;
    for (const [name, needed] of [["limit", NEEDS_LIMIT.has(type)], ["stop", NEEDS_STOP.has(type)]]) {
      const label = this.form.querySelector(`label[data-for="${name}"]`);
      label.hidden = !needed;
      this.el[name].disabled = !needed;
    }
    const order = this.request();
    this.el.submit.textContent = `${order.side === "buy" ? "Buy" : "Sell"} ${order.qty || "…"} ${order.symbol}`;
    this.el.submit.className = `primary ${order.side}`;
    this.el.hints.replaceChildren(...this.hints(order).map(([text, level]) => hintItem(text, level)));
  }

  hints(order) {
    const instrument = this.store.instruments.get(order.symbol);
    if (!instrument) return [];
    const quote = this.store.freshQuote(order.symbol);
    const hints = [[
      `Lot ${instrument.lot_size} · tick ${instrument.tick_size}` +
        (quote ? ` · bid ${quote.bid ?? "—"} / ask ${quote.ask ?? "—"}` : " · no fresh price"),
      "info",
    ]];
    const qty = Dec.parse(order.qty);
    if (!qty || qty.sign() <= 0) hints.push(["Quantity must be a positive number.", "warn"]);
    else if (!qty.isMultipleOf(Dec.parse(instrument.lot_size))) {
      hints.push([`Quantity is not a multiple of the lot size ${instrument.lot_size}.`, "warn"]);
    }
    const tick = Dec.parse(instrument.tick_size);
    for (const [field, label] of [["limit_price", "Limit"], ["stop_price", "Stop"]]) {
      const wanted = order.type.includes(field === "limit_price" ? "limit" : "stop");
      if (!wanted) continue;
      const price = Dec.parse(order[field]);
      if (!price || price.sign() <= 0) hints.push([`${label} price is required.`, "warn"]);
      else if (!price.isMultipleOf(tick)) hints.push([`${label} price is not on the ${instrument.tick_size} tick grid.`, "warn"]);
    }
    hints.push(...this.marketHints(order, quote));
    const price = Dec.parse(order.limit_price) || Dec.parse(order.stop_price) ||
      Dec.parse(quote && (order.side === "buy" ? quote.ask : quote.bid));
    if (qty && price && qty.sign() > 0) hints.push([`Notional ≈ ${money(qty.mul(price))}`, "info"]);
    return hints;
  }

  marketHints(order, quote) {
    if (order.type === "market" && order.time_in_force === "gtc") {
      return [["A market order takes day, IOC or FOK, not good till canceled.", "warn"]];
    }
    if (!quote) return [];
    const ask = Dec.parse(quote.ask);
    const bid = Dec.parse(quote.bid);
    const limit = Dec.parse(order.limit_price);
    if (order.type === "market") return [["Fills at the market price.", "info"]];
    if (order.type === "limit" && limit) {
      if (order.side === "buy" && ask && limit.cmp(ask) >= 0) return [["The limit reaches the ask: likely fills at once.", "info"]];
      if (order.side === "sell" && bid && limit.cmp(bid) <= 0) return [["The limit reaches the bid: likely fills at once.", "info"]];
      return [["Rests on the book until the market reaches the limit.", "info"]];
    }
    const stop = Dec.parse(order.stop_price);
    const last = Dec.parse(quote.last) || (order.side === "buy" ? ask : bid);
    if (stop && last) {
      const reached = order.side === "buy" ? last.cmp(stop) >= 0 : last.cmp(stop) <= 0;
      if (reached) return [["The market is already through the stop: it triggers at once.", "info"]];
      return [["Waits until the market reaches the stop.", "info"]];
    }
    return [];
  }

  async submit() {
    const order = this.request();
    this.el.submit.disabled = true;
    this.show("Sending…", "pending");
    try {
      const receipt = await api.placeOrder(order);
      this.show(
        `Order received (${receipt.status}): ${order.side} ${order.qty} ${order.symbol} ${order.type}` +
          ` · id ${receipt.order_id}`,
        "ok",
      );
      this.el.result.dataset.orderId = receipt.order_id;
      this.onPlaced(receipt, order);
    } catch (error) {
      this.showError(error);
    } finally {
      this.el.submit.disabled = false;
    }
  }

  showError(error) {
    const heading = error.code && error.code.startsWith("risk.")
      ? "Rejected by risk check"
      : error.code === "validation_failed"
        ? "Invalid order"
        : error.status === 429
          ? "Too many requests"
          : "Order not placed";
    this.el.result.replaceChildren();
    const title = document.createElement("strong");
    title.textContent = heading;
    const code = document.createElement("code");
    code.textContent = error.code;
    const message = document.createElement("p");
    message.textContent = error.describe ? error.describe() : error.message;
    this.el.result.append(title, " ", code, message);
    this.el.result.className = "result error";
    this.el.result.dataset.code = error.code || "";
    delete this.el.result.dataset.orderId;
    this.el.result.hidden = false;
  }

  show(text, level) {
    this.el.result.textContent = text;
    this.el.result.className = `result ${level}`;
    delete this.el.result.dataset.code;
    delete this.el.result.dataset.orderId;
    this.el.result.hidden = false;
  }
}

function hintItem(text, level) {
  const item = document.createElement("li");
  item.className = level;
  item.textContent = text;
  return item;
}
