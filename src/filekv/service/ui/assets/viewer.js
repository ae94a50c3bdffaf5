// One key: its value (pretty-printed when it is JSON) and revision, and the writes on it:
// create, edit and delete, each guarded by the revision the person saw. An edit sends
// If-Match with the revision it started from, so a change made meanwhile by someone else is
// never overwritten unseen (412): the person is told, and chooses what happens next.
//
// What the person types is theirs until they save or say to drop it: the editor's text is kept
// as it is typed (this.draft), so a re-render caused by anything else (the lease running out, a
// login or logout, a commit) puts it back; leaving an edit with changes asks first. A read that
// answers after the person moved on (another key, an edit begun) is dropped (this.generation).
// A key that expires keeps its expiry through an edit unless the person chooses otherwise (a
// write without ttl would end it), and a save that changes nothing writes nothing. A new key
// may be given an expiry ("expires in", whole seconds), checked here before it is sent.

import { $, copyText, el, printable } from "./dom.js";

// Where app.css puts the value below the key list (its narrowest layout).
const ONE_COLUMN = "(max-width: 700px)";
// A textarea turns every CRLF and lone CR into LF: texts are compared after the same.
const LINE_BREAK = /\r\n?/g;
// The server's longest ttl in seconds, ten years (engine/expiry.py MAX_TTL): a longer one is 422.
export const MAX_TTL = 10 * 365 * 24 * 3600;

export class Viewer {
  constructor(app) {
    this.app = app;
    this.api = app.api;
    this.root = $("#viewer-body");
    this.title = $("#viewer-title");
    this.entry = null; // {key, value, revision, expires_in} as last read
    this.expiresAt = null; // when the entry expires, on performance.now()'s clock, or null
    this.mode = "empty"; // empty | loading | view | edit | create | missing
    this.pretty = true;
    this.editRevision = null; // the revision an edit started from
    this.base = null; // what an edit started from: {value, expiresAt} (value null: no key)
    this.draft = null; // the editor's text as typed
    this.keepExpiry = true; // an edit of a key that expires keeps the expiry, unless told
    this.createPrefix = "";
    this.createTtl = ""; // the new key's "expires in" field as typed
    this.conflict = null;
    this.generation = 0; // bumped whenever what the viewer should show changes
    this.ticker = null;
  }

  get editing() {
    return this.mode === "edit" || this.mode === "create";
  }

  /** Whether leaving the editor now would lose something the person typed. */
  changed() {
    if (this.mode === "create") {
      return (this.draft ?? "") !== "" || this.entry.key !== this.createPrefix || this.createTtl.trim() !== "";
    }
    if (this.mode !== "edit") return false;
    if (!this.keepExpiry && this.latestExpiry() !== null) return true; // "make it permanent"
    return this.base.value === null || normalised(this.draft ?? "") !== normalised(this.base.value);
  }

  confirmDiscard() {
    const where = this.mode === "create" ? "for the new key" : `in "${printable(this.entry.key)}"`;
    return this.app.confirm("Discard your changes?", `What you typed ${where} is not saved; it will be lost.`, "Discard");
  }

  /** The latest expiry known for the key being edited: theirs once a conflict showed it. */
  latestExpiry() {
    if (this.conflict) return this.conflict.current ? this.conflict.current.expiresAt : null;
    return this.base?.expiresAt ?? null;
  }

  get key() {
    return this.entry?.key ?? null;
  }

