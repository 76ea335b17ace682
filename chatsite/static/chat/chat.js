// The room page: history from the events API, then live events over one WebSocket.
//
// Every durable event carries a seq. `lastSeq` is the highest one applied and anything at or
// below it is ignored, so a resumed socket (`after=lastSeq`) never shows a message twice or out
// of order. Commands wait in `pending` (client_id -> frame) until acked and are re-sent with the
// same client_id after a reconnect; the server applies a client_id once and acks it again. They
// leave one at a time, oldest first, so a retried one is never overtaken by a later one.
// User text only ever reaches the page through textContent (text.js builds links and mentions
// with DOM calls).
//
// Reading: the page opens on the newest events and loads older ones as the list is scrolled up
// (the events API's `before=`). What the reader has seen (the page visible, the list at its
// end) is reported to the server (`readUrl`, a position that never goes back); the "new
// messages" line, the tab title's count and mention notifications follow from it.

import { MentionCompleter } from "./mentions.js";
import { ReadReporter, notifyButton, notifyMention } from "./reading.js";
import { mentions, renderBody } from "./text.js";
import { decorate } from "./timeline.js";

const config = JSON.parse(document.getElementById("chat-config").textContent);

const HISTORY_EVENTS = 200; // the page opens on the newest events; older ones load on scroll
const OLDER_PAGE = 100; // events per scroll-back request
const OLDER_AT_PX = 150; // scrolled this close to the top: load older messages
const FILL_PAGES = 5; // at most this many scroll-back pages to fill a tall screen at start
const ORPHANS_KEPT = 1000; // edits and deletes kept for messages not loaded (yet)
const PAGE_LIMIT = 250;
const TYPING_SEND_MS = 2000; // at most one `typing` frame per this, while typing
const TYPING_SHOW_MS = 3000; // how long "x is typing…" stays without a new one
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 15000;
const STABLE_MS = 10000; // a socket that lived this long resets the backoff
const RETRY_MS = 2000; // `unavailable` or `rate_limited`: the same frame again after about this
const RETRYABLE = new Set(["unavailable", "rate_limited"]);
const NOTICE_MS = 8000;
const GUEST_NAME_KEY = "chat.guestName";
const BASE_TITLE = document.title;

const $ = (id) => document.getElementById(id);
const el = {
  status: $("status"),
  messages: $("messages"),
  online: $("online"),
  onlineCount: $("online-count"),
  typing: $("typing"),
  notices: $("notices"),
  composer: $("composer"),
  body: $("composer-body"),
  counter: $("counter"),
  send: $("send"),
  identity: $("identity"),
  guestForm: $("guest-form"),
  guestName: $("guest-name"),
  guestError: $("guest-error"),
  template: $("message-template"),
  retryNow: $("retry-now"),
  older: $("older"),
  search: $("search"),
  searchQ: $("search-q"),
  searchResults: $("search-results"),
  notify: $("notify"),
  mentionList: $("mention-list"),
};

const state = {
  me: config.user, // the server's name for us, confirmed by `hello`
  myAuthor: null, // our author token from `hello`: which messages are ours (not the name)
  canModerate: Boolean(config.isStaff), // may change anyone's messages (`hello` confirms)
  guestName: null,
  lastSeq: 0,
  messages: new Map(), // message id -> record
  unconfirmed: new Map(), // client_id of an own send not yet seen as a `message` -> record
  pending: new Map(), // client_id -> {frame, record}, oldest first, until acked or refused
  inflight: null, // client_id of the command on the wire, waiting for its answer
  online: new Set(),
  typers: new Map(), // user -> time their indicator expires
  socket: null,
  stopped: false, // the room is gone or closed to us: no more reconnects
  helloSeen: false,
  openedAt: 0,
  attempt: 0,
  retryTimer: null,
  lastError: null, // the last error frame without a client_id: it explains a 4403 close
  lastTypingSent: 0,
  connectedText: "Connected",
  retryAt: 0, // when the next reconnect is due (the status counts down to it)
  countdown: null,
  // Reading.
  firstSeq: null, // the lowest seq loaded (older ones are fetched on scroll)
  noOlder: true,
  loadingOlder: null, // the running scroll-back request
  orphans: new Map(), // message id -> edits and deletes of it seen before it was loaded
  newAfter: config.lastRead ?? null, // the "new messages" line goes above others' seqs > this
  seenSeq: config.lastRead ?? 0, // the highest seq the reader has had in front of them
  live: false, // history is loaded: what arrives now is news (counted, notified)
  decorateQueued: false,
  stick: false, // keep the list at its end after the next decoration
};
const recordOfNode = new WeakMap();

