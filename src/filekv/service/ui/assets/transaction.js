// The transaction lock: the bar with the holder's depth, lease and buttons, the banner shown
// while another client holds the lock, and the admin's "break the lock".
//
// Who asks GET /transactions, and when: a client that does not hold the lock asks every
// POLL_MS, so the banner appears and goes away by itself. The holder does not poll: each of its
// requests renews its lease, so a polling console would keep a forgotten transaction alive for
// as long as the tab stays open. It counts the lease down itself instead and asks again only
// after its own requests (which renewed it) and when the countdown reaches zero.

import { $, el, printable } from "./dom.js";

const POLL_MS = 2000;
const SYNC_DELAY_MS = 300;
const STAGED_KEY = "filekv.staged";

export class Transactions {
  constructor(app) {
    this.app = app;
    this.api = app.api;
    this.state = { active: false, mine: false, depth: 0, expires_in: null };
    this.measuredAt = performance.now();
    this.known = false; // no answer yet (or the last one failed)
    this.error = null;
    this.syncTimer = null;
    this.asking = false;
    this.lastPoll = 0;
    // What this tab staged, one list per level: the server does not list staged writes.
    this.levels = loadLevels();

    this.bar = $("#tx-state");
    this.lease = $("#tx-lease");
    this.stagedList = $("#tx-staged");
    this.banner = $("#lock-banner");
    this.bannerText = $("#lock-text");
    this.bannerRetry = $("#lock-retry");
    this.buttons = {
      begin: $("#tx-begin"),
      release: $("#tx-release"),
      rollback: $("#tx-rollback"),
      commit: $("#tx-commit"),
      breakLock: $("#break-lock"),
    };
    this.buttons.begin.addEventListener("click", () => this.act("begin"));
    this.buttons.release.addEventListener("click", () => this.act("release"));
    this.buttons.rollback.addEventListener("click", () => this.act("rollback"));
    this.buttons.commit.addEventListener("click", () => this.act("commit"));
    this.buttons.breakLock.addEventListener("click", () => this.breakLock());
    this.api.onAnswer = (method, path, token, status) => this.afterAnswer(path, token, status);
  }

  get mine() {
    return this.state.active && this.state.mine;
  }

  get lockedByOther() {
    return this.state.active && !this.state.mine;
  }

  /** Seconds left on the lease, counted down since it was measured. */
  secondsLeft() {
    if (this.state.expires_in === null) return null;
    return Math.max(0, this.state.expires_in - (performance.now() - this.measuredAt) / 1000);
  }

  start() {
    this.refresh();
    setInterval(() => this.tick(), 250);
  }

  tick() {
    const now = performance.now();
    if (this.mine) {
      if (this.secondsLeft() === 0 && now - this.lastPoll > POLL_MS) this.refresh();
    } else if (now - this.lastPoll >= POLL_MS) {
      this.refresh();
    }
    this.renderClock();
  }

  /** Ask the server; a transaction of ours that is gone is acknowledged and said so. */
  async refresh() {
    if (this.asking) return;
    this.asking = true;
    this.lastPoll = performance.now();
    const believedMine = this.mine || this.levels.length > 0;
    try {
      const state = await this.api.transactionState();
      this.state = state;
      this.measuredAt = performance.now();
      this.known = true;
      this.error = null;
      if (!state.mine && believedMine) await this.lost();
      else if (state.mine) this.trimLevels(state.depth);
    } catch (error) {
      this.known = false;
      this.error = error.status === 401 && error.anonymous ? "log in to see it" : error.detail || String(error);
    } finally {
      this.asking = false;
    }
    this.render();
  }

  /**
   * After a request of the holder (which renewed its lease): learn the new time left. After a
   * 409 to a transaction-bound request (a write, a transaction call), whoever sent it: the
   * server says the transaction is over (lease, maximum age, an admin) or changed, so the bar
   * asks at once instead of showing a depth and a lease that are no more.
   */
  afterAnswer(path, token, status) {
    // Only the data and transaction routes renew a lease; /stats and /healthz do not.
    const renews = path.startsWith("keys") || path.startsWith("transactions/") || path === "batch";
    const over = status === 409 && (renews || path === "transactions");
    if (!token || !(over || (this.mine && renews))) return;
    clearTimeout(this.syncTimer);
    this.syncTimer = setTimeout(() => this.refresh(), SYNC_DELAY_MS);
  }

  /**
   * Our transaction ended without us (lease expired, open too long, broken by an admin): the
   * server keeps refusing this session's writes with 409 until it acknowledges, which a
   * rollback does, and its 409 says what happened: shown as it is.
   */
  async lost() {
    this.saveLevels([]);
    if (!this.api.token) return; // logged out: the server ended it with the login
    try {
      await this.api.rollback();
      this.app.notices.error("Your transaction had ended; nothing of it was applied.");
    } catch (error) {
      this.app.notices.error(`Your transaction is over: ${error.detail}`);
    }
    this.app.dataChanged();
  }

