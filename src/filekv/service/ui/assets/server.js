// The server panel: health and the store's figures from GET /stats, refreshed every few
// seconds (and at once after this console changes something). Errors stay in the panel, with
// their detail, instead of a new notice every few seconds.

import { $, formatBytes } from "./dom.js";

const REFRESH_MS = 3000;

export class ServerPanel {
  constructor(app) {
    this.app = app;
    this.api = app.api;
    this.health = $("#health");
    this.error = $("#stats-error");
    this.updated = $("#stats-updated");
    this.fields = {};
    for (const node of document.querySelectorAll("[data-stat]")) this.fields[node.dataset.stat] = node;
    this.busy = false;
  }

  start() {
    this.refresh();
    setInterval(() => this.refresh(), REFRESH_MS);
  }

  async refresh() {
    if (this.busy) return;
    this.busy = true;
    try {
      await Promise.all([this.refreshHealth(), this.refreshStats()]);
    } finally {
      this.busy = false;
    }
  }

  async refreshHealth() {
    try {
      const answer = await this.api.health();
      this.setHealth(answer.status === "ok" ? "ok" : "bad", answer.status);
    } catch (error) {
      this.setHealth("bad", error.status === null ? "unreachable" : `${error.status}: ${error.detail}`);
    }
  }

  setHealth(kind, text) {
    this.health.textContent = `server ${text}`;
    this.health.dataset.health = kind;
  }

  async refreshStats() {
    try {
      const stats = await this.api.stats();
      this.error.hidden = true;
      const shown = {
        keys: stats.keys.toLocaleString("en"),
        disk_bytes: formatBytes(stats.disk_bytes),
        live_bytes: formatBytes(stats.live_bytes),
        revision: String(stats.revision),
        fsync: stats.fsync,
        segments: String(stats.segments),
        last_compaction: stats.last_compaction
          ? new Date(stats.last_compaction).toLocaleString("en-GB")
          : "never",
        compacting: stats.compacting ? "running now" : "no",
        in_transaction: stats.in_transaction ? "open" : "none",
      };
      for (const [name, node] of Object.entries(this.fields)) {
        node.textContent = shown[name] ?? "-";
        if (name.endsWith("_bytes")) node.title = `${stats[name].toLocaleString("en")} bytes`;
      }
      this.updated.textContent = `updated ${new Date().toLocaleTimeString("en-GB")}`;
    } catch (error) {
      this.error.hidden = false;
      // auth_mode "all": anonymous visitors are told to log in, not how to send a header.
      this.error.textContent =
        error.status === 401 && error.anonymous
          ? "Statistics: log in to see them."
          : `Statistics: ${error.detail}`;
    }
  }
}