// -- small helpers ---------------------------------------------------------------------------

const charCount = (text) => [...text].length; // code points, as the server counts them

function newClientId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16)); // randomUUID needs https
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function setStatus(kind, text) {
  el.status.dataset.state = kind;
  el.status.textContent = text;
  if (kind !== "retry") {
    clearInterval(state.countdown);
    state.countdown = null;
  }
  if (el.retryNow) el.retryNow.hidden = kind !== "retry";
}

// Reconnecting: the status counts the seconds down, and "Retry now" skips the wait.
function showCountdown() {
  const left = Math.max(0, Math.ceil((state.retryAt - Date.now()) / 1000));
  setStatus("retry", left ? `Reconnecting in ${left} s…` : "Reconnecting…");
  if (!state.countdown) state.countdown = setInterval(showCountdown, 1000);
}

// A line above the messages; it fades after a while unless it stays true (`sticky`).
function notice(text, { sticky = false } = {}) {
  const last = el.notices.lastElementChild;
  if (last && last.textContent === text) return;
  const p = document.createElement("p");
  p.className = "notice";
  p.textContent = text;
  el.notices.append(p);
  while (el.notices.childElementCount > 3) el.notices.firstElementChild.remove();
  if (!sticky) setTimeout(() => p.remove(), NOTICE_MS);
}

function nearBottom() {
  const m = el.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}

function scrollToBottom() {
  el.messages.scrollTop = el.messages.scrollHeight;
}

// -- messages --------------------------------------------------------------------------------

function buildNode(record) {
  const node = el.template.content.firstElementChild.cloneNode(true);
  record.node = node;
  recordOfNode.set(node, record);
  renderMessage(record);
  return node;
}

// Ours by author token (two guests may share a display name); an unsent one has no author yet.
function isOwn(r) {
  if (r.author && state.myAuthor) return r.author === state.myAuthor;
  return !r.id && r.user === state.me;
}

function renderMessage(r) {
  const n = r.node;
  const own = isOwn(r);
  n.classList.toggle("own", own);
  n.classList.toggle("deleted", Boolean(r.deleted));
  n.classList.toggle("unsent", !r.id);
  n.classList.toggle("failed", Boolean(r.failed));
  n.dataset.id = r.id || "";
  n.querySelector(".author").textContent = (r.user || "you") + (r.guest ? " (guest)" : "");
  n.querySelector(".author").title = r.guest ? "a guest: not a registered account" : "";
  const time = n.querySelector(".time");
  const date = new Date(r.ts);
  time.dateTime = date.toISOString();
  time.title = date.toLocaleString();
  time.textContent = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const edited = n.querySelector(".edited");
  edited.hidden = !r.edited || r.deleted;
  edited.textContent = r.editedBy ? `(edited by moderator ${r.editedBy})` : "(edited)";
  n.querySelector(".state").textContent = r.failed || r.busy || (r.id ? "" : "sending…");
  if (!n.querySelector(".edit-form")) {
    const gone = r.deletedBy ? `message deleted by moderator ${r.deletedBy}` : "message deleted";
    const body = n.querySelector(".body");
    if (r.deleted) body.textContent = gone;
    else renderBody(body, r.body, state.me);
  }
  n.classList.toggle("mentions-me", mentionsMe(r));
  const mayChange = r.id && !r.deleted && (own || state.canModerate) && canChat() && !r.failed;
  n.querySelector(".actions").hidden = !mayChange;
}

function mentionsMe(r) {
  return Boolean(r.body && !r.deleted && !isOwn(r) && mentions(r.body, state.me));
}

// Day lines and the "new messages" line, once per burst of changes (a microtask later).
function redecorate({ stick = false } = {}) {
  state.stick = state.stick || stick;
  if (state.decorateQueued) return;
  state.decorateQueued = true;
  queueMicrotask(decorateNow);
}

