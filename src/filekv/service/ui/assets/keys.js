// The key browser: the keys under a prefix as a tree of "/"-separated folders or as a flat
// list, optionally only those whose value is exactly a given text (find), a page at a time,
// following the API's `next` cursor.
//
// A tree page shows each folder once, however many keys it holds: once a key inside a folder
// is seen, the listing resumes just past that folder (`after` set to the folder followed by
// more U+10FFFF characters than a key's bytes allow), so a folder of a million keys costs one
// request, not a thousand.

import { $, el, printable } from "./dom.js";

const MAX_REQUESTS_PER_PAGE = 20;
// Every key under folder F sorts below F + this (keys are at most max_key_bytes, 1024 by
// default, and U+10FFFF, the last code point, takes 4 bytes in UTF-8), and every key that
// sorts after F's keys sorts above it.
const PAST_FOLDER = "\u{10FFFF}".repeat(300);

export class KeyBrowser {
  constructor(app) {
    this.app = app;
    this.api = app.api;
    this.mode = "tree";
    this.prefix = "";
    this.value = null;
    this.pageSize = 100;
    this.cursors = [null];
    this.page = 0;
    this.next = null;
    this.entries = [];
    this.selected = null;
    this.controller = null;
    this.rows = new Map(); // row button -> entry

    this.list = $("#key-list");
    this.status = $("#list-status");
    this.crumbs = $("#crumbs");
    this.prefixInput = $("#prefix");
    this.findInput = $("#find-value");
    this.findClear = $("#find-clear");
    this.prevButton = $("#page-prev");
    this.nextButton = $("#page-next");
    this.pageLabel = $("#page-label");
    this.viewButtons = { tree: $("#view-tree"), flat: $("#view-flat") };

    $("#prefix-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.go({ prefix: this.prefixInput.value });
    });
    $("#find-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.go({ value: this.findInput.value });
    });
    this.findClear.addEventListener("click", () => {
      this.findInput.value = "";
      this.go({ value: null });
    });
    for (const [mode, button] of Object.entries(this.viewButtons)) {
      button.addEventListener("click", () => this.go({ mode }));
    }
    $("#page-size").addEventListener("change", (event) => this.go({ pageSize: Number(event.target.value) }));
    this.prevButton.addEventListener("click", () => this.turn(-1));
    this.nextButton.addEventListener("click", () => this.turn(1));
    $("#keys-refresh").addEventListener("click", () => this.load());
    this.list.addEventListener("keydown", (event) => this.onListKey(event));
  }

  /** Change what is listed (prefix, value, mode, pageSize) and show its first page. */
  go(changes) {
    Object.assign(this, changes);
    // The fields show what is listed; set here only, so a reload never overwrites typing.
    this.prefixInput.value = this.prefix;
    this.findInput.value = this.value ?? "";
    $("#page-size").value = String(this.pageSize);
    this.cursors = [null];
    this.page = 0;
    this.app.saveLocation();
    return this.load();
  }

  turn(step) {
    const page = this.page + step;
    if (page < 0 || (step > 0 && this.next === null)) return;
    if (step > 0) this.cursors[page] = this.next;
    this.page = page;
    this.load().then(() => this.focusRow(0));
  }

  async load() {
    this.controller?.abort();
    const controller = new AbortController();
    this.controller = controller;
    this.renderControls();
    this.status.textContent = "Loading…";
    this.list.setAttribute("aria-busy", "true");
    try {
      const after = this.cursors[this.page];
      const { entries, next } = this.mode === "tree"
        ? await this.treePage(after, controller.signal)
        : await this.flatPage(after, controller.signal);
      if (controller.signal.aborted) return;
      this.entries = entries;
      this.next = next;
      this.renderList();
    } catch (error) {
      // Aborted, or answered after a newer load began (a logout elsewhere reloads the list).
      if (error.name === "AbortError" || controller.signal.aborted) return;
      this.entries = [];
      this.next = null;
      this.renderList();
      if (error.status === 401 && error.anonymous) {
        // The server lets nobody read without a login (auth_mode "all"): say that, once.
        this.status.textContent = "Log in to see this store.";
        this.app.loginRequired();
        return;
      }
      const detail = error.detail ?? error.message;
      this.status.textContent = `Could not list keys: ${detail}`;
      this.app.notices.error(`List keys: ${detail}`);
    } finally {
      if (this.controller === controller) {
        this.list.removeAttribute("aria-busy");
        this.renderControls();
      }
    }
  }

  async flatPage(after, signal) {
    const page = await this.api.listKeys({ prefix: this.prefix, value: this.value, after, limit: this.pageSize }, signal);
    return { entries: page.keys.map((key) => ({ key })), next: page.next };
  }

  async treePage(after, signal) {
    const entries = [];
    let cursor = after;
    let openFolder = null; // the folder last shown: its other keys are skipped
    for (let request = 0; request < MAX_REQUESTS_PER_PAGE; request += 1) {
      const page = await this.api.listKeys({ prefix: this.prefix, value: this.value, after: cursor, limit: this.pageSize }, signal);
      for (const key of page.keys) {
        if (openFolder !== null && key.startsWith(openFolder)) continue;
        if (entries.length >= this.pageSize) return { entries, next: cursor };
        const rest = key.slice(this.prefix.length);
        const slash = rest.indexOf("/");
        if (slash >= 0) {
          openFolder = this.prefix + rest.slice(0, slash + 1);
          entries.push({ folder: openFolder });
          cursor = openFolder + PAST_FOLDER;
        } else {
          openFolder = null;
          entries.push({ key });
          cursor = key;
        }
      }
      if (page.next === null) return { entries, next: null };
      if (entries.length >= this.pageSize) return { entries, next: cursor };
      if (openFolder === null) cursor = page.next;
    }
    return { entries, next: cursor }; // many big folders: the rest on the next page
  }

  renderControls() {
    for (const [mode, button] of Object.entries(this.viewButtons)) {
      button.setAttribute("aria-pressed", String(mode === this.mode));
    }
    this.findClear.hidden = this.value === null;
    this.prevButton.disabled = this.page === 0;
    this.nextButton.disabled = this.next === null || this.list.hasAttribute("aria-busy");
    this.pageLabel.textContent = `page ${this.page + 1}`;
    this.renderCrumbs();
  }

  renderCrumbs() {
    const parts = [];
    let start = 0;
    for (let slash = this.prefix.indexOf("/"); slash >= 0; slash = this.prefix.indexOf("/", start)) {
      parts.push(this.prefix.slice(0, slash + 1));
      start = slash + 1;
    }
    if (start < this.prefix.length) parts.push(this.prefix);
    const crumb = (prefix, label) => el("button", { type: "button", class: "crumb", onclick: () => this.go({ prefix }) }, label);
    const items = [crumb("", "all keys")];
    let previous = "";
    for (const part of parts) {
      items.push(el("span", { class: "crumb-sep", "aria-hidden": "true" }, "›"));
      items.push(crumb(part, printable(part.slice(previous.length))));
      previous = part;
    }
    items[items.length - 1].setAttribute("aria-current", "true");
    this.crumbs.replaceChildren(...items);
  }

  renderList() {
    this.rows.clear();
    const rows = this.entries.map((entry) => {
      const button = entry.folder !== undefined ? this.folderRow(entry.folder) : this.keyRow(entry.key);
      this.rows.set(button, entry);
      return el("li", {}, button);
    });
    if (!rows.length) rows.push(el("li", { class: "empty" }, this.page ? "No more keys." : "No keys here."));
    this.list.replaceChildren(...rows);
    this.list.scrollTop = 0;
    const what = this.value === null ? "" : ` whose value is "${printable(this.value)}"`;
    const where = this.prefix ? ` under "${printable(this.prefix)}"` : "";
    const count = this.entries.length;
    const noun = this.mode === "tree" ? (count === 1 ? "entry" : "entries") : count === 1 ? "key" : "keys";
    const first = this.page * this.pageSize;
    const range = this.mode === "flat" && count ? `keys ${first + 1}–${first + count}` : `${count} ${noun}`;
    this.status.textContent = `${range}${what}${where}${this.next === null ? "" : " · more on the next page"}`;
  }

  /** What tree rows are named relative to: the prefix up to its last "/" (a folder). */
  get base() {
    return this.prefix.slice(0, this.prefix.lastIndexOf("/") + 1);
  }

  folderRow(folder) {
    const label = printable(folder.slice(this.base.length));
    return el("button", { type: "button", class: "row folder", title: printable(folder), onclick: () => this.go({ prefix: folder }) },
      el("span", { class: "row-icon", "aria-hidden": "true" }, "▸"), el("span", { class: "row-name" }, label),
      el("span", { class: "sr-only" }, " (folder)"));
  }

  keyRow(key) {
    // A key exactly equal to the folder listed ("shop/" under "shop/") has no name of its own
    // in the tree: it is shown whole, and said to be the folder's own key.
    const own = this.mode === "tree" && key === this.base;
    const label = this.mode === "tree" && !own ? key.slice(this.base.length) : key;
    const staged = this.app.transactions.stagedOp(key) === "put";
    return el("button", {
      type: "button", class: "row key", title: printable(key),
      "aria-current": key === this.selected ? "true" : false,
      onclick: () => this.app.viewer.show(key, { reveal: true }),
    }, el("span", { class: "row-icon", "aria-hidden": "true" }, "•"), el("span", { class: "row-name" }, printable(label)),
    own ? el("span", { class: "row-note" }, "this folder's own key") : null,
    staged ? el("span", { class: "badge staged" }, "staged") : null);
  }

  select(key) {
    this.selected = key;
    for (const [button, entry] of this.rows) {
      if (entry.key === key) button.setAttribute("aria-current", "true");
      else button.removeAttribute("aria-current");
    }
  }

  /** The keys shown (for tests and copy), in order. */
  shownKeys() {
    return this.entries.filter((entry) => entry.key !== undefined).map((entry) => entry.key);
  }

  focusRow(index) {
    const buttons = [...this.rows.keys()];
    if (!buttons.length) return;
    buttons[Math.max(0, Math.min(index, buttons.length - 1))].focus();
  }

  onListKey(event) {
    const buttons = [...this.rows.keys()];
    const index = buttons.indexOf(document.activeElement);
    const moves = { ArrowDown: index + 1, ArrowUp: index - 1, Home: 0, End: buttons.length - 1, PageDown: index + 10, PageUp: index - 10 };
    if (event.key in moves) {
      event.preventDefault();
      this.focusRow(moves[event.key]);
    } else if ((event.key === "Backspace" || event.key === "ArrowLeft") && this.mode === "tree" && this.prefix) {
      event.preventDefault();
      this.go({ prefix: parentOf(this.prefix) }).then(() => this.focusRow(0));
    } else if (event.key === "ArrowRight" && index >= 0 && this.rows.get(buttons[index]).folder !== undefined) {
      event.preventDefault();
      this.go({ prefix: this.rows.get(buttons[index]).folder }).then(() => this.focusRow(0));
    }
  }
}

/** "a/b/" -> "a/", "a/b" -> "a/", "a/" -> "". */
export function parentOf(prefix) {
  const trimmed = prefix.endsWith("/") ? prefix.slice(0, -1) : prefix;
  const slash = trimmed.lastIndexOf("/");
  return slash < 0 ? "" : trimmed.slice(0, slash + 1);
}
