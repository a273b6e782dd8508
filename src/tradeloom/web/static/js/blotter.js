// The blotter: the user's open and recent orders, newest first, updated in place as the
// stream reports them. Cancel and amend are requests (202): the row shows pending_cancel or
// pending_replace until the outcome arrives. An amend may only lower the quantity or make a
// price less aggressive; the server says so when it refuses.

import { api } from "./api.js";
import { plain } from "./decimal.js";

const MAX_ROWS = 200;
const COLUMNS = ["time", "symbol", "side", "type", "qty", "filled", "limit", "stop", "avg", "tif", "status", "actions"];
const NUMERIC = new Set(["qty", "filled", "limit", "stop", "avg"]);
const REFUSED = new Map([["order.cancel_rejected", "Cancel"], ["order.replace_rejected", "Amend"]]);

// What to tell the user when the broker refused their cancel or amend (the stream's event
// says which); null for any other event.
export function refusalNotice(message, order) {
  const request = REFUSED.get(message.type);
  if (!request) return null;
  return `${request} refused for ${order.symbol} ${order.order_id}: ${message.data.reason}`;
}

export class Blotter {
  constructor(store, { table, empty, message, filter }) {
    this.store = store;
    this.body = table.tBodies[0];
    this.empty = empty;
    this.message = message;
    this.filter = "open";
    this.rows = new Map();
    this.editing = null;
    this.scheduled = false;
    for (const button of filter.querySelectorAll("button[data-filter]")) {
      button.addEventListener("click", () => {
        this.filter = button.dataset.filter;
        for (const b of filter.querySelectorAll("button")) b.setAttribute("aria-pressed", String(b === button));
        this.render();
      });
    }
    store.on("orders", (change) => {
      const refusal = change && change.message ? refusalNotice(change.message, change.order) : null;
      if (refusal) this.say(refusal, "error");
      this.schedule();
    });
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => {
      this.scheduled = false;
      this.render();
    });
  }

  visibleOrders() {
    return [...this.store.orders.values()]
      .filter((order) => this.filter === "all" || order.is_open)
      .sort((a, b) => (b.submitted_at || "").localeCompare(a.submitted_at || "") || b.order_id.localeCompare(a.order_id))
      .slice(0, MAX_ROWS);
  }

  render() {
    const orders = this.visibleOrders();
    const wanted = new Set(orders.map((o) => o.order_id));
    for (const [orderId, row] of this.rows) {
      if (!wanted.has(orderId)) {
        row.remove();
        this.rows.delete(orderId);
      }
    }
    orders.forEach((order, index) => {
      const row = this.rows.get(order.order_id) || this.createRow(order);
      this.fill(row, order);
      if (this.body.children[index] !== row) this.body.insertBefore(row, this.body.children[index] || null);
    });
    this.empty.hidden = orders.length > 0;
  }

  createRow(order) {
    const row = document.createElement("tr");
    row.dataset.orderId = order.order_id;
    for (const column of COLUMNS) {
      const cell = row.insertCell();
      cell.dataset.col = column;
      if (NUMERIC.has(column)) cell.className = "num";
    }
    this.rows.set(order.order_id, row);
    return row;
  }

  fill(row, order) {
    const cells = Object.fromEntries([...row.cells].map((cell) => [cell.dataset.col, cell]));
    set(cells.time, formatTime(order.submitted_at));
    cells.time.title = order.submitted_at || "";
    set(cells.symbol, order.symbol);
    set(cells.side, order.side);
    cells.side.className = `side ${order.side}`;
    set(cells.type, order.type.replace("_", " "));
    set(cells.qty, plain(order.qty));
    set(cells.filled, plain(order.filled_qty));
    set(cells.limit, plain(order.limit_price));
    set(cells.stop, plain(order.stop_price));
    set(cells.avg, plain(order.average_fill_price));
    set(cells.tif, order.time_in_force);
    set(cells.status, order.status.replace("_", " "));
    cells.status.className = `status ${order.status}`;
    cells.status.title = order.reason || "";
    row.dataset.status = order.status;
    if (order.reason && !order.is_open) {
      const why = document.createElement("small");
      why.textContent = order.reason;
      cells.status.append(why);
    }
    this.fillActions(cells.actions, order);
  }

  fillActions(cell, order) {
    const state = !order.is_open ? "closed" : this.editing === order.order_id ? "editing" : "open";
    if (cell.dataset.state === state) return; // keep the amend form (and its typing) as it is
    cell.dataset.state = state;
    cell.replaceChildren();
    if (state === "open") {
      cell.append(
        button("Amend", "amend", () => this.startAmend(order.order_id)),
        button("Cancel", "cancel", () => this.cancel(order)),
      );
    } else if (state === "editing") {
      cell.append(this.amendForm(order));
    }
  }

  amendForm(order) {
    const form = document.createElement("form");
    form.className = "amend";
    const inputs = { qty: input("qty", order.qty, "Qty") };
    if (order.type === "limit" || order.type === "stop_limit") inputs.limit_price = input("limit_price", order.limit_price, "Limit");
    if (order.type === "stop" || order.type === "stop_limit") inputs.stop_price = input("stop_price", order.stop_price, "Stop");
    form.append(...Object.values(inputs).map((i) => i.label));
    form.append(button("Save", "save", null, "submit"), button("Close", "close", () => this.stopAmend()));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const changes = {};
      for (const [name, { field }] of Object.entries(inputs)) {
        const value = field.value.trim();
        if (value && value !== String(order[name] ?? "")) changes[name] = value;
      }
      if (!Object.keys(changes).length) {
        this.say("Nothing to amend: change the quantity or a price.", "error");
        return;
      }
      try {
        await api.amendOrder(order.order_id, changes);
        this.say(`Amend requested for ${order.symbol} ${order.order_id}.`, "ok");
        this.stopAmend();
      } catch (error) {
        this.say(`Amend refused (${error.code}): ${error.describe()}`, "error");
      }
    });
    return form;
  }

  startAmend(orderId) {
    this.editing = orderId;
    this.render();
    const field = this.rows.get(orderId)?.querySelector("form.amend input");
    if (field) field.focus();
  }

  stopAmend() {
    this.editing = null;
    this.render();
  }

  async cancel(order) {
    try {
      await api.cancelOrder(order.order_id);
      this.say(`Cancel requested for ${order.symbol} ${order.order_id}.`, "ok");
    } catch (error) {
      this.say(`Cancel refused (${error.code}): ${error.describe()}`, "error");
    }
  }

  say(text, level) {
    this.message.textContent = text;
    this.message.className = `result ${level}`;
    this.message.hidden = false;
  }
}

function set(cell, text) {
  if (cell.textContent !== text) cell.textContent = text;
}

function button(text, action, onClick, type = "button") {
  const element = document.createElement("button");
  element.type = type;
  element.textContent = text;
  element.dataset.action = action;
  element.className = "small";
  if (onClick) element.addEventListener("click", onClick);
  return element;
}

function input(name, value, text) {
  const label = document.createElement("label");
  const field = document.createElement("input");
  field.name = name;
  field.value = value ?? "";
  field.inputMode = "decimal";
  field.autocomplete = "off";
  field.size = 7;
  label.append(text, " ", field);
  return { label, field };
}

function formatTime(iso) {
  const at = new Date(iso || "");
  return Number.isNaN(at.getTime()) ? "—" : at.toLocaleTimeString([], { hour12: false });
}