function decorateNow() {
  state.decorateQueued = false;
  const recordOf = (node) => {
    const r = recordOfNode.get(node);
    return r && { seq: r.seq, ts: r.ts, own: isOwn(r) };
  };
  decorate(el.messages, recordOf, state.newAfter);
  if (state.stick) scrollToBottom();
  state.stick = false;
  renderTitle();
}

// Messages in seq order first, then own sends that have no place yet (no `message` frame seen).
function placeConfirmed(node) {
  node.classList.remove("unplaced");
  el.messages.insertBefore(node, el.messages.querySelector(".unplaced"));
}

function addMessage(ev) {
  const atBottom = nearBottom();
  state.typers.delete(ev.user);
  let record = state.messages.get(ev.id); // an own send, known by its ack
  const own = ev.client_id ? state.unconfirmed.get(ev.client_id) : undefined;
  if (own && (ev.author ? ev.author === state.myAuthor : own.user === ev.user)) {
    record = own;
    state.unconfirmed.delete(ev.client_id);
    settle(ev.client_id); // durable already: no need to send it again
  }
  if (record && record.seq) return;
  const who = { author: ev.author, guest: Boolean(ev.guest) };
  if (record) {
    Object.assign(record, { id: ev.id, seq: ev.seq, body: ev.body, ts: ev.ts, busy: "", ...who });
    renderMessage(record);
  } else {
    record = { id: ev.id, seq: ev.seq, user: ev.user, body: ev.body, ts: ev.ts, ...who };
    buildNode(record);
  }
  state.messages.set(ev.id, record);
  placeConfirmed(record.node);
  applyOrphans(record);
  renderTyping();
  if (state.live && record.seq > state.seenSeq && mentionsMe(record)) notifyMention(record, config);
  redecorate({ stick: atBottom });
  markSeen();
}

function applyEvent(ev) {
  if (typeof ev.seq !== "number" || ev.seq <= state.lastSeq) return;
  state.lastSeq = ev.seq;
  if (ev.type === "message") {
    addMessage(ev);
    return;
  }
  const record = state.messages.get(ev.id);
  if (!record) {
    keepOrphan(ev); // its message is older than what this page loaded (so far)
    return;
  }
  changeMessage(record, ev);
  redecorate();
}

function changeMessage(record, ev) {
  // A moderator's change shows as theirs, never as the author's own words.
  const by = ev.moderator ? ev.user : null;
  if (ev.type === "edit") Object.assign(record, { body: ev.body, edited: true, editedBy: by });
  if (ev.type === "delete") Object.assign(record, { deleted: true, deletedBy: by });
  renderMessage(record);
}

function keepOrphan(ev) {
  if (state.orphans.size >= ORPHANS_KEPT && !state.orphans.has(ev.id)) return;
  state.orphans.set(ev.id, [...(state.orphans.get(ev.id) || []), ev]);
}

function applyOrphans(record) {
  const later = state.orphans.get(record.id);
  if (!later) return;
  state.orphans.delete(record.id);
  for (const ev of later) changeMessage(record, ev);
}

// -- commands --------------------------------------------------------------------------------

function socketReady() {
  return state.socket && state.socket.readyState === WebSocket.OPEN && state.helloSeen;
}

function pump() {
  if (state.inflight || !socketReady()) return;
  const oldest = state.pending.values().next().value;
  if (!oldest) return;
  state.inflight = oldest.frame.client_id;
  state.socket.send(JSON.stringify(oldest.frame));
}

// The command is done with (acked, seen applied, or refused): the next one may go.
function settle(clientId) {
  state.pending.delete(clientId);
  if (state.inflight === clientId) {
    state.inflight = null;
    pump();
  }
}

function submit(frame, record, busy) {
  state.pending.set(frame.client_id, { frame, record });
  if (busy) {
    record.busy = busy;
    renderMessage(record);
  }
  pump();
}

function sendMessage() {
  const body = el.body.value.trim();
  if (!body || charCount(body) > config.maxBody) return;
  const clientId = newClientId();
  const record = { id: null, seq: null, user: state.me, body, ts: Date.now() };
  state.unconfirmed.set(clientId, record);
  el.messages.append(buildNode(record));
  record.node.classList.add("unplaced");
  redecorate({ stick: true });
  submit({ type: "send", body, client_id: clientId }, record);
  el.body.value = "";
  updateCounter();
}

