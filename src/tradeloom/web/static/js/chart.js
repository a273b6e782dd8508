// The candle chart of the selected symbol (lightweight-charts, built from npm into
// /static/vendor/). Candles load over REST; between loads each quote moves the forming bar,
// and when a quote falls in the next interval a new bar starts here and the candles are
// reloaded shortly after, so the bar that just closed is the server's.
//
// Without the library (the build step was not run) the panel says so and the rest of the
// dashboard works as usual.

import { api } from "./api.js";

const SECONDS = { "1m": 60, "5m": 300, "1h": 3600 };
const CANDLES = 300;
const RELOAD_AFTER_ROLL_MS = 1500;

export class CandleChart {
  constructor({ container, notice, title, last, intervals }) {
    this.container = container;
    this.notice = notice;
    this.title = title;
    this.lastLabel = last;
    this.intervals = intervals;
    this.symbol = null;
    this.interval = "1m";
    this.bar = null;
    this.loading = 0;
    this.reloadTimer = null;
    this.series = this.createSeries();
    for (const button of intervals.querySelectorAll("button[data-interval]")) {
      button.addEventListener("click", () => this.show(this.symbol, button.dataset.interval));
    }
  }

  createSeries() {
    const charts = window.LightweightCharts;
    if (!charts || !charts.createChart) {
      this.container.hidden = true;
      this.notice.hidden = false;
      this.notice.textContent =
        "The chart library is not installed, so there is no chart. " +
        "Build the assets (npm ci && python scripts/build_assets.py) and reload; " +
        "prices and trading work without it.";
      return null;
    }
    this.chart = charts.createChart(this.container, {
      autoSize: true,
      layout: { background: { color: "#ffffff" }, textColor: "#1f2933", fontSize: 12 },
      grid: { vertLines: { color: "#eef1f4" }, horzLines: { color: "#eef1f4" } },
      timeScale: {
        timeVisible: true,
        secondsVisible: false,
        borderColor: "#d5dae0",
        rightOffset: 4,
        barSpacing: 8,
      },
      rightPriceScale: { borderColor: "#d5dae0" },
    });
    return this.chart.addSeries(charts.CandlestickSeries, {
      upColor: "#1a7f4b",
      downColor: "#c0392b",
      borderVisible: false,
      wickUpColor: "#1a7f4b",
      wickDownColor: "#c0392b",
    });
  }

  async show(symbol, interval = this.interval) {
    if (!symbol) return;
    const changed = symbol !== this.symbol;
    this.symbol = symbol;
    this.interval = interval;
    this.title.textContent = symbol;
    if (changed) this.lastLabel.textContent = "";
    for (const button of this.intervals.querySelectorAll("button[data-interval]")) {
      button.setAttribute("aria-pressed", String(button.dataset.interval === interval));
    }
    await this.load();
  }

  async load() {
    clearTimeout(this.reloadTimer);
    const ticket = ++this.loading;
    const { symbol, interval } = this;
    let answer;
    try {
      answer = await api.candles(symbol, interval, CANDLES);
    } catch (error) {
      if (ticket === this.loading) this.say(`Candles could not be loaded: ${error.message}`);
      return;
    }
    if (ticket !== this.loading) return; // a newer symbol or interval was asked for meanwhile
    const bars = answer.candles.map(toBar);
    this.bar = bars.length ? { ...bars[bars.length - 1] } : null;
    this.say(bars.length ? "" : `No ${interval} candles for ${symbol} yet: they start with the next trades.`);
    if (this.series) this.series.setData(bars);
  }

  // Move the forming bar with a trade of the charted symbol (an update that carries `last`).
  onQuote(quote) {
    if (!quote || quote.symbol !== this.symbol || !quote.last) return;
    const price = Number(quote.last);
    if (!Number.isFinite(price)) return;
    this.lastLabel.textContent = quote.last;
    const seconds = SECONDS[this.interval];
    const at = Math.floor(Date.parse(quote.time) / 1000);
    if (!Number.isFinite(at)) return;
    const start = at - (at % seconds);
    if (!this.bar || start > this.bar.time) {
      this.bar = { time: start, open: price, high: price, low: price, close: price };
      clearTimeout(this.reloadTimer);
      this.reloadTimer = setTimeout(() => this.load(), RELOAD_AFTER_ROLL_MS);
      this.say("");
    } else if (start === this.bar.time) {
      this.bar.high = Math.max(this.bar.high, price);
      this.bar.low = Math.min(this.bar.low, price);
      this.bar.close = price;
    } else {
      return; // a quote of a bar already closed: the server has it
    }
    if (this.series) this.series.update({ ...this.bar });
  }

  say(text) {
    if (!this.series) return; // the missing-library notice stays
    this.notice.hidden = !text;
    this.notice.textContent = text;
  }
}

// Chart prices are numbers for drawing only; every amount shown as text stays exact.
function toBar(candle) {
  return {
    time: Math.floor(Date.parse(candle.start) / 1000),
    open: Number(candle.open),
    high: Number(candle.high),
    low: Number(candle.low),
    close: Number(candle.close),
  };
}