  /**
   * Read and show key; reveal: scroll the value into view where it is below the list; discard:
   * drop an edit in progress without asking (the caller saved it or was told to drop it).
   */
  async show(key, { quiet = false, reveal = false, discard = false } = {}) {
    if (!discard && this.editing && this.changed() && !(await this.confirmDiscard())) return;
    const generation = ++this.generation;
    this.app.browser.select(key);
    this.conflict = null;
    if (this.key !== key || (this.mode !== "view" && this.mode !== "missing")) {
      this.mode = "loading";
      this.entry = { key, value: null, revision: null, expires_in: null };
      this.expiresAt = null;
      this.render();
    }
    let entry = null;
    let failure = null;
    try {
      entry = await this.api.getKey(key);
    } catch (error) {
      failure = error;
    }
    // Another key was asked for, or an edit began, while this read was out: not wanted.
    if (generation !== this.generation) return;
    if (entry) {
      this.setEntry(entry);
      this.mode = "view";
    } else {
      this.setEntry({ key, value: null, revision: null, expires_in: null });
      this.mode = "missing";
      this.missingDetail = failure.detail ?? failure.message;
      if (!quiet || failure.status !== 404) this.app.notices.error(`Read "${printable(key)}": ${this.missingDetail}`);
    }
    this.app.saveLocation();
    this.render();
    if (reveal && window.matchMedia(ONE_COLUMN).matches) this.root.closest("section").scrollIntoView();
  }

  setEntry(entry) {
    this.entry = entry;
    this.expiresAt = typeof entry.expires_in === "number" ? performance.now() + entry.expires_in * 1000 : null;
  }

  /** After a change elsewhere: read the shown key again, unless it is being edited. */
  reload() {
    if (this.mode === "view" || this.mode === "missing") this.show(this.entry.key, { quiet: true });
    else this.render();
  }

  clear() {
    this.generation += 1;
    this.entry = null;
    this.expiresAt = null;
    this.mode = "empty";
    this.app.browser.select(null);
    this.app.saveLocation();
    this.render();
  }

  edit() {
    if (this.mode !== "view" || this.refusedByLock("Edit")) return;
    this.generation += 1; // a read still out must not replace the editor
    this.mode = "edit";
    this.editRevision = this.entry.revision;
    this.base = { value: this.entry.value, expiresAt: this.expiresAt };
    this.keepExpiry = true;
    this.draft = normalised(this.entry.value);
    this.conflict = null;
    this.render();
    $("#edit-value").focus();
  }

  create() {
    if (this.refusedByLock("New key")) return;
    const prefix = this.app.browser.prefix;
    this.generation += 1;
    this.mode = "create";
    this.createPrefix = prefix;
    this.createTtl = "";
    this.conflict = null;
    this.draft = "";
    this.entry = { key: prefix, value: "", revision: null };
    this.app.browser.select(null);
    this.render();
    const input = $("#create-key");
    input.focus();
    input.setSelectionRange(input.value.length, input.value.length);
  }

  /** A write asked for (by a key) while another client holds the lock: say so, do nothing. */
  refusedByLock(what) {
    if (!this.app.transactions.lockedByOther) return false;
    this.app.notices.error(`${what}: another client holds the transaction lock; writes wait until it ends.`);
    return true;
  }

  /** Leave the editor (Esc, Cancel): asks first when something typed would be lost. */
  async cancel() {
    if (!this.editing) return;
    if (this.changed() && !(await this.confirmDiscard())) return;
    if (this.mode === "edit") await this.show(this.entry.key, { quiet: true, discard: true });
    else if (this.mode === "create") this.clear();
  }