function onAck(ack) {
  const entry = state.pending.get(ack.client_id);
  settle(ack.client_id);
  if (!entry) return;
  const { frame, record } = entry;
  if (frame.type === "send" && !record.id) {
    record.id = ack.id; // its `message` frame gives it its place when it comes
    state.messages.set(ack.id, record);
  }
  record.busy = "";
  renderMessage(record);
}

function onError(err) {
  const entry = err.client_id ? state.pending.get(err.client_id) : undefined;
  if (!entry) {
    state.lastError = err;
    if (err.code !== "forbidden") notice(err.detail);
    return;
  }
  if (RETRYABLE.has(err.code)) {
    if (err.code === "rate_limited") notice("Slow down a little; your message will follow.");
    const delay = RETRY_MS * (0.5 + Math.random());
    setTimeout(() => {
      if (state.inflight === err.client_id && socketReady()) {
        state.socket.send(JSON.stringify(entry.frame));
      }
    }, delay);
    return;
  }
  settle(err.client_id);
  const { frame, record } = entry;
  record.busy = "";
  if (frame.type === "send") {
    state.unconfirmed.delete(err.client_id);
    record.failed = `not sent: ${err.detail}`;
  } else {
    notice(`Could not ${frame.type} the message: ${err.detail}`);
  }
  renderMessage(record);
}