  async act(action) {
    const names = { begin: "Begin", release: "Release", rollback: "Roll back", commit: "Commit" };
    try {
      const answer = await this.api[action]();
      const depth = answer.depth;
      if (action === "begin") this.saveLevels([...this.levels, []]);
      else if (action === "release") {
        const levels = this.levels.slice();
        const top = levels.pop() || [];
        if (levels.length) levels[levels.length - 1] = levels[levels.length - 1].concat(top);
        this.saveLevels(levels);
      } else if (action === "rollback") this.saveLevels(this.levels.slice(0, depth));
      else this.saveLevels([]);
      this.state = { ...this.state, active: depth > 0, mine: depth > 0, depth };
      if (action === "commit") this.app.notices.success(`Committed: ${answer.applied} write(s) applied.`);
      else if (action === "begin") this.app.notices.success(depth > 1 ? `Nested level ${depth} begun.` : "Transaction begun: you hold the lock.");
      else if (depth === 0) this.app.notices.success("Rolled back: the transaction has ended.");
      else this.app.notices.success(`${names[action]}: now at depth ${depth}.`);
    } catch (error) {
      // A 409 is the server's word that this session's transaction is over (and hearing it
      // acknowledged that): nothing staged here is left.
      if (error.status === 409 && action !== "release") this.saveLevels([]);
      this.app.notices.error(`${names[action]}: ${error.detail}`);
    }
    await this.refresh();
    if (action !== "begin") this.app.dataChanged();
  }

  async breakLock() {
    const ok = await this.app.confirm(
      "Break the lock?",
      "The transaction another client holds is rolled back, every level of it; nothing it staged is applied.",
      "Break the lock",
    );
    if (!ok) return;
    try {
      const answer = await this.api.breakLock();
      this.app.notices.success(answer.rolled_back
        ? `Lock broken: a transaction at depth ${answer.depth} was rolled back.`
        : "No transaction was open.");
    } catch (error) {
      this.app.notices.error(`Break the lock: ${error.detail}`);
    }
    await this.refresh();
    this.app.dataChanged();
  }

  /** A write of ours answered "staged": remember it for the marks and the staged list. */
  recordStaged(op, key) {
    if (!this.levels.length) this.levels = Array.from({ length: Math.max(1, this.state.depth) }, () => []);
    const levels = this.levels.slice();
    const top = levels[levels.length - 1].filter((entry) => entry.key !== key);
    levels[levels.length - 1] = [...top, { op, key }];
    this.saveLevels(levels);
    this.render();
  }

  /** The last staged operation on key in this tab ("put", "delete") or null. */
  stagedOp(key) {
    for (let level = this.levels.length - 1; level >= 0; level -= 1) {
      const entry = this.levels[level].find((item) => item.key === key);
      if (entry) return entry.op;
    }
    return null;
  }

  trimLevels(depth) {
    if (this.levels.length > depth) this.saveLevels(this.levels.slice(0, depth));
    while (this.levels.length < depth) this.levels.push([]);
  }

  saveLevels(levels) {
    this.levels = levels;
    if (levels.length) sessionStorage.setItem(STAGED_KEY, JSON.stringify(levels));
    else sessionStorage.removeItem(STAGED_KEY);
  }

  /** Logged in, out, or expired: nothing this tab believed about its transaction holds. */
  identityChanged() {
    this.saveLevels([]);
    this.state = { active: false, mine: false, depth: 0, expires_in: null };
    this.known = false;
    this.render();
    this.refresh();
  }

  /** How many writes this tab staged in its transaction, every level. */
  stagedCount() {
    return this.levels.reduce((count, level) => count + level.length, 0);
  }

  render() {
    const { depth } = this.state;
    const loggedIn = Boolean(this.app.session.user);
    const b = this.buttons;
    b.begin.textContent = this.mine ? "Begin nested level" : "Begin transaction";
    b.begin.disabled = !loggedIn || this.lockedByOther;
    b.begin.title = loggedIn ? "" : "Log in to begin a transaction";
    b.release.disabled = !this.mine || depth < 2;
    b.rollback.disabled = !this.mine;
    b.commit.disabled = !this.mine;

    document.body.classList.toggle("holding", this.mine);
    document.body.classList.toggle("locked", this.lockedByOther);
    if (!this.known) this.bar.textContent = this.error ? `Transaction state unknown: ${this.error}` : "…";
    else if (this.mine) this.bar.textContent = `Your transaction · depth ${depth}`;
    else if (this.state.active) this.bar.textContent = "Another client holds the transaction";
    else this.bar.textContent = "No transaction open";
    this.bar.dataset.depth = String(this.mine ? depth : 0);

    this.banner.hidden = !this.lockedByOther;
    b.breakLock.hidden = !(this.lockedByOther && this.app.session.user?.role === "admin");
    if (this.lockedByOther) {
      const who = this.app.session.user ? `You (${this.app.session.user.username})` : "You (not logged in)";
      this.bannerText.textContent = `Another client holds the transaction. ${who} are waiting: writes are disabled here until it ends; reading works.`;
    }
    this.renderStaged();
    this.app.updateWriteControls();
    this.renderClock();
  }

  renderClock() {
    const left = this.secondsLeft();
    const shown = left === null ? "…" : `${Math.ceil(left)} s`;
    this.lease.textContent = this.mine ? `lease: ${shown} left` : "";
    this.lease.classList.toggle("urgent", this.mine && left !== null && left < 10);
    if (this.lockedByOther) {
      this.bannerRetry.textContent = `It ends at the latest in ${shown}, unless the holder acts again (each of its requests renews its lease); checked every ${POLL_MS / 1000} s.`;
    }
  }

  renderStaged() {
    this.stagedList.replaceChildren();
    const items = this.levels.flatMap((level, index) =>
      level.map((entry) => el("li", {}, el("span", { class: "badge staged" }, entry.op === "put" ? "staged put" : "staged delete"),
        " ", el("code", {}, printable(entry.key)), ` (level ${index + 1})`)));
    this.stagedList.hidden = !(this.mine && items.length);
    this.stagedList.append(...items);
  }
}

function loadLevels() {
  try {
    const levels = JSON.parse(sessionStorage.getItem(STAGED_KEY) || "[]");
    return Array.isArray(levels) ? levels : [];
  } catch {
    return [];
  }
}