  async save() {
    if (this.refusedByLock("Save")) return;
    const creating = this.mode === "create";
    const key = creating ? $("#create-key").value : this.entry.key;
    const typed = $("#edit-value").value;
    this.draft = typed;
    if (creating && !key) {
      this.app.notices.error("Give the new key a name.");
      return;
    }
    let value = typed;
    let ttl = null;
    let note = "";
    if (creating) {
      ttl = parseTtl(this.createTtl);
      if (ttl === undefined) {
        this.app.notices.error(`Not created: "expires in" must be a whole number of seconds from 1 to ${MAX_TTL} (ten years), or empty for a key that never expires; not "${printable(this.createTtl.trim())}".`);
        const field = $("#create-ttl", this.root);
        field.setAttribute("aria-invalid", "true");
        field.focus();
        return;
      }
      if (ttl !== null) note = ` It expires in ${duration(ttl)}.`;
    } else {
      const base = this.base.value;
      const expiresAt = this.latestExpiry();
      const keep = expiresAt !== null && this.keepExpiry;
      const same = base !== null && typed === normalised(base);
      if (same && (expiresAt === null || keep)) {
        this.app.notices.success(`No change: "${printable(key)}" was not written.`);
        this.mode = "view";
        await this.show(key, { quiet: true, discard: true });
        return;
      }
      if (same) value = base; // only the expiry changes: the value is sent back as it was
      else if (base !== null && uniformlyCrlf(base)) value = typed.replace(/\n/g, "\r\n");
      else if (base !== null && base.includes("\r")) note = " Its line breaks are now LF.";
      if (keep) {
        const left = (expiresAt - performance.now()) / 1000;
        if (left <= 0) {
          this.app.notices.error(`Not saved: "${printable(key)}" expired while you were editing; choose "Make it permanent" to save your text.`);
          return;
        }
        ttl = Math.max(0.001, Math.round(left * 1000) / 1000);
        note += ` It still expires in ${duration(ttl)}.`;
      } else if (expiresAt !== null) {
        note += " It no longer expires.";
      }
    }
    // Staged keys have no revision until commit; nobody else can change them meanwhile.
    const expect = creating ? 0 : this.editRevision;
    const generation = this.generation;
    try {
      const answer = await this.api.putKey(key, value, expect, ttl);
      if (answer.staged) this.app.transactions.recordStaged("put", key);
      this.app.notices.success(answer.staged
        ? `Staged "${printable(key)}" in your transaction.${note}`
        : `Saved "${printable(key)}" at revision ${answer.revision}.${note}`);
      if (generation === this.generation) { // else the person has moved on meanwhile
        this.mode = "view";
        await this.show(key, { quiet: true, discard: true });
      }
      this.app.dataChanged({ viewer: false });
    } catch (error) {
      if (error.status === 412) await this.onConflict(key, creating, error, generation);
      else this.app.notices.error(`Save "${printable(key)}": ${error.detail}`);
    }
  }

  async onConflict(key, creating, error, generation) {
    let current = null;
    try {
      current = await this.api.getKey(key);
      current.expiresAt = typeof current.expires_in === "number" ? performance.now() + current.expires_in * 1000 : null;
    } catch (readError) {
      if (readError.status !== 404) this.app.notices.error(`Read "${printable(key)}": ${readError.detail}`);
    }
    if (generation !== this.generation || !this.editing) return; // moved on meanwhile
    if (creating) {
      this.app.notices.error(`A key named "${printable(key)}" exists already (${error.detail}). Open it to edit it.`);
      return;
    }
    this.conflict = { detail: error.detail, current };
    this.app.notices.error(`Not saved: someone else changed "${printable(key)}" while you were editing (${error.detail}).`);
    this.render();
  }

  /** After a conflict: save my text over theirs, guarded by the revision just shown. */
  overwrite() {
    const current = this.conflict?.current;
    this.editRevision = current ? current.revision : 0;
    // From now on the edit is of their version: its value and its expiry, as just read.
    this.base = current ? { value: current.value, expiresAt: current.expiresAt } : { value: null, expiresAt: null };
    this.conflict = null;
    return this.save(); // a change made since the conflict was shown is a conflict again
  }

  async remove() {
    if (this.mode !== "view" || this.refusedByLock("Delete")) return;
    const { key, revision } = this.entry;
    const staged = this.app.transactions.mine;
    const ok = await this.app.confirm(
      "Delete this key?",
      `"${printable(key)}" ${staged ? "will be deleted when your transaction commits" : "is deleted for good"}.`,
      "Delete",
    );
    if (!ok) return;
    const row = [...this.app.browser.rows.values()].findIndex((entry) => entry.key === key);
    try {
      await this.api.deleteKey(key, revision);
      if (staged) this.app.transactions.recordStaged("delete", key);
      this.app.notices.success(staged ? `Delete of "${printable(key)}" staged.` : `Deleted "${printable(key)}".`);
      if (this.key !== key) return this.app.dataChanged({ viewer: false }); // moved on meanwhile
      this.clear();
      this.app.dataChanged({ viewer: false });
      // Focus went with the viewer's buttons: onto the row where the key was, once listed.
      await listed(this.app.browser.list);
      const active = document.activeElement;
      if (row >= 0 && (active === null || active === document.body || active === this.root)) this.app.browser.focusRow(row);
    } catch (error) {
      this.app.notices.error(error.status === 412
        ? `Not deleted: "${printable(key)}" changed since you opened it (${error.detail}); here it is now.`
        : `Delete "${printable(key)}": ${error.detail}`);
      if (error.status === 412 || error.status === 404) this.show(key, { quiet: true });
    }
  }