function startEdit(record) {
  const body = record.node.querySelector(".body");
  if (body.querySelector(".edit-form")) return;
  const form = document.createElement("form");
  form.className = "edit-form";
  const area = document.createElement("textarea");
  area.value = record.body;
  area.rows = Math.min(8, record.body.split("\n").length + 1);
  const row = document.createElement("div");
  row.className = "row";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.className = "link";
  cancel.textContent = "Cancel";
  const save = document.createElement("button");
  save.type = "submit";
  save.textContent = "Save";
  row.append(cancel, save);
  form.append(area, row);
  body.replaceChildren(form);
  area.focus();

  const close = () => {
    form.remove();
    renderMessage(record);
  };
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = area.value.trim();
    if (text && text !== record.body && charCount(text) <= config.maxBody) {
      const frame = { type: "edit", id: record.id, body: text, client_id: newClientId() };
      submit(frame, record, "saving…");
    }
    close();
  });
  cancel.addEventListener("click", close);
  area.addEventListener("keydown", (e) => {
    if (e.key === "Escape") close();
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
}

el.messages.addEventListener("click", (e) => {
  const button = e.target.closest("button[data-action]");
  if (!button) return;
  const record = state.messages.get(button.closest(".message").dataset.id);
  if (!record || record.deleted) return;
  if (button.dataset.action === "edit") startEdit(record);
  if (button.dataset.action === "delete" && confirm("Delete this message?")) {
    submit({ type: "delete", id: record.id, client_id: newClientId() }, record, "deleting…");
  }
});

// -- reading: what was seen, the title, notifications, older messages ------------------------

function pageInView() {
  return document.visibilityState === "visible";
}

function hasReader() {
  return Boolean(config.readUrl && (config.user || state.guestName));
}

const reporter = new ReadReporter(config.readUrl, config.lastRead ?? 0);

// The reader has seen everything up to the newest event when the page is in view and the list
// is at its end; then the title's count clears and the server hears of it (soon, once).
function markSeen() {
  if (!state.live || !pageInView() || !nearBottom()) return;
  if (state.lastSeq > state.seenSeq) state.seenSeq = state.lastSeq;
  renderTitle();
  if (hasReader()) reporter.seen(state.seenSeq);
}

function unseen() {
  let count = 0;
  let mentioned = false;
  for (const r of state.messages.values()) {
    if (r.seq > state.seenSeq && !r.deleted && !isOwn(r)) {
      count += 1;
      mentioned = mentioned || mentionsMe(r);
    }
  }
  return { count, mentioned };
}

// "(3) Room · Chat"; "(@3)" when one of them mentions the reader.
function renderTitle() {
  const { count, mentioned } = unseen();
  document.title = count ? `(${mentioned ? "@" : ""}${count}) ${BASE_TITLE}` : BASE_TITLE;
}

const renderNotifyButton = el.notify ? notifyButton(el.notify, canChat, notice) : () => {};

document.addEventListener("visibilitychange", () => {
  if (pageInView()) {
    markSeen();
    return;
  }
  // Away: what arrives from now on goes under a new "new messages" line, unless an earlier
  // line still marks messages not seen yet.
  if (!unseen().count) {
    state.newAfter = state.lastSeq;
    redecorate();
  }
  reporter.flush();
});

// Older events, just below the lowest one loaded, put above it without moving what is shown.
async function loadOlder() {
  if (state.loadingOlder || state.noOlder) return state.loadingOlder;
  state.loadingOlder = (async () => {
    renderOlder("Loading older messages…");
    try {
      const before = state.firstSeq;
      const page = await getJSON(`${config.eventsUrl}?before=${before}&limit=${OLDER_PAGE}`);
      const older = page.events.filter((ev) => ev.seq < before);
      const kept = page.first_available || 1;
      if (older.length) {
        const list = el.messages;
        const fromBottom = list.scrollHeight - list.scrollTop;
        prependEvents(older);
        state.firstSeq = older[0].seq;
        decorateNow();
        list.scrollTop = list.scrollHeight - fromBottom;
      }
      state.noOlder = !older.length || state.firstSeq <= kept;
    } catch {
      notice("Could not load older messages; scroll up to try again.");
    } finally {
      state.loadingOlder = null;
      renderOlder();
    }
  })();
  return state.loadingOlder;
}

function prependEvents(events) {
  const anchor = el.messages.querySelector(":scope > .message");
  for (const ev of events) {
    if (ev.type === "message" && !state.messages.has(ev.id)) {
      const record = { id: ev.id, seq: ev.seq, user: ev.user, body: ev.body, ts: ev.ts };
      Object.assign(record, { author: ev.author, guest: Boolean(ev.guest) });
      el.messages.insertBefore(buildNode(record), anchor);
      state.messages.set(ev.id, record);
    } else if (ev.type !== "message") {
      const record = state.messages.get(ev.id);
      if (record) changeMessage(record, ev);
    }
  }
  // Edits and deletes that came later, while these messages were not loaded.
  for (const ev of events) {
    const record = ev.type === "message" ? state.messages.get(ev.id) : null;
    if (record) applyOrphans(record);
  }
}

function renderOlder(busy) {
  if (!el.older) return;
  el.older.hidden = state.noOlder && !busy;
  el.older.disabled = Boolean(busy);
  el.older.textContent = busy || "Load older messages";
}

if (el.older) el.older.addEventListener("click", () => loadOlder());
if (el.search) el.search.addEventListener("submit", search);
el.messages.addEventListener("scroll", () => {
  if (el.messages.scrollTop < OLDER_AT_PX && state.live) loadOlder();
  markSeen();
});

// -- presence and typing ---------------------------------------------------------------------

function renderOnline() {
  const names = [...state.online].sort((a, b) => a.localeCompare(b));
  el.online.replaceChildren(
    ...names.map((name) => {
      const li = document.createElement("li");
      li.textContent = name === state.me ? `${name} (you)` : name;
      return li;
    }),
  );
  el.onlineCount.textContent = names.length ? `(${names.length})` : "";
}

function onTyping(user) {
  if (user === state.me) return;
  state.typers.set(user, Date.now() + TYPING_SHOW_MS);
  renderTyping();
  setTimeout(renderTyping, TYPING_SHOW_MS + 50);
}

function renderTyping() {
  const now = Date.now();
  for (const [user, until] of state.typers) if (until <= now) state.typers.delete(user);
  const users = [...state.typers.keys()];
  let text = "";
  if (users.length === 1) text = `${users[0]} is typing…`;
  else if (users.length === 2) text = `${users[0]} and ${users[1]} are typing…`;
  else if (users.length > 2) text = "Several people are typing…";
  el.typing.textContent = text;
}

// -- composer --------------------------------------------------------------------------------

function updateCounter() {
  if (!el.body) return;
  const count = charCount(el.body.value);
  el.counter.textContent = `${count} / ${config.maxBody}`;
  el.counter.classList.toggle("over", count > config.maxBody);
  el.send.disabled = !el.body.value.trim() || count > config.maxBody;
}

function canChat() {
  return !state.stopped && Boolean(config.user || (config.guestsAllowed && state.guestName));
}

if (el.composer && el.mentionList) {
  // Before the composer's own keys, so that Enter picks a name while the list is open.
  new MentionCompleter(el.body, el.mentionList, () =>
    [...state.online].filter((name) => name !== state.me),
  );
}

// ArrowUp in an empty composer edits one's last message, as in most chat apps.
function editLastOwn() {
  const own = [...state.messages.values()].filter((r) => r.id && !r.deleted && isOwn(r));
  const last = own.sort((a, b) => (a.seq || 0) - (b.seq || 0)).at(-1);
  if (last) startEdit(last);
  return Boolean(last);
}

if (el.composer) {
  el.composer.addEventListener("submit", (e) => {
    e.preventDefault();
    sendMessage();
  });
  el.body.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      sendMessage();
    } else if (e.key === "ArrowUp" && !el.body.value && editLastOwn()) {
      e.preventDefault();
    }
  });
  el.body.addEventListener("input", () => {
    updateCounter();
    const now = Date.now();
    if (el.body.value.trim() && now - state.lastTypingSent >= TYPING_SEND_MS && socketReady()) {
      state.lastTypingSent = now;
      state.socket.send(JSON.stringify({ type: "typing" }));
    }
  });
}

