// Small DOM helpers shared by the console's modules. Data from the server (keys, values, user
// names, error details) only ever reaches the page as text (textContent), never as HTML.

/** An element with attributes and children (strings become text nodes). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);

/** Control characters are invisible or break a line: show them as their Unicode pictures. */
export function printable(text) {
  return text.replace(/[\u0000-\u001f\u007f]/g, (c) =>
    String.fromCharCode(c === "\u007f" ? 0x2421 : 0x2400 + c.charCodeAt(0)),
  );
}

export function formatBytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${n} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** Copy text: the Clipboard API where the page may use it, else a hidden textarea. */
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = el("textarea", { class: "offscreen", readonly: true });
  area.value = text;
  document.body.append(area);
  area.select();
  const copied = document.execCommand("copy");
  area.remove();
  if (!copied) throw new Error("the browser refused to copy");
}

/**
 * Messages for the person: errors stay until dismissed (or pushed out by newer ones: at most
 * MAX_NOTICES are shown, newest last), successes go after a few seconds. Every API error is
 * shown with its detail.
 */
const MAX_NOTICES = 4;

export class Notices {
  constructor(root) {
    this.root = root;
  }

  error(text) {
    this.show(text, "error");
  }

  success(text) {
    this.show(text, "success", 4000);
  }

  show(text, kind, lifetime = 0) {
    // The same text again replaces the old one instead of stacking up.
    for (const old of this.root.querySelectorAll(".notice")) {
      if (old.firstChild.textContent === text) old.remove();
    }
    const close = el("button", { type: "button", class: "notice-close", "aria-label": "Dismiss" }, "×");
    const notice = el("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" },
      el("span", { class: "notice-text" }, text), close);
    close.addEventListener("click", () => notice.remove());
    this.root.append(notice);
    while (this.root.children.length > MAX_NOTICES) this.root.firstElementChild.remove();
    if (lifetime) setTimeout(() => notice.remove(), lifetime);
  }
}
