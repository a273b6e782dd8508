// Positions and the account summary. Between position.updated events, market value and
// unrealized P&L are recomputed (exactly) from each live quote; without a fresh price they
// show a dash, as the server does.

import { money, plain, tone } from "./decimal.js";

export class Portfolio {
  constructor(store, { table, empty, summary }) {
    this.store = store;
    this.body = table.tBodies[0];
    this.empty = empty;
    this.summary = summary;
    this.scheduled = false;
    store.on("positions", () => this.schedule());
    store.on("account", () => this.schedule());
    store.on("quote", ({ quote }) => {
      if (store.positions.has(quote.symbol)) this.schedule();
    });
    setInterval(() => this.schedule(), 1000); // a price that went stale stops counting
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => {
      this.scheduled = false;
      this.render();
    });
  }

  render() {
    this.renderPositions();
    this.renderAccount();
  }

  renderPositions() {
    const positions = [...this.store.positions.values()].sort((a, b) => a.symbol.localeCompare(b.symbol));
    const rows = positions.map((position) => {
      const live = this.store.livePosition(position);
      const row = document.createElement("tr");
      row.dataset.symbol = position.symbol;
      const cells = [
        [position.symbol, ""],
        [plain(position.qty), "num qty"],
        [plain(position.average_cost), "num"],
        [live.mark ? live.mark.toString() : "—", "num mark"],
        [money(live.marketValue), "num"],
        [money(live.unrealized), `num unrealized ${tone(live.unrealized)}`],
        [money(position.realized_pnl), `num realized ${tone(position.realized_pnl)}`],
        [money(position.fees), "num"],
      ];
      for (const [text, className] of cells) {
        const cell = row.insertCell();
        cell.textContent = text;
        cell.className = className;
      }
      return row;
    });
    this.body.replaceChildren(...rows);
    this.empty.hidden = rows.length > 0;
  }

  renderAccount() {
    const account = this.store.liveAccount();
    const { cash, equity, unrealized, realized } = this.summary;
    cash.textContent = money(account && account.cash);
    equity.textContent = money(account && account.equity);
    unrealized.textContent = money(account && account.unrealized);
    unrealized.className = tone(account && account.unrealized);
    realized.textContent = money(account && account.realized);
    realized.className = tone(account && account.realized);
  }
}