// -- the socket ------------------------------------------------------------------------------

function connect() {
  clearTimeout(state.retryTimer);
  state.retryTimer = null;
  // A guest's identity is its session (the guest form made it), not a name in the URL.
  const params = new URLSearchParams({ after: String(state.lastSeq) });
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}${config.socketPath}?${params}`);
  Object.assign(state, { socket, helloSeen: false, lastError: null, inflight: null });
  setStatus("wait", state.attempt ? "Reconnecting…" : "Connecting…");
  socket.addEventListener("message", (e) => {
    if (state.socket !== socket || typeof e.data !== "string") return;
    let frame;
    try {
      frame = JSON.parse(e.data);
    } catch {
      return;
    }
    onFrame(frame);
  });
  socket.addEventListener("close", (e) => {
    if (state.socket !== socket) return; // replaced on purpose
    state.socket = null;
    onClose(e.code);
  });
}

function disconnect() {
  clearTimeout(state.retryTimer);
  state.retryTimer = null;
  const socket = state.socket;
  state.socket = null;
  if (socket) socket.close(1000);
}

function onFrame(frame) {
  switch (frame.type) {
    case "hello":
      onHello(frame);
      break;
    case "message":
    case "edit":
    case "delete":
      applyEvent(frame);
      break;
    case "ack":
      onAck(frame);
      break;
    case "error":
      onError(frame);
      break;
    case "presence_state":
      state.online = new Set(frame.users);
      renderOnline();
      break;
    case "presence_diff":
      for (const user of frame.joins || []) state.online.add(user);
      for (const user of frame.leaves || []) state.online.delete(user);
      renderOnline();
      break;
    case "typing":
      onTyping(frame.user);
      break;
    case "gap": {
      const from = frame.first_available;
      const text = `Some earlier messages are no longer kept; the log resumes at #${from}.`;
      notice(text, { sticky: true });
      break;
    }
  }
}

function onHello(hello) {
  state.helloSeen = true;
  state.openedAt = Date.now();
  state.canModerate = Boolean(hello.moderator);
  if (hello.author && hello.author !== state.myAuthor) {
    state.myAuthor = hello.author;
    for (const record of state.messages.values()) renderMessage(record);
  }
  if (hello.user !== state.me) {
    state.me = hello.user;
    for (const record of state.unconfirmed.values()) record.user = hello.user;
    for (const record of [...state.messages.values(), ...state.unconfirmed.values()]) {
      renderMessage(record);
    }
  }
  state.connectedText = `Connected${hello.node ? ` · ${hello.node}` : ""}`;
  setStatus("ok", state.connectedText);
  renderIdentity();
  renderNotifyButton();
  markSeen();
  state.inflight = null;
  pump(); // what was not acked goes again, same client_id: the server applies it once
}

