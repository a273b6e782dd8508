// The live stream (/api/stream, Server-Sent Events) through the browser's EventSource, which
// reconnects by itself and resumes with Last-Event-ID: the server replays the user's events
// missed meanwhile, or sends `reset` when it cannot (then the caller reloads over REST).
//
// A new symbol set needs a new connection; it starts with a `snapshot`, so nothing is lost.
// The old connection is closed only once the new one has sent its snapshot (make before
// break): no gap in the quotes, and the server never sees a symbol left and re-joined at once.

export const USER_EVENTS = [
  "order.submitted",
  "order.accepted",
  "order.partially_filled",
  "order.filled",
  "order.rejected",
  "order.canceled",
  "order.cancel_rejected",
  "order.expired",
  "order.replaced",
  "order.replace_rejected",
  "order.cancel_requested",
  "order.amend_requested",
  "position.updated",
];

const RETRY_AFTER_CLOSE_MS = 3000;

export class LiveStream {
  // handlers: snapshot(data), quote(quote), event(message), reset(), state(name), closed()
  constructor(handlers) {
    this.handlers = handlers;
    this.source = null;
    this.previous = null;
    this.key = "";
    this.retry = null;
  }

  open(symbols) {
    const key = [...new Set(symbols)].sort().join(",");
    if (this.source && key === this.key) return;
    clearTimeout(this.retry);
    if (this.previous) this.previous.close();
    this.previous = this.source;
    this.key = key;
    const source = new EventSource(`/api/stream?symbols=${encodeURIComponent(key)}`);
    this.source = source;
    if (!this.previous) this.handlers.state("connecting");
    source.onopen = () => this.handlers.state("live");
    source.onerror = () => {
      if (source !== this.source) return;
      if (source.readyState === EventSource.CLOSED) {
        // The server refused the connection (not a drop): the session may have ended.
        this.handlers.state("offline");
        this.source = null;
        this.retry = setTimeout(() => this.handlers.closed(), RETRY_AFTER_CLOSE_MS);
      } else {
        this.handlers.state("reconnecting");
      }
    };
    source.addEventListener("snapshot", (e) => {
      this.retirePrevious(source);
      this.handlers.snapshot(parse(e));
    });
    source.addEventListener("quote", (e) => this.handlers.quote(parse(e)));
    source.addEventListener("reset", () => this.handlers.reset());
    for (const type of USER_EVENTS) {
      source.addEventListener(type, (e) => this.handlers.event(parse(e)));
    }
  }

  // Open again with the last symbols (after the server closed the stream).
  reopen() {
    const key = this.key;
    this.key = "";
    this.open(key ? key.split(",") : []);
  }

  retirePrevious(source) {
    if (source !== this.source || !this.previous) return;
    this.previous.close();
    this.previous = null;
  }

  close() {
    clearTimeout(this.retry);
    for (const source of [this.source, this.previous]) if (source) source.close();
    this.source = null;
    this.previous = null;
  }
}

function parse(event) {
  try {
    return JSON.parse(event.data);
  } catch {
    return null;
  }
}
