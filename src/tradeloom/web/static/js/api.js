// The REST API: JSON in and out, the session cookie sent by the browser, the CSRF token
// echoed on every state-changing request, and the error model turned into an ApiError.

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }

  // One line for people, with the machine-readable code and any offending fields.
  describe() {
    const fields = Array.isArray(this.details)
      ? this.details.map((d) => `${d.field}: ${d.message}`).join("; ")
      : "";
    return fields ? `${this.message} (${fields})` : this.message;
  }
}

const UNSAFE = new Set(["POST", "PATCH", "PUT", "DELETE"]);
let csrfToken = null;
let onUnauthorized = () => {};

export function setCsrfToken(token) {
  csrfToken = token || null;
}

// Called once for any 401 after login: the session ended (expired, logged out elsewhere).
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

function csrfFromCookie() {
  const found = document.cookie.split("; ").find((part) => part.startsWith("tl_csrf="));
  return found ? decodeURIComponent(found.slice("tl_csrf=".length)) : null;
}

export async function request(method, path, body, { quietUnauthorized = false } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (UNSAFE.has(method)) {
    const token = csrfToken || csrfFromCookie();
    if (token) headers["X-CSRF-Token"] = token;
  }
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    throw new ApiError(0, "network_error", "the server cannot be reached; retry in a moment");
  }
  const payload = response.status === 204 ? null : await response.json().catch(() => null);
  if (response.ok) return payload;
  const error = payload && payload.error;
  const failure = error
    ? new ApiError(response.status, error.code, error.message, error.details)
    : new ApiError(response.status, `http_${response.status}`, response.statusText || "request failed");
  if (response.status === 401 && !quietUnauthorized) onUnauthorized(failure);
  throw failure;
}

export const api = {
  login: (username, password) =>
    request("POST", "/api/auth/login", { username, password }, { quietUnauthorized: true }),
  logout: () => request("POST", "/api/auth/logout", undefined, { quietUnauthorized: true }),
  me: () => request("GET", "/api/auth/me", undefined, { quietUnauthorized: true }),
  symbols: () => request("GET", "/api/market/symbols"),
  candles: (symbol, interval, limit) =>
    request(
      "GET",
      `/api/market/candles/${encodeURIComponent(symbol)}?interval=${interval}&limit=${limit}`,
    ),
  placeOrder: (order) => request("POST", "/api/orders", order),
  order: (orderId) => request("GET", `/api/orders/${encodeURIComponent(orderId)}`),
  orders: (status, limit) => request("GET", `/api/orders?status=${status}&limit=${limit}`),
  cancelOrder: (orderId) => request("DELETE", `/api/orders/${encodeURIComponent(orderId)}`),
  amendOrder: (orderId, changes) =>
    request("PATCH", `/api/orders/${encodeURIComponent(orderId)}`, changes),
  positions: () => request("GET", "/api/positions"),
  account: () => request("GET", "/api/account"),
};
