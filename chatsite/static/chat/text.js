// A message body as DOM nodes: plain text, http(s) links and @mentions.
//
// Nothing here parses HTML: every piece of user text becomes a Text node or an element's
// textContent, so a body full of tags and scripts shows as the characters it is. A link is
// made only from an http: or https: URL that the URL parser accepts; its href is the parsed
// URL (never the raw text), it opens in a new tab and gives the target no handle on this page
// and no referrer (rel="noopener noreferrer").

const LINK = /https?:\/\/[^\s<>"'`]+/giu;
const MENTION = /@([\p{L}\p{N}_][\p{L}\p{N}_.+-]*)/gu;
const NAME_CHAR = /[\p{L}\p{N}_]/u;
const TRAILING = /[.,;:!?'"\]}>]+$/u; // sentence punctuation after a URL is not part of it

function trimUrl(text) {
  let url = text.replace(TRAILING, "");
  // "(see https://x.org/a)": a closing parenthesis the URL did not open is the sentence's.
  while (url.endsWith(")") && (url.match(/\(/g) || []).length < (url.match(/\)/g) || []).length) {
    url = url.slice(0, -1).replace(TRAILING, "");
  }
  return url;
}

export function safeHref(text) {
  try {
    const url = new URL(text);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

// Whether `body` mentions `name` (case-insensitive; "@ann" does not mention "anna").
export function mentions(body, name) {
  if (!name || !body) return false;
  return mentionAt(body.toLowerCase(), name.toLowerCase()) >= 0;
}

function mentionAt(lowerBody, lowerName, from = 0) {
  for (let i = lowerBody.indexOf(`@${lowerName}`, from); i >= 0; ) {
    const before = i === 0 ? "" : lowerBody[i - 1];
    const after = lowerBody[i + 1 + lowerName.length] || "";
    if (!NAME_CHAR.test(before) && !NAME_CHAR.test(after)) return i;
    i = lowerBody.indexOf(`@${lowerName}`, i + 1);
  }
  return -1;
}

// The pieces of `body`: {kind: "text" | "link" | "mention", text, href?, me?}, in order.
export function tokenize(body, me) {
  const found = [];
  for (const m of body.matchAll(LINK)) {
    const text = trimUrl(m[0]);
    const href = safeHref(text);
    if (href) found.push({ kind: "link", start: m.index, end: m.index + text.length, href });
  }
  const lowerBody = body.toLowerCase();
  const lowerMe = (me || "").toLowerCase();
  for (const m of body.matchAll(MENTION)) {
    const start = m.index;
    if (start > 0 && NAME_CHAR.test(body[start - 1])) continue; // an address, not a mention
    if (found.some((t) => start >= t.start && start < t.end)) continue; // inside a link
    // Our own name may hold spaces or dots: it is matched whole.
    const mine = lowerMe && mentionAt(lowerBody, lowerMe, start) === start;
    const length = mine ? 1 + lowerMe.length : m[0].replace(/[.+-]+$/u, "").length;
    found.push({ kind: "mention", start, end: start + length, me: Boolean(mine) });
  }
  found.sort((a, b) => a.start - b.start);
  const pieces = [];
  let at = 0;
  for (const t of found) {
    if (t.start < at) continue;
    if (t.start > at) pieces.push({ kind: "text", text: body.slice(at, t.start) });
    pieces.push({ ...t, text: body.slice(t.start, t.end) });
    at = t.end;
  }
  if (at < body.length) pieces.push({ kind: "text", text: body.slice(at) });
  return pieces;
}

// `body` as nodes appended to `target` (its old children are replaced).
export function renderBody(target, body, me) {
  const nodes = tokenize(body, me).map((piece) => {
    if (piece.kind === "link") {
      const a = document.createElement("a");
      a.href = piece.href;
      a.textContent = piece.text;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      return a;
    }
    if (piece.kind === "mention") {
      const span = document.createElement("span");
      span.className = piece.me ? "mention me" : "mention";
      span.textContent = piece.text;
      return span;
    }
    return document.createTextNode(piece.text);
  });
  target.replaceChildren(...nodes);
}