  async copy(what) {
    const text = what === "key" ? this.entry.key : this.entry.value;
    try {
      await copyText(text);
      this.app.notices.success(what === "key" ? "Key copied." : "Value copied.");
    } catch (error) {
      this.app.notices.error(`Copy: ${error.message}`);
    }
  }

  render() {
    const write = (label, id, onclick, shortcut) =>
      el("button", { type: "button", id, "data-write": "", "aria-keyshortcuts": shortcut, onclick }, label);
    const plain = (label, id, onclick, shortcut) =>
      el("button", { type: "button", id, "aria-keyshortcuts": shortcut, onclick }, label);
    const parts = [];
    if (this.mode === "empty") {
      this.title.textContent = "Value";
      parts.push(el("p", { class: "hint" }, "Choose a key on the left, or create one (N)."));
    } else if (this.mode === "loading") {
      this.title.textContent = "Value";
      parts.push(keyLine(this.entry.key), el("p", { class: "hint", id: "value-loading", role: "status" }, "Loading…"));
    } else if (this.mode === "missing") {
      this.title.textContent = "Value";
      parts.push(keyLine(this.entry.key), el("p", { class: "hint", id: "missing" }, `Not readable: ${this.missingDetail}`));
    } else if (this.mode === "view") {
      const { key, value, revision } = this.entry;
      const json = prettyJson(value);
      this.title.textContent = "Value";
      parts.push(keyLine(key));
      parts.push(el("p", { class: "meta" },
        revision === null
          ? el("span", { class: "badge staged", id: "value-revision" }, "staged: not committed yet")
          : el("span", { class: "badge", id: "value-revision" }, `revision ${revision}`),
        json !== null ? el("span", { class: "badge json" }, "JSON") : null,
        this.expiresAt !== null ? el("span", { class: "badge", id: "value-expiry" }, expiryText(this.expiresAt)) : null,
        el("span", { class: "size" }, `${new TextEncoder().encode(value).length.toLocaleString("en")} bytes`)));
      parts.push(el("div", { class: "actions" },
        write("Edit", "edit", () => this.edit(), "E"),
        write("Delete…", "delete", () => this.remove(), "Delete"),
        plain("Copy key", "copy-key", () => this.copy("key")),
        plain("Copy value", "copy-value", () => this.copy("value")),
        json !== null ? plain(this.pretty ? "Show raw" : "Show pretty", "toggle-pretty", () => { this.pretty = !this.pretty; this.render(); }) : null));
      parts.push(el("pre", { id: "value", class: "value", tabindex: "0", "aria-label": "value" },
        json !== null && this.pretty ? json : value));
    } else {
      const creating = this.mode === "create";
      this.title.textContent = creating ? "New key" : "Edit";
      const form = el("form", { id: "edit-form", class: "edit-form", onsubmit: (event) => { event.preventDefault(); this.save(); } });
      if (creating) {
        const name = el("input", { id: "create-key", type: "text", value: this.entry.key, autocomplete: "off", spellcheck: "false" });
        name.addEventListener("input", () => { this.entry.key = name.value; });
        form.append(el("label", { for: "create-key" }, "Key"), name);
      } else {
        form.append(keyLine(this.entry.key), el("p", { class: "meta" }, this.editRevision === null
          ? "Staged in your transaction: saved without a revision check."
          : this.editRevision === 0 ? "Saving creates the key again (it was deleted)." : `Editing revision ${this.editRevision}: saving checks that nobody changed it since (If-Match).`));
        const expiresAt = this.latestExpiry();
        if (expiresAt !== null) {
          const choice = el("select", { id: "edit-expiry", onchange: (event) => { this.keepExpiry = event.target.value === "keep"; } },
            el("option", { value: "keep", id: "edit-expiry-keep", selected: this.keepExpiry }, keepText(expiresAt)),
            el("option", { value: "permanent", selected: !this.keepExpiry }, "Make it permanent (no expiry)"));
          form.append(el("label", { for: "edit-expiry" }, "Expiry"), choice);
        }
        const base = this.base.value;
        if (base !== null && uniformlyCrlf(base)) {
          form.append(el("p", { class: "hint", id: "line-endings" }, "Line breaks are CRLF (\\r\\n): a changed text is saved with CRLF too."));
        } else if (base !== null && base.includes("\r")) {
          form.append(el("p", { class: "hint", id: "line-endings", role: "note" },
            "This value has CR (\\r) line breaks, which the editor shows as LF (\\n): if you change the text, every line break is saved as LF."));
        }
      }
      const area = el("textarea", { id: "edit-value", rows: "12", spellcheck: "false", "aria-label": "value" });
      area.value = this.draft ?? "";
      area.addEventListener("input", () => { this.draft = area.value; });
      area.addEventListener("keydown", (event) => {
        if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
          event.preventDefault();
          this.save();
        }
      });
      if (creating) form.append(el("label", { for: "edit-value" }, "Value"));
      form.append(area);
      if (creating) {
        const ttl = el("input", { id: "create-ttl", class: "ttl", type: "text", inputmode: "numeric", value: this.createTtl,
          autocomplete: "off", spellcheck: "false", "aria-describedby": "create-ttl-hint" });
        ttl.addEventListener("input", () => {
          this.createTtl = ttl.value;
          ttl.removeAttribute("aria-invalid");
        });
        form.append(el("label", { for: "create-ttl" }, "Expires in (seconds)"), ttl,
          el("p", { class: "hint", id: "create-ttl-hint" }, `Optional: 1 to ${MAX_TTL} (ten years); empty: the key never expires.`));
      }
      if (this.conflict) form.append(this.conflictBox());
      form.append(el("div", { class: "actions" },
        el("button", { type: "submit", id: "save", class: "primary", "data-write": "", "aria-keyshortcuts": "Control+Enter" }, creating ? "Create" : "Save"),
        plain("Cancel", "cancel", () => this.cancel(), "Escape"),
        el("span", { class: "hint" }, "Ctrl+Enter saves · Esc cancels")));
      parts.push(form);
    }
    // Focus inside the viewer goes with the elements replaced: give it back (the same control,
    // where the caret was, or the value), so the keyboard goes on from here.
    const active = document.activeElement;
    const focused = active !== null && active !== this.root && this.root.contains(active)
      ? { id: active.id, start: active.selectionStart, end: active.selectionEnd, scroll: active.scrollTop }
      : null;
    this.root.setAttribute("tabindex", "-1");
    if (this.mode === "loading") this.root.setAttribute("aria-busy", "true");
    else this.root.removeAttribute("aria-busy");
    this.root.replaceChildren(...parts);
    this.app.updateWriteControls();
    if (focused && !this.root.contains(document.activeElement)) refocus(this.root, focused);
    this.syncTicker();
  }

  /** The time left on the key shown or edited, counted down every second. */
  syncTicker() {
    const needed = (this.mode === "view" && this.expiresAt !== null) || (this.mode === "edit" && this.latestExpiry() !== null);
    if (needed && this.ticker === null) this.ticker = setInterval(() => this.tick(), 1000);
    else if (!needed && this.ticker !== null) {
      clearInterval(this.ticker);
      this.ticker = null;
    }
  }

  tick() {
    if (this.mode === "view" && this.expiresAt !== null) {
      const badge = $("#value-expiry", this.root);
      if (badge) badge.textContent = expiryText(this.expiresAt);
      if (this.expiresAt <= performance.now() && !this.entry.expiredSeen) {
        this.entry.expiredSeen = true;
        this.reload(); // gone for the server too: the read says so
      }
    } else if (this.mode === "edit") {
      const option = $("#edit-expiry-keep", this.root);
      const expiresAt = this.latestExpiry();
      if (option && expiresAt !== null) option.textContent = keepText(expiresAt);
    }
    this.syncTicker();
  }

  conflictBox() {
    const { current, detail } = this.conflict;
    const expiry = current && current.expiresAt !== null ? `, ${expiryText(current.expiresAt)}` : "";
    const now = current
      ? el("span", {}, `It is now at revision ${current.revision}${expiry}, with this value:`)
      : el("span", {}, "It has been deleted since.");
    return el("div", { class: "conflict", id: "conflict", role: "alert" },
      el("strong", {}, "Someone else changed this key while you were editing."),
      el("p", {}, `Your text is not saved (${detail}). `, now),
      current ? el("pre", { class: "value theirs" }, current.value) : null,
      el("div", { class: "actions" },
        el("button", { type: "button", id: "conflict-overwrite", "data-write": "", onclick: () => this.overwrite() }, "Keep mine (overwrite theirs)"),
        el("button", { type: "button", id: "conflict-theirs", onclick: () => this.show(this.entry.key, { quiet: true, discard: true }) }, "Discard mine, show theirs")));
  }
}

