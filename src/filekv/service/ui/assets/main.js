// The console's entry point: builds the parts, wires them to each other, and handles the
// keyboard shortcuts, the confirmation dialog and the address (#prefix=...&key=...), so that a
// reload or a shared link opens the same place.

import { Api } from "./api.js";
import { $, Notices } from "./dom.js";
import { KeyBrowser } from "./keys.js";
import { ServerPanel } from "./server.js";
import { Session } from "./session.js";
import { Transactions } from "./transaction.js";
import { Viewer } from "./viewer.js";

class App {
  constructor() {
    this.api = new Api();
    this.notices = new Notices($("#notices"));
    this.session = new Session(this);
    this.transactions = new Transactions(this);
    this.server = new ServerPanel(this);
    this.browser = new KeyBrowser(this);
    this.viewer = new Viewer(this);
    this.restoring = false;
    this.needsLogin = false; // the server refused to list keys without a login (auth_mode "all")
    this.askedLogin = false;
    $("#new-key").addEventListener("click", () => this.viewer.create());
    $("#help-open").addEventListener("click", () => $("#help-dialog").showModal());
    $("#help-close").addEventListener("click", () => $("#help-dialog").close());
    document.addEventListener("keydown", (event) => this.onKey(event));
    window.addEventListener("hashchange", () => this.restoreLocation());
  }

  /** Ready (body[data-ready], the mark "filekv-ready") once the first keys are listed. */
  async start() {
    const session = this.session.start();
    const listing = this.restoreLocation(); // at the same time: the token is there already
    this.server.start();
    await session;
    this.transactions.start(); // its buttons depend on who is logged in
    await listing;
    performance.mark("filekv-ready");
    document.body.dataset.ready = "true";
  }

  /** Something was written (here or by the lock's end): list and figures are read again. */
  dataChanged({ viewer = true } = {}) {
    this.browser.load();
    if (viewer) this.viewer.reload();
    this.server.refresh();
  }

  identityChanged() {
    this.transactions.identityChanged();
    this.dataChanged();
  }

  /**
   * The server answered 401 to an anonymous read: nothing here works without a login. The
   * login dialog opens by itself (once a page load), and the write controls are off until
   * someone logs in.
   */
  loginRequired() {
    this.needsLogin = true;
    this.updateWriteControls();
    if (this.session.user || this.askedLogin || document.querySelector("dialog[open]")) return;
    this.askedLogin = true;
    this.session.open("login", "This store lets nobody read or write without a login: log in to see it.");
  }

  /** Write controls are off while another client holds the lock, or before a needed login. */
  updateWriteControls() {
    const locked = this.transactions.lockedByOther;
    const anonymous = this.needsLogin && !this.session.user;
    for (const control of document.querySelectorAll("[data-write]")) {
      control.disabled = locked || anonymous;
      if (locked) control.title = "Another client holds the transaction lock";
      else if (anonymous) control.title = "Log in first: this store needs a login";
      else control.removeAttribute("title");
    }
  }

  confirm(title, text, okLabel) {
    const dialog = $("#confirm-dialog");
    $("#confirm-title").textContent = title;
    $("#confirm-text").textContent = text;
    $("#confirm-ok").textContent = okLabel;
    dialog.returnValue = "";
    dialog.showModal();
    $("#confirm-cancel").focus(); // the safe answer is the default one
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    });
  }

  saveLocation() {
    if (this.restoring) return;
    const params = new URLSearchParams();
    if (this.browser.prefix) params.set("prefix", this.browser.prefix);
    if (this.browser.value !== null) params.set("value", this.browser.value);
    if (this.browser.mode !== "tree") params.set("view", this.browser.mode);
    if (this.viewer.key !== null && this.viewer.mode !== "create") params.set("key", this.viewer.key);
    const hash = params.toString();
    if (hash !== window.location.hash.slice(1)) history.replaceState(null, "", hash ? `#${hash}` : window.location.pathname);
  }

  async restoreLocation() {
    const params = new URLSearchParams(window.location.hash.slice(1));
    this.restoring = true;
    try {
      const key = params.get("key");
      const loading = this.browser.go({
        prefix: params.get("prefix") ?? "",
        value: params.get("value"),
        mode: params.get("view") === "flat" ? "flat" : "tree",
      });
      if (key !== null) await this.viewer.show(key);
      await loading;
    } finally {
      this.restoring = false;
    }
  }

  onKey(event) {
    if (event.key === "Escape" && (this.viewer.mode === "edit" || this.viewer.mode === "create") && !document.querySelector("dialog[open]")) {
      event.preventDefault();
      this.viewer.cancel();
      return;
    }
    const target = event.target;
    const typing = target instanceof HTMLElement && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
    if (typing || event.ctrlKey || event.metaKey || event.altKey || document.querySelector("dialog[open]")) return;
    const actions = {
      "/": () => $("#prefix").focus(),
      f: () => $("#find-value").focus(),
      n: () => (this.needsLogin && !this.session.user ? this.session.open("login", "Log in to create a key.") : this.viewer.create()),
      e: () => this.viewer.edit(),
      Delete: () => this.viewer.remove(),
      k: () => this.browser.focusRow(0),
      l: () => (this.session.user ? null : this.session.open("login")),
      "?": () => $("#help-dialog").showModal(),
    };
    // Letters in either case (Shift, Caps Lock): the help and the README write them upper case.
    const action = actions[event.key.length === 1 ? event.key.toLowerCase() : event.key];
    if (action) {
      event.preventDefault();
      action();
    }
  }
}

new App().start();
