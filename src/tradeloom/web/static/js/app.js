// The dashboard's entry point: the login page, then the trading views wired to one Store and
// one live stream. A 401 anywhere (the session expired or was ended) returns to the login page.

import { api, setCsrfToken, whenUnauthorized } from "./api.js";
import { Blotter } from "./blotter.js";
import { CandleChart } from "./chart.js";
import { Portfolio } from "./portfolio.js";
import { Store } from "./store.js";
import { LiveStream } from "./stream.js";
import { OrderTicket } from "./ticket.js";
import { Watchlist } from "./watchlist.js";

const RECENT_ORDERS = 100;
const $ = (selector) => document.querySelector(selector);

class Dashboard {
  constructor() {
    this.store = new Store();
    this.started = false;
    this.streamTimer = null;
    this.stream = new LiveStream({
      snapshot: (data) => this.onSnapshot(data),
      quote: (quote) => this.store.setQuote(quote),
      event: (message) => this.onUserEvent(message),
      reset: () => this.reloadOrSay(),
      state: (state) => this.showConnection(state),
      closed: () => this.onStreamClosed(),
    });
  }

  // Build the views once; `start` (after each login) loads the data.
  build() {
    const store = this.store;
    this.watchlist = new Watchlist(
      store,
      { table: $("#watchlist"), addForm: $("#watch-add"), addSelect: $("#watch-symbol") },
      (symbol) => this.select(symbol),
      () => this.followSymbols(),
    );
    this.chart = new CandleChart({
      container: $("#chart"),
      notice: $("#chart-notice"),
      title: $("#chart-symbol"),
      last: $("#chart-last"),
      intervals: $("#chart-intervals"),
    });
    store.on("quote", ({ update }) => this.chart.onQuote(update));
    this.ticket = new OrderTicket(store, $("#ticket"), (receipt, order) => {
      store.addPlacedOrder(receipt, order, new Date().toISOString());
    });
    $("#ticket-symbol").addEventListener("change", (e) => this.select(e.target.value));
    this.blotter = new Blotter(store, {
      table: $("#blotter"),
      empty: $("#blotter-empty"),
      message: $("#blotter-message"),
      filter: $("#blotter-filter"),
    });
    this.portfolio = new Portfolio(store, {
      table: $("#positions"),
      empty: $("#positions-empty"),
      summary: {
        cash: $("#account-cash"),
        equity: $("#account-equity"),
        unrealized: $("#account-unrealized"),
        realized: $("#account-realized"),
      },
    });
    store.on("positions", () => this.followSymbols());
  }

  async start(user) {
    setCsrfToken(user.csrf_token);
    $("#user-name").textContent = user.username;
    showView("app");
    if (!this.started) {
      this.build();
      this.started = true;
    }
    const { symbols } = await api.symbols();
    this.store.setInstruments(symbols);
    this.ticket.setSymbols(symbols.map((s) => s.symbol));
    this.watchlist.load();
    await this.reload();
    this.select(this.watchlist.symbols[0] || symbols[0].symbol);
    this.followSymbols(true);
  }

  select(symbol) {
    this.selected = symbol;
    this.watchlist.select(symbol);
    this.ticket.setSymbol(symbol);
    this.chart.show(symbol);
    this.followSymbols();
  }

  // Stream the watchlist, the selected symbol and every held symbol (for live P&L).
  followSymbols(now = false) {
    if (!this.started || !this.store.instruments.size) return;
    clearTimeout(this.streamTimer);
    const open = () => {
      const symbols = [...this.watchlist.symbols, ...this.store.heldSymbols()];
      if (this.selected) symbols.push(this.selected);
      this.stream.open(symbols);
    };
    if (now) open();
    else this.streamTimer = setTimeout(open, 250);
  }

  onSnapshot(data) {
    if (!data) return;
    this.store.setQuotes(data.quotes);
    if (data.positions) this.store.replacePositions(data.positions);
    if (data.account) this.store.setAccount(data.account);
    if (data.orders) {
      const closed = this.store.mergeOrders(data.orders, { openOnly: true });
      if (closed.length) this.reloadOrSay(() => this.loadOrders());
    }
  }

  onUserEvent(message) {
    if (!message) return;
    if (message.type === "position.updated") {
      this.store.applyPositionEvent(message);
      return;
    }
    if (!this.store.applyOrderEvent(message)) this.fetchOrder(message.data.order_id);
  }

  async fetchOrder(orderId) {
    try {
      this.store.mergeOrders([await api.order(orderId)]);
    } catch {
      await this.reloadOrSay(() => this.loadOrders()); // not in the read model yet
    }
  }

  // Orders, positions and account from REST (at start, and after the stream's `reset`).
  async reload() {
    const [positions, account] = await Promise.all([api.positions(), api.account(), this.loadOrders()]);
    this.store.replacePositions(positions.positions);
    this.store.setAccount(account);
  }

  // After the stream's `reset` (or a missed order): reload, and say so if that fails.
  async reloadOrSay(load = () => this.reload()) {
    try {
      await load();
    } catch (error) {
      this.blotter.say(`Could not reload your orders and positions: ${error.message}`, "error");
    }
  }

  async loadOrders() {
    const [open, recent] = await Promise.all([
      api.orders("open", RECENT_ORDERS),
      api.orders("all", RECENT_ORDERS),
    ]);
    this.store.mergeOrders(recent.items);
    this.store.mergeOrders(open.items);
  }

  showConnection(state) {
    const badge = $("#connection");
    badge.dataset.state = state;
    badge.textContent = state;
  }

  async onStreamClosed() {
    try {
      await api.me();
      this.stream.reopen();
    } catch (error) {
      if (error.status === 401) this.signedOut();
      else this.stream.reopen();
    }
  }

  signedOut() {
    this.stream.close();
    this.store.forgetUser();
    setCsrfToken(null);
    showView("login");
  }
}

function showView(name) {
  $("#login-view").hidden = name !== "login";
  $("#app-view").hidden = name !== "app";
  if (name === "login") $("#login-username").focus();
}

function showLoginError(text) {
  showView("login");
  $("#login-error").textContent = text;
  $("#login-error").hidden = false;
}

async function main() {
  const dashboard = new Dashboard();
  whenUnauthorized(() => dashboard.signedOut());
  $("#login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("#login-error").hidden = true;
    $("#login-submit").disabled = true;
    try {
      await api.login($("#login-username").value, $("#login-password").value);
      $("#login-password").value = "";
      await dashboard.start(await api.me());
    } catch (failure) {
      dashboard.stream.close();
      showLoginError(failure.status === 401 ? "Wrong username or password." : failure.message);
    } finally {
      $("#login-submit").disabled = false;
    }
  });
  $("#logout").addEventListener("click", async () => {
    try {
      await api.logout();
    } finally {
      dashboard.signedOut();
    }
  });
  try {
    await dashboard.start(await api.me());
  } catch (failure) {
    dashboard.stream.close();
    if (failure.status === 401) showView("login");
    else showLoginError(failure.message);
  }
}

main();
