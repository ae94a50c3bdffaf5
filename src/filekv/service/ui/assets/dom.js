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

/**
 * Key text as the console shows it: nothing in it may hide, or reorder the text around it.
 * - C0 controls (U+0000-001F, U+007F) become their Unicode pictures (U+2400-2421: "␊").
 * - C1 controls (U+0080-009F), the bidi controls (U+061C, U+200E-200F, U+202A-202E,
 *   U+2066-2069), zero-width and invisible formatting characters (U+00AD, U+034F, U+115F-1160,
 *   U+17B4-17B5, U+180B-180F, U+200B-200D, U+2060-2065, U+206A-206F, U+3164, U+FEFF, U+FFA0,
 *   U+FFF9-FFFB, the tags U+E0000-E007F) and the line and paragraph separators (U+2028-2029)
 *   become a visible token naming the code point: "⟨U+202E⟩".
 * - Text holding a right-to-left letter is wrapped in FIRST STRONG ISOLATE ... POP DIRECTIONAL
 *   ISOLATE (U+2068 ... U+2069, invisible), so that it cannot reorder the sentence it is quoted
 *   in (a notice, a confirmation).
 */
const INVISIBLE = /[\u0080-\u009f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\ufeff\uffa0\ufff9-\ufffb\u{e0000}-\u{e007f}]/gu;
const RIGHT_TO_LEFT = /[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufefc\u{10800}-\u{10fff}\u{1e800}-\u{1efff}]/u;

export function printable(text) {
  const shown = text
    .replace(/[\u0000-\u001f\u007f]/g, (c) => String.fromCharCode(c === "\u007f" ? 0x2421 : 0x2400 + c.charCodeAt(0)))
    .replace(INVISIBLE, (c) => `⟨U+${c.codePointAt(0).toString(16).toUpperCase().padStart(4, "0")}⟩`);
  return RIGHT_TO_LEFT.test(shown) ? `\u2068${shown}\u2069` : shown;
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