/** Put focus back after a re-render: on the same control (caret and scroll too), else the value. */
function refocus(root, { id, start, end, scroll }) {
  const same = id ? root.querySelector(`#${CSS.escape(id)}`) : null;
  const target = same ?? $("#value", root) ?? $("#edit-value", root) ?? root;
  target.focus();
  if (target === same && typeof start === "number" && typeof target.setSelectionRange === "function") {
    target.setSelectionRange(start, end);
    target.scrollTop = scroll;
  }
}

/** Resolves once the key list is not loading (its aria-busy gone). */
function listed(list) {
  return new Promise((resolve) => {
    if (!list.hasAttribute("aria-busy")) {
      resolve();
      return;
    }
    const observer = new MutationObserver(() => {
      if (list.hasAttribute("aria-busy")) return;
      observer.disconnect();
      resolve();
    });
    observer.observe(list, { attributes: true, attributeFilter: ["aria-busy"] });
  });
}

/** Text as a textarea holds it: every CRLF and lone CR made LF. */
export function normalised(text) {
  return text.replace(LINE_BREAK, "\n");
}

/** Whether every line break of text is CRLF (and there is one at least). */
export function uniformlyCrlf(text) {
  return text.includes("\r\n") && !/\r(?!\n)|(?<!\r)\n/.test(text);
}

