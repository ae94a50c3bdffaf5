// The console's one way to the server: the public HTTP API, relative to the page's folder (so a
// reverse proxy may serve filekv under a sub-path). The login token is kept in sessionStorage:
// it lives as long as the tab, is never sent by the browser on its own (no cookie), and is
// shared with no other tab.

const TOKEN_KEY = "filekv.token";
// Where FastAPI says a field was (the first part of a validation error's loc): not worth saying.
const LOCATIONS = new Set(["body", "path", "query", "header"]);

export class ApiError extends Error {
  /**
   * status: the HTTP status, or null when no answer came; detail: the server's text; anonymous:
   * the request carried no token. A 401 means "this store needs a login" only when anonymous:
   * the token may have been dropped while a request that carried it was on its way.
   */
  constructor(status, detail, retryAfter = null, anonymous = false) {
    super(detail);
    this.status = status;
    this.detail = detail;
    this.retryAfter = retryAfter;
    this.anonymous = anonymous;
  }
}

/** The server's `detail`: a string, or FastAPI's list of validation errors made one line. */
export function detailText(body, status, statusText) {
  const detail = body && typeof body === "object" ? body.detail : undefined;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((item) => {
        const where = Array.isArray(item.loc) ? item.loc.filter((part) => !LOCATIONS.has(part)).join(".") : "";
        return where ? `${where}: ${item.msg}` : String(item.msg);
      })
      .join("; ");
  }
  return `${status} ${statusText || "error"}`.trim();
}

/**
 * A key as one URL path segment. Every "/" is escaped too, so no part of a key is ever read as a
 * path segment of its own. The exceptions: a key that is exactly "." or ".." cannot travel in a
 * browser's URL at all (the URL standard removes such segments, escaped or not).
 */
export function keySegment(key) {
  if (key === "." || key === "..") {
    throw new ApiError(null, `the key "${key}" cannot be sent in a URL by a browser (the URL standard drops it); use the API or the CLI for it`);
  }
  return encodeURIComponent(key);
}

export class Api {
  constructor(base = new URL(".", window.location.href)) {
    this.base = base;
    this.token = sessionStorage.getItem(TOKEN_KEY);
    this.onUnauthorized = () => {};
    this.onAnswer = () => {};
  }

  setToken(token) {
    this.token = token;
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  }

  /**
   * One request; the parsed JSON body (null for 204). Non-2xx answers raise ApiError with the
   * server's detail and Retry-After; a request that gets no answer raises ApiError(null, ...).
   */
  async request(method, path, { json, form, headers = {}, signal } = {}) {
    const init = { method, headers: { Accept: "application/json", ...headers }, signal, cache: "no-store" };
    if (this.token) init.headers.Authorization = `Bearer ${this.token}`;
    if (json !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(json);
    } else if (form !== undefined) {
      init.body = new URLSearchParams(form);
    }
    const sentToken = this.token;
    let response;
    try {
      response = await fetch(new URL(path, this.base), init);
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError(null, `no answer from the server (${error.message})`);
    }
    const text = await response.text();
    let body = null;
    if (text) {
      try {
        body = JSON.parse(text);
      } catch {
        body = { detail: text.slice(0, 300) };
      }
    }
    if (!response.ok) {
      const retry = response.headers.get("Retry-After");
      const error = new ApiError(response.status, detailText(body, response.status, response.statusText),
        retry === null ? null : Number(retry), !sentToken);
      if (response.status === 401 && sentToken && sentToken === this.token) this.onUnauthorized(error);
      // A 409 to a logged-in request: its transaction may be over (lease, admin): ask again.
      if (response.status === 409 && sentToken) this.onAnswer(method, path, sentToken, 409);
      throw error;
    }
    this.onAnswer(method, path, sentToken, response.status);
    return body;
  }

  // -- keys ------------------------------------------------------------------------------------

  listKeys({ prefix = "", value = null, after = null, limit = 100 }, signal) {
    const query = new URLSearchParams({ prefix, limit: String(limit) });
    if (value !== null) query.set("value", value);
    if (after !== null) query.set("after", after);
    return this.request("GET", `keys?${query}`, { signal });
  }

  getKey(key) {
    return this.request("GET", `keys/${keySegment(key)}`);
  }

  /**
   * expect: a revision (If-Match), 0 (If-None-Match: *, must not exist) or null (no check);
   * ttl: seconds the key lives, or null: it never expires (a write without ttl ends an expiry).
   */
  putKey(key, value, expect = null, ttl = null) {
    const json = ttl === null ? { value } : { value, ttl };
    return this.request("PUT", `keys/${keySegment(key)}`, { json, headers: conditions(expect) });
  }

  deleteKey(key, expect = null) {
    return this.request("DELETE", `keys/${keySegment(key)}`, { headers: conditions(expect) });
  }

  // -- transactions ----------------------------------------------------------------------------

  transactionState() {
    return this.request("GET", "transactions");
  }

  begin() {
    return this.request("POST", "transactions");
  }

  release() {
    return this.request("POST", "transactions/release");
  }

  rollback() {
    return this.request("POST", "transactions/rollback");
  }

  commit() {
    return this.request("POST", "transactions/commit");
  }

  breakLock() {
    return this.request("DELETE", "transactions");
  }

  // -- users -----------------------------------------------------------------------------------

  login(username, password) {
    return this.request("POST", "auth/token", { form: { username, password } });
  }

  logout() {
    return this.request("POST", "auth/logout");
  }

  me() {
    return this.request("GET", "auth/me");
  }

  register(username, password) {
    return this.request("POST", "auth/register", { json: { username, password } });
  }

  /** Whether registration is open (GET /auth/register: 200 {"open"} either way, no login). */
  async registrationOpen() {
    const answer = await this.request("GET", "auth/register");
    return answer.open === true;
  }

  // -- server ----------------------------------------------------------------------------------

  health() {
    return this.request("GET", "healthz");
  }

  stats() {
    return this.request("GET", "stats");
  }
}

function conditions(expect) {
  if (expect === null || expect === undefined) return {};
  return expect === 0 ? { "If-None-Match": "*" } : { "If-Match": `"${expect}"` };
}
