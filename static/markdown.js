// @ts-check
/**
 * A small Markdown subset for model answers, built as DOM nodes (never innerHTML): model text is
 * only ever a Text node, an attribute value of a checked http(s) link, or a clipboard string.
 *
 *   ```lang fenced code``` (also ~~~; an unclosed fence while streaming is code up to the end)
 *   `inline code`   **strong**   *emphasis*   [text](https://...)   # headings   > quotes   ---
 *   - / * / + bullet lists, 1. / 1) numbered lists (flat; an indented line continues the item)
 *   paragraphs (blank-line separated; single newlines kept as line breaks)
 *
 * Underscores are never emphasis (snake_case identifiers are common in answers about code), and
 * anything else (HTML tags included) is literal text.
 *
 * parseMarkdown(text) -> blocks (plain objects, testable without a DOM);
 * renderMarkdown(text, doc) -> DocumentFragment; code blocks carry a Copy button.
 */

/**
 * @typedef {{type: "text" | "code", text: string}
 *   | {type: "strong" | "em", children: Inline[]}
 *   | {type: "link", href: string, children: Inline[]}} Inline
 * @typedef {{type: "code", lang: string, text: string, closed: boolean}
 *   | {type: "p", inlines: Inline[]}
 *   | {type: "heading", level: number, inlines: Inline[]}
 *   | {type: "quote", inlines: Inline[]}
 *   | {type: "list", ordered: boolean, start: number, items: Inline[][]}
 *   | {type: "rule"}} Block
 */

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const BULLET = /^\s{0,8}[-*+]\s+(.*)$/;
const NUMBERED = /^\s{0,8}(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const LINK = /^\[([^\]\n]{1,500})\]\((https?:\/\/[^\s()<>"]{1,2000})\)/;
const ESCAPABLE = "\\`*_{}[]()#+-.!>~|";

/**
 * Blocks of `text`, in order.
 * @param {string} text
 * @returns {Block[]}
 */
export function parseMarkdown(text) {
  const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
  /** @type {Block[]} */ const blocks = [];
  /** @type {string[]} */ let para = [];
  /** @type {{ordered: boolean, start: number, items: string[][]} | null} */ let list = null;
  /** @type {string[]} */ let quote = [];

  const flush = () => {
    if (para.length) blocks.push({ type: "p", inlines: parseInline(para.join("\n")) });
    if (list) blocks.push({ type: "list", ordered: list.ordered, start: list.start,
                            items: list.items.map((item) => parseInline(item.join("\n"))) });
    if (quote.length) blocks.push({ type: "quote", inlines: parseInline(quote.join("\n")) });
    para = []; list = null; quote = [];
  };

  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = FENCE.exec(line);
    if (fence) {
      flush();
      const mark = fence[1];
      const body = [];
      let closed = false;
      for (i++; i < lines.length; i++) {
        const end = lines[i].trim();
        if (end.length >= mark.length && end[0] === mark[0] && end === end[0].repeat(end.length)) { closed = true; break; }
        body.push(lines[i]);
      }
      blocks.push({ type: "code", lang: fence[2].slice(0, 40), text: body.join("\n"), closed });
      continue;
    }
    if (!line.trim()) { flush(); continue; }
    const heading = HEADING.exec(line);
    if (heading) { flush(); blocks.push({ type: "heading", level: heading[1].length, inlines: parseInline(heading[2]) }); continue; }
    if (RULE.test(line)) { flush(); blocks.push({ type: "rule" }); continue; }
    const bullet = BULLET.exec(line), numbered = bullet ? null : NUMBERED.exec(line);
    if (bullet || numbered) {
      const ordered = !!numbered;
      if (!list || list.ordered !== ordered) {
        flush();
        list = { ordered, start: numbered ? Number(numbered[1]) : 1, items: [] };
      }
      list.items.push([bullet ? bullet[1] : /** @type {RegExpExecArray} */ (numbered)[2]]);
      continue;
    }
    const q = QUOTE.exec(line);
    if (q && !para.length && !list) { quote.push(q[1]); continue; }
    if (list && /^\s/.test(line)) { list.items[list.items.length - 1].push(line.trim()); continue; }
    if (list || quote.length) flush();
    para.push(line);
  }
  flush();
  return blocks;
}

/**
 * Inline spans of one block's text.
 * @param {string} s
 * @returns {Inline[]}
 */
export function parseInline(s) {
  /** @type {Inline[]} */ const out = [];
  let text = "";
  const flush = () => { if (text) { out.push({ type: "text", text }); text = ""; } };
  let i = 0;
  while (i < s.length) {
    const c = s[i];
    if (c === "\\" && i + 1 < s.length && ESCAPABLE.includes(s[i + 1])) { text += s[i + 1]; i += 2; continue; }
    if (c === "`") {
      let n = 1;
      while (s[i + n] === "`") n++;
      const end = closingRun(s, "`", n, i + n);
      if (end >= 0) {
        let code = s.slice(i + n, end).replace(/\n/g, " ");
        if (code.length > 2 && code.startsWith(" ") && code.endsWith(" ")) code = code.slice(1, -1);
        flush(); out.push({ type: "code", text: code }); i = end + n; continue;
      }
      text += "`".repeat(n); i += n; continue;
    }
    if (c === "*") {
      const n = s[i + 1] === "*" ? 2 : 1;
      const end = closingRun(s, "*", n, i + n);
      if (end > i + n && !/\s/.test(s[i + n]) && !/\s/.test(s[end - 1])) {
        flush();
        out.push({ type: n === 2 ? "strong" : "em", children: parseInline(s.slice(i + n, end)) });
        i = end + n; continue;
      }
      text += "*".repeat(n); i += n; continue;
    }
    if (c === "[") {
      const m = LINK.exec(s.slice(i, i + 2600));
      if (m) { flush(); out.push({ type: "link", href: m[2], children: parseInline(m[1]) }); i += m[0].length; continue; }
    }
    text += c; i++;
  }
  flush();
  return out;
}

/** Where the next run of exactly `n` `ch` starts at or after `from`, or -1. */
function closingRun(/** @type {string} */ s, /** @type {string} */ ch, /** @type {number} */ n, /** @type {number} */ from) {
  for (let j = s.indexOf(ch, from); j >= 0; j = s.indexOf(ch, j + 1)) {
    let k = j;
    while (s[k] === ch) k++;
    if (k - j === n) return j;
    j = k - 1;
  }
  return -1;
}

/**
 * `text` as DOM nodes.
 * @param {string} text
 * @param {Document} [doc]
 * @returns {DocumentFragment}
 */
export function renderMarkdown(text, doc = document) {
  const frag = doc.createDocumentFragment();
  for (const block of parseMarkdown(text)) frag.append(blockNode(block, doc));
  return frag;
}

/** @param {Block} b @param {Document} doc @returns {Node} */
function blockNode(b, doc) {
  switch (b.type) {
    case "code": return codeBlock(b.text, b.lang, doc);
    case "p": return withInlines(doc.createElement("p"), b.inlines, doc);
    case "heading": return withInlines(doc.createElement(`h${Math.min(b.level + 2, 6)}`), b.inlines, doc);
    case "quote": return withInlines(doc.createElement("blockquote"), b.inlines, doc);
    case "rule": return doc.createElement("hr");
    case "list": {
      const el = doc.createElement(b.ordered ? "ol" : "ul");
      if (b.ordered && b.start !== 1) /** @type {HTMLOListElement} */ (el).start = b.start;
      for (const item of b.items) el.append(withInlines(doc.createElement("li"), item, doc));
      return el;
    }
  }
}

/** @param {HTMLElement} el @param {Inline[]} inlines @param {Document} doc */
function withInlines(el, inlines, doc) {
  for (const span of inlines) {
    if (span.type === "text") el.append(doc.createTextNode(span.text));
    else if (span.type === "code") { const c = doc.createElement("code"); c.textContent = span.text; el.append(c); }
    else if (span.type === "link") {
      const a = doc.createElement("a");
      a.href = span.href; a.target = "_blank"; a.rel = "noopener noreferrer nofollow";
      el.append(withInlines(a, span.children, doc));
    } else el.append(withInlines(doc.createElement(span.type), span.children, doc));
  }
  return el;
}

/** A code block with its language and a Copy button. */
function codeBlock(/** @type {string} */ text, /** @type {string} */ lang, /** @type {Document} */ doc) {
  const box = doc.createElement("div");
  box.className = "codeblock";
  const bar = doc.createElement("div");
  bar.className = "codebar";
  const label = doc.createElement("span");
  label.textContent = lang || "code";
  const copy = doc.createElement("button");
  copy.type = "button";
  copy.className = "copy";
  copy.textContent = "Copy";
  copy.addEventListener("click", () => copyText(text, copy, code));
  bar.append(label, copy);
  const pre = doc.createElement("pre");
  const code = doc.createElement("code");
  code.textContent = text;
  pre.append(code);
  box.append(bar, pre);
  return box;
}

/** Put `text` on the clipboard; where the Clipboard API is refused, select the code for Ctrl+C. */
function copyText(/** @type {string} */ text, /** @type {HTMLButtonElement} */ button, /** @type {HTMLElement} */ code) {
  const done = (/** @type {string} */ label) => {
    button.textContent = label;
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  };
  const select = () => {
    const range = document.createRange();
    range.selectNodeContents(code);
    const sel = getSelection();
    sel?.removeAllRanges(); sel?.addRange(range);
    done("Selected");
  };
  if (navigator.clipboard?.writeText) navigator.clipboard.writeText(text).then(() => done("Copied"), select);
  else select();
}