/**
 * The new key's "expires in" field: null when empty (never expires), the whole number of seconds
 * from 1 to MAX_TTL it holds, else undefined (refused: no fractions, signs, exponents or words).
 */
export function parseTtl(text) {
  const typed = text.trim();
  if (typed === "") return null;
  if (!/^[0-9]+$/.test(typed)) return undefined;
  const seconds = Number(typed);
  return seconds >= 1 && seconds <= MAX_TTL ? seconds : undefined;
}

/** "8 min 47 s": a duration in seconds, rounded up, in its two largest units. */
export function duration(seconds) {
  const s = Math.max(0, Math.ceil(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function expiryText(expiresAt) {
  const left = (expiresAt - performance.now()) / 1000;
  return left > 0 ? `expires in ${duration(left)}` : "expired";
}

function keepText(expiresAt) {
  const left = (expiresAt - performance.now()) / 1000;
  return left > 0 ? `Keep the expiry (expires in ${duration(left)})` : "Keep the expiry (it has run out)";
}

function keyLine(key) {
  return el("p", { class: "key-line" }, el("code", { id: "value-key" }, printable(key)));
}

/** The value pretty-printed if it is a JSON object or array, else null. */
export function prettyJson(value) {
  const start = value.trimStart()[0];
  if (start !== "{" && start !== "[") return null;
  try {
    return JSON.stringify(JSON.parse(value), null, 2);
  } catch {
    return null;
  }
}