function onClose(code) {
  if (state.helloSeen && Date.now() - state.openedAt > STABLE_MS) state.attempt = 0;
  state.helloSeen = false;
  state.online.clear();
  state.typers.clear();
  renderOnline();
  renderTyping();
  if (code === 4404) {
    stop("This room no longer exists.");
    return;
  }
  if (code === 4403) {
    const reason = state.lastError && state.lastError.detail;
    if (!config.user && reason) {
      // A refused display name (taken by a registered user, say): ask for another.
      localStorage.removeItem(GUEST_NAME_KEY);
      askGuestName(reason);
      return;
    }
    stop(reason ? `You can't join: ${reason}` : "This room is closed.");
    return;
  }
  if (!navigator.onLine) {
    showOffline(); // the browser's "online" event reconnects
    return;
  }
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** state.attempt);
  const wait = ceiling / 2 + (Math.random() * ceiling) / 2;
  state.attempt += 1;
  state.retryAt = Date.now() + wait;
  state.retryTimer = setTimeout(connect, wait);
  showCountdown();
}

function showOffline() {
  setStatus("bad", "Offline: waiting for the network");
}

function stop(reason) {
  setStatus("bad", reason);
  notice(reason, { sticky: true });
  if (el.composer) el.composer.hidden = true;
  if (el.guestForm) el.guestForm.hidden = true;
  state.stopped = true;
  clearTimeout(state.retryTimer);
  for (const record of state.messages.values()) renderMessage(record);
}

// Leave at once when the page goes away (and come back if the browser restores it from cache),
// so others do not see us online until the server notices a dead socket.
window.addEventListener("pagehide", () => {
  disconnect();
  reporter.flush();
});
window.addEventListener("pageshow", (e) => {
  if (e.persisted && canChat() && !state.socket) connect();
});

window.addEventListener("online", () => {
  if (!canChat()) return;
  if (socketReady()) setStatus("ok", state.connectedText);
  else if (!state.socket) connect(); // no need to wait the backoff out
});
// The browser knows it has no network: say so at once (the socket, if it still looks open,
// is of no use until the network is back).
window.addEventListener("offline", () => {
  if (canChat()) showOffline();
});
if (el.retryNow) el.retryNow.addEventListener("click", () => connect());

// -- guests ----------------------------------------------------------------------------------

function guestNameProblem(name) {
  if (!name) return "Choose a display name.";
  if (charCount(name) > config.guestNameMax) {
    return `A display name has at most ${config.guestNameMax} characters.`;
  }
  // Controls and invisible format characters (zero-width, bidi); the server checks the rest.
  if (/[\u0000-\u001f\u007f\p{Cf}]/u.test(name)) {
    return "A display name cannot contain invisible or control characters.";
  }
  return null;
}

function askGuestName(problem) {
  disconnect();
  state.guestName = null;
  el.composer.hidden = true;
  el.guestForm.hidden = false;
  setStatus("wait", "Choose a name to join");
  el.guestError.hidden = !problem;
  el.guestError.textContent = problem || "";
  el.guestName.focus();
}

function renderIdentity() {
  if (!el.identity) return;
  el.identity.textContent = `as ${state.me}`;
  if (config.user) return;
  const change = document.createElement("button");
  change.type = "button";
  change.className = "link";
  change.textContent = "change name";
  change.addEventListener("click", () => askGuestName());
  el.identity.append(" · ", change);
}

function joinedAsGuest(name) {
  state.guestName = name;
  state.me = name;
  el.guestForm.hidden = true;
  el.composer.hidden = false;
  renderIdentity();
  connect();
}

// The guest form: the server keeps a guest id and the name in this browser's session (the
// socket's identity); it refuses names too close to a registered user's.
async function joinAsGuest(name) {
  const body = new FormData(el.guestForm);
  body.set("name", name);
  let answer;
  try {
    const response = await fetch(config.guestUrl, { method: "POST", body });
    answer = await response.json();
    if (!response.ok) {
      localStorage.removeItem(GUEST_NAME_KEY);
      askGuestName(answer.detail || "That name cannot be used.");
      return;
    }
  } catch {
    askGuestName("Could not join; try again.");
    return;
  }
  localStorage.setItem(GUEST_NAME_KEY, answer.name);
  joinedAsGuest(answer.name);
}

