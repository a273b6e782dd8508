// The watchlist: live bid, ask and last per symbol; a change flashes green (up) or red
// (down). The list is kept in this browser (localStorage); a click selects the symbol for
// the chart and the ticket.

import { Dec, plain } from "./decimal.js";

const STORAGE_KEY = "tradeloom.watchlist";
const DEFAULT_SYMBOLS = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "JPM"];
const FIELDS = ["bid", "ask", "last"];

export class Watchlist {
  constructor(store, { table, addForm, addSelect }, onSelect, onChange) {
    this.store = store;
    this.body = table.tBodies[0];
    this.addForm = addForm;
    this.addSelect = addSelect;
    this.onSelect = onSelect;
    this.onChange = onChange;
    this.rows = new Map();
    this.selected = null;
    this.symbols = [];
    store.on("quote", ({ quote, previous }) => this.showQuote(quote, previous));
    addForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this.add(addSelect.value);
    });
    setInterval(() => this.markStale(), 1000);
  }

  load() {
    let saved = null;
    try {
      saved = JSON.parse(localStorage.getItem(STORAGE_KEY) || "null");
    } catch {
      saved = null;
    }
    const known = (list) => (Array.isArray(list) ? list : []).filter((s) => this.store.instruments.has(s));
    this.symbols = known(saved).length ? known(saved) : known(DEFAULT_SYMBOLS);
    if (!this.symbols.length) this.symbols = [...this.store.instruments.keys()].slice(0, 8);
    this.render();
  }

  add(symbol) {
    if (!symbol || this.symbols.includes(symbol)) return;
    this.symbols.push(symbol);
    this.save();
    this.render();
    this.onChange();
  }

  remove(symbol) {
    this.symbols = this.symbols.filter((s) => s !== symbol);
    this.save();
    this.render();
    this.onChange();
  }

  save() {
    localStorage.setItem(STORAGE_KEY, JSON.stringify(this.symbols));
  }

  select(symbol) {
    this.selected = symbol;
    for (const [name, row] of this.rows) row.classList.toggle("selected", name === symbol);
  }

  render() {
    this.body.replaceChildren();
    this.rows.clear();
    for (const symbol of this.symbols) {
      const row = this.body.insertRow();
      row.dataset.symbol = symbol;
      row.tabIndex = 0;
      row.insertCell().textContent = symbol;
      for (const field of FIELDS) {
        const cell = row.insertCell();
        cell.className = `num ${field}`;
        cell.dataset.field = field;
      }
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "link remove";
      remove.title = `remove ${symbol}`;
      remove.textContent = "×";
      remove.addEventListener("click", (event) => {
        event.stopPropagation();
        this.remove(symbol);
      });
      row.insertCell().append(remove);
      row.addEventListener("click", () => this.onSelect(symbol));
      row.addEventListener("keydown", (event) => {
        if (event.key === "Enter") this.onSelect(symbol);
      });
      this.rows.set(symbol, row);
      const quote = this.store.freshQuote(symbol);
      if (quote) this.showQuote(quote, null);
      else row.classList.add("stale");
    }
    this.select(this.selected);
    const options = [...this.store.instruments.keys()].filter((s) => !this.symbols.includes(s));
    this.addSelect.replaceChildren(...options.map((s) => new Option(s, s)));
  }

  showQuote(quote, previous) {
    const row = this.rows.get(quote.symbol);
    if (!row) return;
    row.classList.remove("stale");
    for (const field of FIELDS) {
      const cell = row.querySelector(`[data-field="${field}"]`);
      const text = plain(quote[field]);
      if (cell.textContent === text) continue;
      cell.textContent = text;
      const before = Dec.parse(previous ? previous[field] : null);
      const now = Dec.parse(quote[field]);
      if (before && now) flash(cell, now.cmp(before) > 0 ? "up" : now.cmp(before) < 0 ? "down" : "");
    }
  }

  markStale() {
    for (const [symbol, row] of this.rows) {
      row.classList.toggle("stale", this.store.freshQuote(symbol) === null);
    }
  }
}

// Restart the cell's flash animation in the direction of the change.
function flash(cell, direction) {
  if (!direction) return;
  cell.classList.remove("flash-up", "flash-down");
  void cell.offsetWidth;
  cell.classList.add(`flash-${direction}`);
  cell.dataset.direction = direction;
}
