// One key: its value (pretty-printed when it is JSON) and revision, and the writes on it:
// create, edit and delete, each guarded by the revision the person saw. An edit sends
// If-Match with the revision it started from, so a change made meanwhile by someone else is
// never overwritten unseen (412): the person is told, and chooses what happens next.

import { $, copyText, el, printable } from "./dom.js";

// Where app.css puts the value below the key list (its narrowest layout).
const ONE_COLUMN = "(max-width: 700px)";

export class Viewer {
  constructor(app) {
    this.app = app;
    this.api = app.api;
    this.root = $("#viewer-body");
    this.title = $("#viewer-title");
    this.entry = null; // {key, value, revision} as last read
    this.mode = "empty"; // empty | view | edit | create | missing
    this.pretty = true;
    this.editRevision = null; // the revision an edit started from
    this.draft = null;
    this.conflict = null;
  }

  get key() {
    return this.entry?.key ?? null;
  }

  /** Read and show key; reveal: scroll the value into view where it is below the list. */
  async show(key, { quiet = false, reveal = false } = {}) {
    this.app.browser.select(key);
    this.conflict = null;
    try {
      this.entry = await this.api.getKey(key);
      this.mode = "view";
    } catch (error) {
      this.entry = { key, value: null, revision: null };
      this.mode = "missing";
      this.missingDetail = error.detail;
      if (!quiet || error.status !== 404) this.app.notices.error(`Read "${printable(key)}": ${error.detail}`);
    }
    this.app.saveLocation();
    this.render();
    if (reveal && window.matchMedia(ONE_COLUMN).matches) this.root.closest("section").scrollIntoView();
  }

  /** After a change elsewhere: read the shown key again, unless it is being edited. */
  reload() {
    if (this.mode === "view" || this.mode === "missing") this.show(this.entry.key, { quiet: true });
    else this.render();
  }

  clear() {
    this.entry = null;
    this.mode = "empty";
    this.app.browser.select(null);
    this.app.saveLocation();
    this.render();
  }

  edit() {
    if (this.mode !== "view" || this.refusedByLock("Edit")) return;
    this.mode = "edit";
    this.editRevision = this.entry.revision;
    this.draft = this.entry.value;
    this.conflict = null;
    this.render();
    $("#edit-value").focus();
  }

  create() {
    if (this.refusedByLock("New key")) return;
    const prefix = this.app.browser.prefix;
    this.mode = "create";
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

  cancel() {
    if (this.mode === "edit") this.show(this.entry.key, { quiet: true });
    else if (this.mode === "create") this.clear();
  }

  async save() {
    if (this.refusedByLock("Save")) return;
    const creating = this.mode === "create";
    const key = creating ? $("#create-key").value : this.entry.key;
    const value = $("#edit-value").value;
    this.draft = value;
    if (creating && !key) {
      this.app.notices.error("Give the new key a name.");
      return;
    }
    // Staged keys have no revision until commit; nobody else can change them meanwhile.
    const expect = creating ? 0 : this.editRevision;
    try {
      const answer = await this.api.putKey(key, value, expect);
      if (answer.staged) this.app.transactions.recordStaged("put", key);
      this.app.notices.success(answer.staged
        ? `Staged "${printable(key)}" in your transaction.`
        : `Saved "${printable(key)}" at revision ${answer.revision}.`);
      this.mode = "view";
      await this.show(key, { quiet: true });
      this.app.dataChanged({ viewer: false });
    } catch (error) {
      if (error.status === 412) await this.onConflict(key, creating, error);
      else this.app.notices.error(`Save "${printable(key)}": ${error.detail}`);
    }
  }

  async onConflict(key, creating, error) {
    let current = null;
    try {
      current = await this.api.getKey(key);
    } catch (readError) {
      if (readError.status !== 404) this.app.notices.error(`Read "${printable(key)}": ${readError.detail}`);
    }
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
    try {
      await this.api.deleteKey(key, revision);
      if (staged) this.app.transactions.recordStaged("delete", key);
      this.app.notices.success(staged ? `Delete of "${printable(key)}" staged.` : `Deleted "${printable(key)}".`);
      this.clear();
      this.app.dataChanged({ viewer: false });
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
        form.append(el("label", { for: "create-key" }, "Key"), el("input", { id: "create-key", type: "text", value: this.entry.key, autocomplete: "off", spellcheck: "false" }));
      } else {
        form.append(keyLine(this.entry.key), el("p", { class: "meta" }, this.editRevision === null
          ? "Staged in your transaction: saved without a revision check."
          : this.editRevision === 0 ? "Saving creates the key again (it was deleted)." : `Editing revision ${this.editRevision}: saving checks that nobody changed it since (If-Match).`));
      }
      const area = el("textarea", { id: "edit-value", rows: "12", spellcheck: "false", "aria-label": "value" });
      area.value = this.draft ?? "";
      area.addEventListener("keydown", (event) => {
        if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
          event.preventDefault();
          this.save();
        }
      });
      if (creating) form.append(el("label", { for: "edit-value" }, "Value"));
      form.append(area);
      if (this.conflict) form.append(this.conflictBox());
      form.append(el("div", { class: "actions" },
        el("button", { type: "submit", id: "save", class: "primary", "data-write": "", "aria-keyshortcuts": "Control+Enter" }, creating ? "Create" : "Save"),
        plain("Cancel", "cancel", () => this.cancel(), "Escape"),
        el("span", { class: "hint" }, "Ctrl+Enter saves · Esc cancels")));
      parts.push(form);
    }
    this.root.replaceChildren(...parts);
    this.app.updateWriteControls();
  }

  conflictBox() {
    const { current, detail } = this.conflict;
    const now = current
      ? el("span", {}, `It is now at revision ${current.revision}, with this value:`)
      : el("span", {}, "It has been deleted since.");
    return el("div", { class: "conflict", id: "conflict", role: "alert" },
      el("strong", {}, "Someone else changed this key while you were editing."),
      el("p", {}, `Your text is not saved (${detail}). `, now),
      current ? el("pre", { class: "value theirs" }, current.value) : null,
      el("div", { class: "actions" },
        el("button", { type: "button", id: "conflict-overwrite", "data-write": "", onclick: () => this.overwrite() }, "Keep mine (overwrite theirs)"),
        el("button", { type: "button", id: "conflict-theirs", onclick: () => this.show(this.entry.key, { quiet: true }) }, "Discard mine, show theirs")));
  }
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