if (el.guestForm) {
  el.guestForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const name = el.guestName.value.trim();
    const problem = guestNameProblem(name);
    if (problem) {
      askGuestName(problem);
      return;
    }
    joinAsGuest(name);
  });
}

// -- search ----------------------------------------------------------------------------------

// The room's archived messages holding every word, newest first (the archive lags the live
// room by a few seconds: the newest messages are found a little later).
async function search(event) {
  event.preventDefault();
  const q = el.searchQ.value.trim();
  const list = el.searchResults;
  list.replaceChildren();
  list.hidden = !q;
  if (!q) return;
  const line = (text) => {
    const li = document.createElement("li");
    li.textContent = text;
    list.append(li);
  };
  try {
    const response = await fetch(`${config.searchUrl}?q=${encodeURIComponent(q)}&limit=50`, {
      headers: { Accept: "application/json" },
    });
    const body = await response.json();
    if (!response.ok) {
      line(body.detail || `Search failed (HTTP ${response.status}).`);
      return;
    }
    if (!body.results.length) line("No archived message holds all of these words.");
    for (const found of body.results) {
      const li = document.createElement("li");
      const meta = document.createElement("span");
      meta.className = "meta";
      meta.textContent = `${found.user} · ${new Date(found.ts).toLocaleString()}`;
      const text = document.createElement("span");
      text.textContent = found.body;
      li.append(meta, text);
      list.append(li);
    }
  } catch (error) {
    line("Search is unavailable; try again.");
  }
}

// -- start -----------------------------------------------------------------------------------

async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  if (response.status === 404) throw new Error("gone");
  if (!response.ok) throw new Error(`history: HTTP ${response.status}`);
  return response.json();
}

function fetchEvents(after, limit) {
  return getJSON(`${config.eventsUrl}?after=${after}&limit=${limit}`);
}

async function loadHistory() {
  if (state.lastSeq === 0) {
    const head = await fetchEvents(0, 1);
    state.lastSeq = Math.max(0, head.last_seq - HISTORY_EVENTS);
    state.firstSeq = state.lastSeq + 1;
    state.noOlder = state.lastSeq === 0 || (head.first_available || 1) > state.lastSeq;
  }
  for (;;) {
    const page = await fetchEvents(state.lastSeq, PAGE_LIMIT);
    if (page.first_available > state.lastSeq + 1) {
      notice("Some earlier messages are no longer kept.", { sticky: true });
    }
    page.events.forEach(applyEvent);
    if (!page.events.length || state.lastSeq >= page.last_seq) return;
  }
}

async function start() {
  updateCounter();
  for (let attempt = 0; ; attempt += 1) {
    try {
      await loadHistory();
      break;
    } catch (error) {
      if (error.message === "gone") {
        stop("This room no longer exists.");
        return;
      }
      const wait = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** attempt);
      setStatus("wait", "History is unavailable; trying again…");
      await new Promise((resolve) => setTimeout(resolve, wait / 2 + (Math.random() * wait) / 2));
    }
  }
  state.live = true;
  // A first visit has nothing "new": what is there is history, counted nowhere.
  if (config.lastRead === null || config.lastRead === undefined) state.seenSeq = state.lastSeq;
  decorateNow();
  // Open at the "new messages" line when there is one, else at the end.
  const divider = document.getElementById("new-messages");
  if (divider) divider.scrollIntoView({ block: "start" });
  else scrollToBottom();
  for (let i = 0; i < FILL_PAGES && !state.noOlder; i += 1) {
    if (el.messages.scrollHeight > el.messages.clientHeight + OLDER_AT_PX) break;
    await loadOlder(); // a tall screen and a short page: fill it
  }
  renderOlder();
  markSeen();
  if (config.user) {
    el.composer.hidden = false;
    renderIdentity();
    connect();
  } else if (config.guestsAllowed) {
    const saved = (localStorage.getItem(GUEST_NAME_KEY) || "").trim();
    if (config.guestName) joinedAsGuest(config.guestName);
    else if (saved && !guestNameProblem(saved)) joinAsGuest(saved);
    else askGuestName();
  } else {
    setStatus("ro", "Read only: log in to chat");
  }
}

start();
