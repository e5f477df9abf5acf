// The browser client: one page that speaks the chat protocol
// (shared/protocol.md, parts 1 and 2) over a WebSocket to the server that
// served it. Plain modern JavaScript, no build step, no dependencies.
//
// Shape: `state` holds everything the page knows; handlers of server events
// change it and then call the render functions, which rebuild the affected
// parts of the DOM from it. Peer-controlled text (messages, names, error
// sentences) only ever reaches the page as text nodes (`textContent`), never
// as HTML; links are made only from http(s) URLs that parse.
//
// Safety of the password: it is kept in this module's memory, for
// reconnecting, and never stored; a reload asks for it again.

const PAGE = 50; // messages per history request
const WINDOW = 400; // messages kept per room: the rest is dropped and fetched again on scroll
const OTHER_ROOMS_KEEP = 100; // what a room that is not shown keeps
const TYPING_EVERY = 3000; // ms between our typing events
const TYPING_SHOWN = 5000; // ms a typing event is shown
const BACKOFF = [500, 1000, 2000, 4000, 8000, 15000]; // ms before reconnect attempts
const PING_EVERY = 30000; // ms between keep-alive pings
const QUICK_EMOJI = ["👍", "❤️", "😂", "🎉", "😮", "😢", "🙏", "👀"];

const $ = (id) => document.getElementById(id);
const el = (tag, className, text) => {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
};

let password = null; // in memory only, see the header

const state = {
  user: null,
  admin: false,
  features: new Set(),
  ws: null,
  online: false, // logged in on an open socket
  everOnline: false, // a login succeeded since the form was submitted
  loginId: null,
  register: false,
  nextId: 1,
  waiting: new Map(), // request id -> function(event) for its answer
  rooms: new Map(), // name -> room (see newRoom)
  current: null, // name of the room shown
  outbox: [], // sends not yet acked: {id, room, text, reply_to, status, error}
  attempt: 0, // reconnect attempts since the last welcome
  reconnectTimer: null,
  lastTyping: 0,
  selected: null, // seq of the selected message in the current room
  compose: null, // {mode: "reply" | "edit", seq}
  atBottom: true,
  pingTimer: null,
  pingOutstanding: false,
  search: null, // {query, room, next, loading}
  browse: null, // {after, loading}
  reacting: null, // seq the react dialog is for
};

function newRoom(name) {
  return {
    name,
    private: false,
    lastSeq: 0, // the room's newest seq, as far as we know
    read: 0, // our read marker
    rev: 0, // newest change counter applied
    seen: 0, // every message up to this seq was received (resume point)
    joined: false,
    joining: null, // {since, lastSeq, mine: [messages of ours in the backlog]}
    messages: [], // the window, ascending by seq
    hasOlder: false, // older messages exist before the window
    hasNewer: false, // the window stops before `seen`
    loading: false,
    members: new Set(),
    typing: new Map(), // user -> time it stops showing
    mentions: 0,
    afterJoin: null, // what to do once the join backlog is in
    sentRead: 0, // the read marker the server has
    readTimer: null,
    pageToken: 0, // answers to older page requests are ignored
  };
}

// ---------------------------------------------------------------- helpers

function isDm(name) {
  return name.includes("+");
}

/// How a room is named in the list: `@bob` for a DM, `🔒ops` for private.
function roomLabel(room) {
  if (isDm(room.name)) {
    const other = room.name.split("+").find((u) => u !== state.user);
    return "@" + (other || state.user);
  }
  return (room.private ? "🔒 " : "# ") + room.name;
}

function colourClass(user) {
  let hash = 0;
  for (const ch of user) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return "c" + (hash % 8);
}

function mentionsMe(text) {
  if (!state.user) return false;
  const escaped = state.user.replace(/[.\-]/g, "\\$&");
  return new RegExp(`(^|[^\\w.-])@?${escaped}(?![\\w-])`, "i").test(text);
}

function unread(room) {
  return Math.max(0, room.lastSeq - room.read);
}

function sameDay(a, b) {
  const x = new Date(a);
  const y = new Date(b);
  return x.getFullYear() === y.getFullYear() && x.getMonth() === y.getMonth() && x.getDate() === y.getDate();
}

function dayLabel(ts) {
  const d = new Date(ts);
  const today = new Date();
  if (sameDay(ts, today)) return "Today";
  if (sameDay(ts, today.getTime() - 86400000)) return "Yesterday";
  return d.toLocaleDateString(undefined, { weekday: "long", year: "numeric", month: "long", day: "numeric" });
}

function clock(ts) {
  return new Date(ts).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

function firstLine(text, max = 80) {
  const line = text.split("\n")[0];
  return line.length > max ? line.slice(0, max - 1) + "…" : line;
}

/// Appends `text` to `parent` as text nodes, with http(s) URLs as links and
/// our own name marked. Nothing is ever parsed as HTML.
function appendRich(parent, text, words) {
  const pattern = /\bhttps?:\/\/[^\s<>"'`]+/g;
  let at = 0;
  for (const match of text.matchAll(pattern)) {
    appendMarked(parent, text.slice(at, match.index), words);
    let url = match[0].replace(/[),.;:!?\]]+$/, "");
    let link = null;
    try {
      const parsed = new URL(url);
      if (parsed.protocol === "http:" || parsed.protocol === "https:") {
        link = el("a", null, url);
        link.href = parsed.href;
        link.rel = "noopener noreferrer nofollow";
        link.target = "_blank";
      }
    } catch {
      link = null;
    }
    if (link) {
      parent.append(link);
      at = match.index + url.length;
    } else {
      appendMarked(parent, url, words);
      at = match.index + url.length;
    }
  }
  appendMarked(parent, text.slice(at), words);
}

/// Appends `text`, with every word starting with one of `words` (search
/// terms, compared without case) inside a <mark>.
function appendMarked(parent, text, words) {
  if (!text) return;
  if (!words || words.length === 0) {
    parent.append(document.createTextNode(text));
    return;
  }
  const escaped = words.map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  const pattern = new RegExp(`(?<![\\p{L}\\p{N}])(?:${escaped.join("|")})[\\p{L}\\p{N}]*`, "giu");
  let at = 0;
  for (const match of text.matchAll(pattern)) {
    parent.append(document.createTextNode(text.slice(at, match.index)));
    parent.append(el("mark", null, match[0]));
    at = match.index + match[0].length;
  }
  parent.append(document.createTextNode(text.slice(at)));
}

function announce(text) {
  const announcer = $("announcer");
  announcer.textContent = "";
  // A fresh text node, so screen readers announce a repeat too.
  requestAnimationFrame(() => (announcer.textContent = text));
}

// ------------------------------------------------------------- connection

function socketUrl() {
  // With TLS on, the page came over https: and must use wss: too.
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
}

function send(event, onAnswer) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return null;
  const id = "w" + state.nextId++;
  event.id = id;
  if (onAnswer) state.waiting.set(id, onAnswer);
  state.ws.send(JSON.stringify(event));
  return id;
}

function connect() {
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = null;
  const ws = new WebSocket(socketUrl());
  state.ws = ws;
  setStatus(state.everOnline ? "reconnecting…" : "connecting…", true);
  ws.onopen = () => {
    const type = state.register && !state.everOnline ? "register" : "login";
    state.loginId = send({ type, user: state.user, password });
  };
  ws.onmessage = (frame) => {
    let event;
    try {
      event = JSON.parse(frame.data);
    } catch {
      return;
    }
    if (event && typeof event.type === "string") handle(event);
  };
  ws.onclose = (close) => connectionLost(ws, close.code);
}

/// The socket `ws` closed (or stopped answering): everything that lived on
/// it is forgotten, and a logged-in page reconnects.
function connectionLost(ws, code) {
  if (state.ws !== ws) return;
  state.ws = null;
  ws.onclose = null;
  ws.close();
  clearInterval(state.pingTimer);
  state.pingOutstanding = false;
  const was = state.online;
  state.online = false;
  for (const room of state.rooms.values()) {
    room.joined = false;
    room.joining = null;
    room.loading = false;
    room.pageToken += 1;
    room.members.clear();
    room.typing.clear();
  }
  state.waiting.clear();
  if (!state.everOnline) {
    if (password !== null) showLoginError(code === 1008 ? "Refused by the server." : "Cannot reach the server.");
    return;
  }
  if (password === null) return; // logged out
  renderHeader();
  renderTimeline();
  scheduleReconnect(was ? 0 : undefined);
}

/// A ping every 30 s; a socket that has not answered the previous one by
/// then is taken for dead (after a laptop's sleep or a network change the
/// browser may not notice for minutes).
function startHeartbeat(ws) {
  clearInterval(state.pingTimer);
  state.pingOutstanding = false;
  state.pingTimer = setInterval(() => {
    if (state.ws !== ws) return clearInterval(state.pingTimer);
    if (state.pingOutstanding) return connectionLost(ws, 1006);
    state.pingOutstanding = true;
    send({ type: "ping" }, () => {
      state.pingOutstanding = false;
      return true;
    });
  }, PING_EVERY);
}

function scheduleReconnect(delay) {
  const base = delay ?? BACKOFF[Math.min(state.attempt, BACKOFF.length - 1)];
  const wait = base + Math.floor(Math.random() * (base / 2 + 1));
  state.attempt += 1;
  setStatus(`offline, retrying in ${Math.ceil(wait / 1000)} s`, true);
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = setTimeout(connect, wait);
}

window.addEventListener("online", () => {
  if (state.everOnline && !state.ws && password !== null) connect();
});

function setStatus(text, offline) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("offline", !!offline);
}

// ------------------------------------------------------------------ events

function handle(event) {
  if (event.re && state.waiting.has(event.re)) {
    const answer = state.waiting.get(event.re);
    state.waiting.delete(event.re);
    if (answer(event) === true) return; // fully handled
  }
  switch (event.type) {
    case "welcome": return onWelcome(event);
    case "joined": return onJoined(event);
    case "history": return onHistory(event);
    case "changes": return onChanges(event);
    case "message": return onMessage(event);
    case "ack": return onAck(event);
    case "edited":
    case "deleted":
    case "reaction": return onChange(event);
    case "left": return onLeft(event);
    case "presence": return onPresence(event);
    case "typing": return onTyping(event);
    case "room_deleted": return onRoomDeleted(event);
    case "read": return onRead(event);
    case "invited": return onInvited(event);
    case "error": return onError(event);
    default: return; // pong, and events this page does not know: ignored
  }
}

function onWelcome(event) {
  state.online = true;
  state.everOnline = true;
  state.attempt = 0;
  state.user = event.user;
  state.admin = !!event.admin;
  state.features = new Set(event.features || []);
  setStatus("", false);
  showChat();
  startHeartbeat(state.ws);
  if (Array.isArray(event.rooms)) {
    // Rooms deleted, or left on another device, while this page was away
    // are gone: joining them again would create them anew.
    const listed = new Set(event.rooms.map((info) => info.name));
    for (const name of [...state.rooms.keys()]) if (!listed.has(name)) state.rooms.delete(name);
    if (state.current && !state.rooms.has(state.current)) state.current = null;
  }
  for (const info of event.rooms || []) {
    const room = roomNamed(info.name);
    room.private = !!info.private;
    room.lastSeq = Math.max(room.lastSeq, info.last_seq || 0);
    room.sentRead = info.read || 0;
    room.read = Math.max(room.read, room.sentRead);
  }
  if (state.rooms.size === 0) roomNamed("general");
  for (const room of state.rooms.values()) joinRoom(room);
  if (!state.current || !state.rooms.has(state.current)) {
    const remembered = localStorage.getItem("chat.room");
    state.current = state.rooms.has(remembered) ? remembered : state.rooms.keys().next().value;
  }
  renderAll();
}

function roomNamed(name) {
  let room = state.rooms.get(name);
  if (!room) {
    room = newRoom(name);
    state.rooms.set(name, room);
  }
  return room;
}

/// Joins `room`: fresh (the newest page) the first time, with `since` (and
/// `since_rev`) when the page already holds some of it, so a reconnect
/// fetches exactly what it missed.
function joinRoom(room, extra = {}) {
  const request = { type: "join", room: room.name, ...extra };
  const resume = room.seen > 0 || room.messages.length > 0;
  if (resume) {
    request.since = room.seen;
    if (state.features.has("edit") || state.features.has("react")) request.since_rev = room.rev;
  }
  room.joining = { since: resume ? room.seen : null, lastSeq: null, mine: [] };
  send(request, (event) => {
    if (event.type !== "error") return false; // `joined`, handled below
    forgetRoom(room.name);
    notice(`Cannot join ${room.name}: ${event.message || event.code}`);
    return true;
  });
}

function onJoined(event) {
  const room = roomNamed(event.room);
  room.joined = true;
  room.lastSeq = Math.max(room.lastSeq, event.last_seq);
  room.rev = Math.max(room.rev, event.rev || 0);
  room.members = new Set(event.members || []);
  if (!room.joining) room.joining = { since: null, lastSeq: null, mine: [] };
  if (room.joining.since !== null && event.last_seq < room.joining.since) {
    // A new room of the same name (the old one was deleted meanwhile):
    // what this page holds belongs to the old one.
    Object.assign(room, { messages: [], seen: 0, lastSeq: event.last_seq, read: room.sentRead });
    room.rev = event.rev || 0;
    room.joining.since = null;
  }
  room.joining.lastSeq = event.last_seq;
  renderRoomList();
  if (room.name === state.current) renderHeader();
}

function onHistory(event) {
  const room = state.rooms.get(event.room);
  if (!room || !room.joining) return;
  const joining = room.joining;
  if (joining.since === null) {
    // A first join: the newest page.
    room.messages = event.messages.slice();
    room.hasOlder = !!event.has_more;
    room.hasNewer = false;
    room.seen = Math.max(room.seen, joining.lastSeq ?? 0);
    joining.mine.push(...event.messages.filter((m) => m.user === state.user));
    finishJoin(room);
  } else {
    for (const message of event.messages) {
      if (message.seq <= room.seen) continue;
      room.seen = message.seq;
      if (!room.hasNewer) room.messages.push(message);
      if (message.user === state.user) joining.mine.push(message);
      noticeIncoming(room, message, false);
    }
    trimWindow(room, "older");
    if (room.seen >= (joining.lastSeq ?? 0)) finishJoin(room);
  }
  if (room.name === state.current) renderTimeline({ keepAnchor: joining.since !== null });
  renderRoomList();
}

function finishJoin(room) {
  const mine = room.joining ? room.joining.mine : [];
  room.joining = null;
  // Sends that were on the wire when the connection dropped: those whose
  // message came back in the backlog were stored; the rest go again.
  for (const item of state.outbox) {
    if (item.room !== room.name) continue;
    if (item.status === "delivered") item.status = "done"; // stored; its ack was lost
    if (item.status !== "sent") continue;
    const index = mine.findIndex(
      (m) => m.seq > item.seenAtSend && m.text === item.text && (m.reply_to ?? null) === (item.reply_to ?? null)
    );
    if (index >= 0) {
      mine.splice(index, 1);
      item.status = "done";
    } else {
      item.status = "queued";
    }
  }
  state.outbox = state.outbox.filter((item) => item.status !== "done");
  flushOutbox();
  const then = room.afterJoin;
  room.afterJoin = null;
  if (then) then();
  sendRead(room);
  maybeMarkRead();
}

function onChanges(event) {
  const room = state.rooms.get(event.room);
  if (!room) return;
  for (const message of event.messages) replaceMessage(room, message);
  room.rev = Math.max(room.rev, event.rev || 0);
  if (room.name === state.current) renderTimeline({ keepAnchor: true });
}

function replaceMessage(room, message) {
  const index = room.messages.findIndex((m) => m.seq === message.seq);
  if (index >= 0) room.messages[index] = message;
}

function onMessage(event) {
  const room = state.rooms.get(event.room);
  if (!room) return;
  room.lastSeq = Math.max(room.lastSeq, event.seq);
  if (event.seq <= room.seen) return; // already held
  room.seen = event.seq;
  const message = { ...event };
  delete message.type;
  room.typing.delete(message.user);
  if (message.user === state.user) {
    // Our own send: its pending copy gives way to the stored one.
    const item = state.outbox.find(
      (i) => i.room === room.name && i.status === "sent" && i.text === message.text && message.seq > i.seenAtSend
    );
    if (item) item.status = "delivered";
    if (room.read < message.seq && room.read >= message.seq - 1) room.read = message.seq;
  }
  const shown = room.name === state.current;
  const stick = shown && state.atBottom;
  if (!room.hasNewer) {
    room.messages.push(message);
    // At the bottom (or out of sight) the oldest give way to the new one.
    if (!shown) trimWindow(room, "older", OTHER_ROOMS_KEEP);
    else if (stick) trimWindow(room, "older");
  }
  noticeIncoming(room, message, true);
  if (shown) {
    if (!room.hasNewer) appendToTimeline(room, message);
    renderTyping();
    if (stick) scrollToBottom();
    else $("jump-newest").hidden = false;
    if (message.user !== state.user) announce(`${message.user}: ${firstLine(message.text, 200)}`);
  }
  renderRoomList();
  maybeMarkRead();
}

/// Counts a mention, and notifies when the tab is hidden.
function noticeIncoming(room, message, live) {
  if (message.user === state.user || message.seq <= room.read) return;
  const mention = mentionsMe(message.text);
  if (mention) room.mentions += 1;
  if (live && (mention || isDm(room.name)) && document.visibilityState === "hidden") notify(room, message);
}

function notify(room, message) {
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  try {
    const note = new Notification(`${message.user} in ${roomLabel(room)}`, {
      body: firstLine(message.text, 140),
      tag: "chat-" + room.name,
    });
    note.onclick = () => {
      window.focus();
      switchRoom(room.name);
      note.close();
    };
  } catch {
    // Some browsers only allow notifications from a service worker.
  }
}

function onAck(event) {
  const item = state.outbox.find((i) => i.id === event.re);
  if (!item) return;
  state.outbox = state.outbox.filter((i) => i !== item);
  if (item.room === state.current) renderPending();
}

function onChange(event) {
  const room = state.rooms.get(event.room);
  if (!room) return;
  if (event.rev <= room.rev) return; // in the `changes` already
  room.rev = event.rev;
  const index = room.messages.findIndex((m) => m.seq === event.seq);
  if (index < 0) return; // not in the window: it is fetched fresh later
  const message = { ...room.messages[index] };
  if (event.type === "edited") {
    message.text = event.text;
    message.edited_ts = event.edited_ts;
  } else if (event.type === "deleted") {
    message.text = "";
    message.deleted = true;
    delete message.reactions;
  } else {
    const reactions = { ...(message.reactions || {}) };
    const users = (reactions[event.emoji] || []).filter((u) => u !== event.user);
    if (event.on) users.push(event.user);
    if (users.length) reactions[event.emoji] = users;
    else delete reactions[event.emoji];
    // Emoji keep the order of their first reaction; a re-added one goes last.
    message.reactions = reactions;
  }
  room.messages[index] = message;
  if (room.name === state.current) updateInTimeline(room, message);
}

function onLeft(event) {
  const room = state.rooms.get(event.room);
  if (!room) return;
  // `left` without our asking comes from another device forgetting it.
  forgetRoom(room.name);
}

function forgetRoom(name) {
  state.rooms.delete(name);
  state.outbox = state.outbox.filter((i) => i.room !== name);
  if (state.current === name) state.current = state.rooms.keys().next().value ?? null;
  renderAll();
}

function onPresence(event) {
  const room = state.rooms.get(event.room);
  if (!room) return;
  if (event.state === "joined") room.members.add(event.user);
  else room.members.delete(event.user);
  if (room.name === state.current) renderHeader();
}

function onTyping(event) {
  const room = state.rooms.get(event.room);
  if (!room || event.user === state.user) return;
  room.typing.set(event.user, Date.now() + TYPING_SHOWN);
  if (room.name === state.current) renderTyping();
  setTimeout(renderTyping, TYPING_SHOWN + 50);
}

function onRoomDeleted(event) {
  if (!state.rooms.has(event.room)) return;
  forgetRoom(event.room);
  notice(`Room ${event.room} was deleted.`);
}

function onRead(event) {
  const room = state.rooms.get(event.room);
  if (!room) return;
  room.read = Math.max(room.read, event.seq);
  room.sentRead = Math.max(room.sentRead, event.seq);
  if (room.read >= room.lastSeq) room.mentions = 0;
  renderRoomList();
}

function onInvited(event) {
  if (event.user !== state.user || state.rooms.has(event.room)) return;
  const room = roomNamed(event.room);
  room.private = true;
  joinRoom(room);
  renderRoomList();
  notice(isDm(event.room) ? `${event.by} started a conversation with you.` : `${event.by} added you to ${event.room}.`);
}

function onError(event) {
  if (event.re && event.re === state.loginId) {
    const reasons = {
      auth_failed: "Wrong user name or password.",
      registration_closed: "This server does not take new accounts.",
      user_exists: "That user name is taken.",
      invalid_name: "User names are 1 to 32 letters, digits, _ - or .",
      busy: "The server is busy: try again in a moment.",
    };
    const text = reasons[event.code] || event.message || event.code;
    if (state.everOnline && (event.code === "busy" || event.code === "internal")) {
      // Everyone reconnects at once after a restart: try again later.
      if (state.ws) connectionLost(state.ws, 1013);
      return;
    }
    if (state.everOnline) {
      // The password stopped working while we were away.
      logout();
    }
    showLoginError(text);
    password = null;
    if (state.ws) state.ws.close();
    return;
  }
  const item = state.outbox.find((i) => i.id === event.re);
  if (item) {
    item.status = "failed";
    item.error = event.message || event.code;
    if (item.room === state.current) renderPending();
    return;
  }
  notice(`${event.code}: ${event.message || ""}`);
}

// ------------------------------------------------------------------ sending

function submitInput() {
  const input = $("input");
  const text = input.value.replace(/\s+$/, "");
  if (!text) return;
  if (text.startsWith("/") && !text.startsWith("//")) {
    if (runCommand(text)) {
      input.value = "";
      autoGrow();
    }
    return;
  }
  const body = text.startsWith("//") ? text.slice(1) : text;
  const room = state.rooms.get(state.current);
  if (!room) return;
  if (state.compose && state.compose.mode === "edit") {
    const seq = state.compose.seq;
    if (!send({ type: "edit", room: room.name, seq, text: body }, answerError)) {
      notice("Offline: the edit is kept here; save it again once connected.");
      return;
    }
    setCompose(null);
  } else {
    const item = { id: "q" + state.nextId++, room: room.name, text: body, status: "queued" };
    if (state.compose && state.compose.mode === "reply") item.reply_to = state.compose.seq;
    state.outbox.push(item);
    setCompose(null);
    flushOutbox();
    renderPending();
    scrollToBottom();
  }
  input.value = "";
  autoGrow();
}

/// Sends what waits in the offline queue, for rooms that are joined and
/// caught up; the rest waits for the connection.
function flushOutbox() {
  for (const item of state.outbox) {
    if (item.status !== "queued") continue;
    const room = state.rooms.get(item.room);
    if (!state.online || !room || !room.joined || room.joining) continue;
    const request = { type: "send", room: item.room, text: item.text };
    if (item.reply_to) request.reply_to = item.reply_to;
    const id = send(request);
    if (id) {
      item.id = id;
      item.status = "sent";
      // Only a message stored after this can be this send's.
      item.seenAtSend = room.seen;
    }
  }
  if (state.current) renderPending();
}

/// The answer to a request whose success shows elsewhere (an edit arrives
/// as `edited`): only an error is shown.
function answerError(event) {
  if (event.type === "error") {
    notice(`${event.code}: ${event.message || ""}`);
    return true;
  }
  return false;
}

function runCommand(line) {
  const [command, ...rest] = line.slice(1).split(/\s+/);
  const arg = rest.join(" ").trim();
  const room = state.rooms.get(state.current);
  switch (command.toLowerCase()) {
    case "join":
    case "private":
      if (!arg) return notice(`Usage: /${command} ROOM`), false;
      openRoom(arg, command === "private");
      return true;
    case "dm":
    case "msg":
      if (!arg) return notice("Usage: /dm USER"), false;
      openDm(arg);
      return true;
    case "invite":
      if (!arg || !room) return notice("Usage: /invite USER"), false;
      send({ type: "invite", room: room.name, user: arg }, (event) => {
        if (event.type === "invited") notice(`${event.user} can now read ${event.room}.`);
        else notice(`${event.code}: ${event.message || ""}`);
        return true;
      });
      return true;
    case "leave":
    case "forget":
      if (!room) return false;
      // The page shows the account's rooms: leaving one here leaves it on
      // every device (plain `leave` would bring it back at the next login).
      send({ type: "leave", room: room.name, forget: true }, () => true);
      forgetRoom(room.name);
      return true;
    case "search":
      openSearch(arg);
      return true;
    case "help":
      notice(
        "Commands: /join ROOM, /private ROOM, /dm USER, /invite USER, /leave (on every device), " +
          "/search WORDS. Start a line with // to send a /. Shift+Enter for a new line; ↑ on an empty line selects messages."
      );
      return true;
    default:
      notice(`Unknown command /${command}: try /help`);
      return false;
  }
}

function openRoom(name, privately) {
  const existing = state.rooms.get(name);
  if (existing) return switchRoom(name);
  const room = roomNamed(name);
  state.current = name;
  send({ type: "join", room: name, ...(privately ? { private: true } : {}) }, (event) => {
    if (event.type === "error") {
      state.rooms.delete(name);
      if (state.current === name) state.current = state.rooms.keys().next().value ?? null;
      renderAll();
      notice(`Cannot join ${name}: ${event.message || event.code}`);
      return true;
    }
    return false;
  });
  room.joining = { since: null, lastSeq: null, mine: [] };
  room.private = !!privately;
  renderAll();
}

function openDm(user) {
  const name = [state.user, user].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)).join("+");
  if (state.rooms.has(name)) return switchRoom(name);
  send({ type: "dm", user }, (event) => {
    if (event.type === "error") {
      notice(`Cannot open a conversation with ${user}: ${event.message || event.code}`);
      return true;
    }
    const room = roomNamed(event.room);
    room.private = true;
    if (!room.joining) room.joining = { since: null, lastSeq: null, mine: [] };
    state.current = event.room;
    onJoined(event);
    renderAll();
    return true;
  });
}

function sendTyping() {
  const now = Date.now();
  if (now - state.lastTyping < TYPING_EVERY || !state.online || !state.current) return;
  const text = $("input").value;
  if (!text || text.startsWith("/")) return;
  state.lastTyping = now;
  send({ type: "typing", room: state.current });
}

// --------------------------------------------------------------- read marks

/// Moves the read marker when the newest message is on screen and the page
/// is looked at.
function maybeMarkRead() {
  const room = state.rooms.get(state.current);
  if (!room || !state.online || room.hasNewer || room.joining) return;
  if (!state.atBottom || document.visibilityState !== "visible" || !document.hasFocus()) return;
  const newest = room.seen;
  room.mentions = 0;
  if (newest <= room.read) {
    renderRoomList();
    return;
  }
  room.read = newest;
  renderRoomList();
  clearTimeout(room.readTimer);
  room.readTimer = setTimeout(() => sendRead(room), 300);
}

/// Tells the server a read marker it does not have yet (again after a
/// reconnect, when the last attempt was lost with the connection).
function sendRead(room) {
  if (!state.features.has("read") || room.read <= room.sentRead || room.joining) return;
  if (send({ type: "read", room: room.name, seq: room.read })) room.sentRead = room.read;
}

document.addEventListener("visibilitychange", maybeMarkRead);
window.addEventListener("focus", maybeMarkRead);

// -------------------------------------------------------- paging the window

/// Drops messages beyond the window's size from one end.
function trimWindow(room, dropFrom, keep = WINDOW) {
  const extra = room.messages.length - keep;
  if (extra <= 0) return;
  if (dropFrom === "older") {
    room.messages.splice(0, extra);
    room.hasOlder = true;
  } else {
    room.messages.splice(room.messages.length - extra, extra);
    room.hasNewer = true;
  }
}

/// Asks for a page of `room`'s history; `apply` gets the answer unless a
/// newer page request (or a lost connection) made it stale.
function requestPage(room, request, apply) {
  const token = ++room.pageToken;
  const id = send({ type: "history", room: room.name, limit: PAGE, ...request }, (event) => {
    if (token !== room.pageToken) return true;
    room.loading = false;
    $("older").textContent = "";
    if (event.type !== "history") return answerError(event);
    apply(event.messages.filter((m) => m.seq <= room.seen), event);
    return true;
  });
  if (id) room.loading = true;
  return id;
}

/// The window's newest end: does it reach `seen` (the live edge)?
function settleNewer(room) {
  const newest = room.messages.length ? room.messages[room.messages.length - 1].seq : 0;
  room.hasNewer = newest < room.seen;
}

function loadOlder(room) {
  if (room.loading || !room.hasOlder || !room.messages.length || !state.online) return;
  const first = room.messages[0].seq;
  const asked = requestPage(room, { before: first }, (messages, event) => {
    room.messages = messages.filter((m) => m.seq < first).concat(room.messages);
    room.hasOlder = !!event.has_more;
    trimWindow(room, "newer");
    if (room.name === state.current) renderTimeline({ keepAnchor: true });
  });
  if (asked) $("older").textContent = "Loading older messages…";
}

function loadNewer(room) {
  if (room.loading || !room.hasNewer || !room.messages.length || !state.online) return;
  const last = room.messages[room.messages.length - 1].seq;
  requestPage(room, { before: last + PAGE + 1 }, (messages) => {
    room.messages = room.messages.concat(messages.filter((m) => m.seq > last));
    settleNewer(room);
    trimWindow(room, "older");
    if (room.name === state.current) renderTimeline({ keepAnchor: true });
  });
}

/// Shows message `seq` of room `name`, loading the page around it when it
/// is not in the window.
function jumpTo(name, seq) {
  const room = state.rooms.get(name);
  if (!room) {
    openRoom(name, false);
    const joiningRoom = state.rooms.get(name);
    if (joiningRoom) joiningRoom.afterJoin = () => jumpTo(name, seq);
    return;
  }
  if (state.current !== name) switchRoom(name);
  if (room.joining) {
    room.afterJoin = () => jumpTo(name, seq);
    return;
  }
  if (room.messages.some((m) => m.seq === seq)) {
    select(seq, true);
    return;
  }
  requestPage(room, { before: seq + PAGE / 2 + 1 }, (messages, event) => {
    room.messages = messages;
    room.hasOlder = !!event.has_more;
    settleNewer(room);
    if (state.current === name) {
      renderTimeline();
      select(seq, true);
    }
  });
}

/// Back to the live edge of the current room.
function jumpToNewest() {
  const room = state.rooms.get(state.current);
  if (!room) return;
  if (!room.hasNewer) {
    scrollToBottom();
    return;
  }
  requestPage(room, {}, (messages, event) => {
    room.messages = messages;
    room.hasOlder = !!event.has_more;
    settleNewer(room);
    if (room.name !== state.current) return;
    renderTimeline();
    scrollToBottom();
  });
}

// --------------------------------------------------------------- rendering

function showChat() {
  $("login-view").hidden = true;
  $("chat-view").hidden = false;
  $("me-name").textContent = state.user;
  $("me-name").className = "who " + colourClass(state.user);
}

function renderAll() {
  renderRoomList();
  renderHeader();
  renderTimeline();
  renderTyping();
  updateComposer();
}

function renderRoomList() {
  const list = $("room-list");
  const items = [];
  let total = 0;
  const rooms = [...state.rooms.values()].sort((a, b) => roomLabel(a).localeCompare(roomLabel(b)));
  for (const room of rooms) {
    const count = unread(room);
    total += count;
    const li = el("li");
    const button = el("button");
    button.type = "button";
    button.dataset.room = room.name;
    if (room.name === state.current) button.setAttribute("aria-current", "page");
    const name = el("span", "name" + (count ? " unread" : ""), roomLabel(room));
    button.append(name);
    let label = roomLabel(room);
    if (count) {
      const badge = el("span", "badge" + (room.mentions || isDm(room.name) ? " mention" : ""), String(count));
      button.append(badge);
      label += `, ${count} unread` + (room.mentions ? `, ${room.mentions} mentioning you` : "");
    }
    button.setAttribute("aria-label", label);
    li.append(button);
    items.push(li);
  }
  list.replaceChildren(...items);
  document.title = total ? `(${total}) chat` : "chat";
}

function renderHeader() {
  const room = state.rooms.get(state.current);
  $("room-title").textContent = room ? roomLabel(room) : "";
  const members = room ? [...room.members].sort() : [];
  const shown = members.slice(0, 8).join(", ") + (members.length > 8 ? ` and ${members.length - 8} more` : "");
  $("room-members").textContent = room && room.joined ? `${members.length} online: ${shown}` : "";
  $("room-members").title = members.join(", ");
  if (!state.online && state.everOnline && !state.reconnectTimer) setStatus("offline", true);
  $("search-button").hidden = !state.features.has("search");
}

function renderTyping() {
  const room = state.rooms.get(state.current);
  const line = $("typing");
  if (!room) {
    line.textContent = "";
    return;
  }
  const now = Date.now();
  for (const [user, until] of room.typing) if (until <= now) room.typing.delete(user);
  const users = [...room.typing.keys()];
  line.textContent =
    users.length === 0 ? "" :
    users.length === 1 ? `${users[0]} is typing…` :
    users.length <= 3 ? `${users.join(" and ")} are typing…` : "Several people are typing…";
}

/// Rebuilds the current room's timeline; with `keepAnchor`, the message at
/// the top of the screen stays where it was (for pages loaded above it).
function renderTimeline({ keepAnchor = false } = {}) {
  const timeline = $("timeline");
  const list = $("messages");
  const room = state.rooms.get(state.current);
  let anchor = null;
  let anchorTop = 0;
  if (keepAnchor && !state.atBottom) {
    const top = timeline.getBoundingClientRect().top;
    for (const item of list.children) {
      if (item.dataset.seq && item.getBoundingClientRect().bottom > top) {
        anchor = item.dataset.seq;
        anchorTop = item.getBoundingClientRect().top;
        break;
      }
    }
  }
  const wasAtBottom = state.atBottom;
  const items = [];
  if (room) {
    let previous = null;
    for (const message of room.messages) {
      if (!previous || !sameDay(previous.ts, message.ts)) items.push(daySeparator(message.ts));
      items.push(messageItem(room, message, previous));
      previous = message;
    }
  }
  list.replaceChildren(...items);
  $("older").textContent = !room ? "" :
    room.joining ? "Loading…" :
    room.hasOlder ? "" : room.messages.length ? "This is the start of the room." : "No messages yet: say hello.";
  renderPending();
  if (anchor) {
    const item = list.querySelector(`[data-seq="${anchor}"]`);
    if (item) timeline.scrollTop += item.getBoundingClientRect().top - anchorTop;
  } else if (wasAtBottom || !keepAnchor) {
    scrollToBottom();
  }
  $("jump-newest").hidden = !room || (!room.hasNewer && state.atBottom);
  if (state.selected !== null) select(state.selected, false);
}

function daySeparator(ts) {
  const li = el("li", "day", dayLabel(ts));
  li.setAttribute("role", "separator");
  return li;
}

function appendToTimeline(room, message) {
  const list = $("messages");
  const previous = room.messages.length > 1 ? room.messages[room.messages.length - 2] : null;
  const pending = list.querySelector(".msg.pending");
  const add = (node) => (pending ? list.insertBefore(node, pending) : list.append(node));
  if (!previous || !sameDay(previous.ts, message.ts)) add(daySeparator(message.ts));
  add(messageItem(room, message, previous));
  // Messages the window dropped at the top (it stays at its size while
  // new ones come in at the bottom), with their day separators.
  const first = room.messages[0];
  let removed = false;
  for (let node = list.firstElementChild; node; ) {
    const next = node.nextElementSibling;
    if (node.dataset.seq) {
      if (Number(node.dataset.seq) >= first.seq) break;
      node.remove();
      removed = true;
    }
    node = next;
  }
  while (list.firstElementChild && list.firstElementChild.classList.contains("day") &&
         list.children[1] && list.children[1].classList.contains("day")) list.firstElementChild.remove();
  if (removed) {
    // The new first message has nothing above it to continue.
    const top = list.querySelector(`[data-seq="${first.seq}"]`);
    if (top) top.replaceWith(messageItem(room, first, null));
  }
  $("older").textContent = room.hasOlder ? "" : "This is the start of the room.";
  renderPending();
}

function updateInTimeline(room, message) {
  const item = $("messages").querySelector(`[data-seq="${message.seq}"]`);
  if (!item) return;
  const index = room.messages.findIndex((m) => m.seq === message.seq);
  const fresh = messageItem(room, message, index > 0 ? room.messages[index - 1] : null);
  item.replaceWith(fresh);
  if (state.selected === message.seq) select(message.seq, false);
}

/// One message as a list item: who and when, the text, and what applies of
/// (reply quote, edited, deleted, reactions).
function messageItem(room, message, previous) {
  const li = el("li", "msg");
  li.dataset.seq = String(message.seq);
  li.tabIndex = -1;
  const continued =
    previous && previous.user === message.user && !message.reply_to &&
    message.ts - previous.ts < 5 * 60 * 1000 && sameDay(previous.ts, message.ts);
  if (continued) li.classList.add("cont");
  if (message.user !== state.user && !message.deleted && mentionsMe(message.text)) li.classList.add("mention");
  if (message.reply_to) {
    const quote = el("button", "quote");
    quote.type = "button";
    quote.dataset.jump = String(message.reply_to);
    const original = room.messages.find((m) => m.seq === message.reply_to);
    quote.textContent = original
      ? `↪ ${original.user}: ${original.deleted ? "message deleted" : firstLine(original.text)}`
      : `↪ reply to message ${message.reply_to}`;
    quote.setAttribute("aria-label", `In reply to: ${quote.textContent.slice(2)}. Show it.`);
    li.append(quote);
  }
  const meta = el("div", "meta");
  meta.append(el("span", "who " + colourClass(message.user), message.user));
  const time = el("time", null, clock(message.ts));
  time.dateTime = new Date(message.ts).toISOString();
  time.title = new Date(message.ts).toLocaleString();
  meta.append(time);
  if (message.edited_ts && !message.deleted) meta.append(el("span", "edited", "(edited)"));
  li.append(meta);
  // A continued message hides its meta line; a screen reader still hears who.
  if (continued) li.append(el("span", "visually-hidden", `${message.user}: `));
  const text = el("div", "text");
  if (message.deleted) {
    li.classList.add("deleted");
    text.textContent = "message deleted";
  } else {
    appendRich(text, message.text);
    if (continued && message.edited_ts) text.append(el("span", "edited", " (edited)"));
  }
  li.append(text);
  const reactions = Object.entries(message.reactions || {});
  if (reactions.length && !message.deleted) {
    const row = el("div", "reactions");
    for (const [emoji, users] of reactions) {
      const button = el("button", null, `${emoji} ${users.length}`);
      button.type = "button";
      button.dataset.emoji = emoji;
      button.setAttribute("aria-pressed", users.includes(state.user) ? "true" : "false");
      button.title = users.join(", ");
      button.setAttribute("aria-label", `${emoji} from ${users.join(", ")}`);
      row.append(button);
    }
    li.append(row);
  }
  return li;
}

/// The offline queue's messages, after the room's, greyed.
function renderPending() {
  const list = $("messages");
  for (const node of list.querySelectorAll(".msg.pending")) node.remove();
  for (const item of state.outbox) {
    if (item.room !== state.current || item.status === "delivered") continue;
    const li = el("li", "msg pending" + (item.status === "failed" ? " failed" : ""));
    const meta = el("div", "meta");
    meta.append(el("span", "who " + colourClass(state.user), state.user));
    const what =
      item.status === "failed" ? `not sent: ${item.error}` :
      item.status === "sent" ? "sending…" : state.online ? "sending…" : "waiting for the connection";
    meta.append(el("span", "state", what));
    if (item.status === "failed") {
      const dismiss = el("button", "icon small", "×");
      dismiss.type = "button";
      dismiss.dataset.dismiss = item.id;
      dismiss.setAttribute("aria-label", "Dismiss");
      meta.append(dismiss);
    }
    li.append(meta);
    const text = el("div", "text");
    appendRich(text, item.text);
    li.append(text);
    list.append(li);
  }
}

function scrollToBottom() {
  const timeline = $("timeline");
  timeline.scrollTop = timeline.scrollHeight;
  state.atBottom = true;
}

function notice(text) {
  const li = el("li", "msg notice");
  li.append(el("div", "text", text));
  li.setAttribute("role", "status");
  $("messages").append(li);
  if (state.atBottom) scrollToBottom();
  announce(text);
}

// --------------------------------------------------- selection and actions

function select(seq, focus) {
  const list = $("messages");
  for (const node of list.querySelectorAll(".msg.selected")) node.classList.remove("selected");
  for (const node of list.querySelectorAll(".actions")) node.remove();
  state.selected = seq;
  if (seq === null) return;
  const item = list.querySelector(`[data-seq="${seq}"]`);
  if (!item) return;
  item.classList.add("selected");
  const room = state.rooms.get(state.current);
  const message = room && room.messages.find((m) => m.seq === seq);
  if (message && !message.deleted) item.append(actionsFor(message));
  if (focus) {
    item.focus({ preventScroll: true });
    item.scrollIntoView({ block: "nearest" });
  }
}

function actionsFor(message) {
  const bar = el("div", "actions");
  bar.setAttribute("role", "toolbar");
  bar.setAttribute("aria-label", "Message actions");
  const add = (action, label, text) => {
    const button = el("button", null, text);
    button.type = "button";
    button.dataset.action = action;
    button.setAttribute("aria-label", label);
    button.title = label;
    bar.append(button);
  };
  if (state.features.has("reply")) add("reply", "Reply (r)", "↪");
  if (state.features.has("react")) add("react", "React (+)", "☺");
  if (state.features.has("edit") && message.user === state.user) add("edit", "Edit (e)", "✎");
  if (state.features.has("edit") && (message.user === state.user || state.admin)) add("delete", "Delete (d)", "🗑");
  return bar;
}

function act(action, seq) {
  const room = state.rooms.get(state.current);
  const message = room && room.messages.find((m) => m.seq === seq);
  if (!message || message.deleted) return;
  // Acting on a message ends its selection.
  select(null, false);
  if (action === "reply") {
    setCompose({ mode: "reply", seq, label: `Replying to ${message.user}: ${firstLine(message.text, 60)}` });
  } else if (action === "edit" && message.user === state.user) {
    setCompose({ mode: "edit", seq, label: "Editing your message (Esc to cancel)" });
    $("input").value = message.text;
    autoGrow();
  } else if (action === "delete" && (message.user === state.user || state.admin)) {
    const dialog = $("confirm-dialog");
    $("confirm-text").textContent = firstLine(message.text, 120);
    dialog.returnValue = "";
    dialog.onclose = () => {
      if (dialog.returnValue === "yes" && !send({ type: "delete", room: room.name, seq }, answerError)) {
        notice("Offline: nothing was deleted.");
      }
      $("input").focus();
    };
    dialog.showModal();
    return;
  } else if (action === "react") {
    openReactDialog(seq);
    return;
  } else {
    return;
  }
  $("input").focus();
}

function react(seq, emoji) {
  if (state.current && !send({ type: "react", room: state.current, seq, emoji }, answerError)) {
    notice("Offline: the reaction was not sent.");
  }
}

function openReactDialog(seq) {
  state.reacting = seq;
  const choices = $("react-choices");
  choices.replaceChildren(
    ...QUICK_EMOJI.map((emoji) => {
      const button = el("button", null, emoji);
      button.type = "button";
      button.dataset.emoji = emoji;
      button.setAttribute("aria-label", `React with ${emoji}`);
      return button;
    })
  );
  $("react-input").value = "";
  $("react-dialog").showModal();
}

function setCompose(compose) {
  state.compose = compose;
  updateComposer();
}

function updateComposer() {
  const bar = $("compose-bar");
  bar.hidden = !state.compose;
  $("compose-what").textContent = state.compose ? state.compose.label : "";
  $("input").disabled = !state.current;
  $("send-button").textContent = state.compose && state.compose.mode === "edit" ? "Save" : "Send";
}

function autoGrow() {
  const input = $("input");
  input.style.height = "auto";
  input.style.height = input.scrollHeight + 2 + "px";
}

function switchRoom(name) {
  if (!state.rooms.has(name)) return;
  const previous = state.rooms.get(state.current);
  if (previous && previous.name !== name) {
    // A room out of sight keeps only its newest messages.
    if (!previous.hasNewer) trimWindow(previous, "older", OTHER_ROOMS_KEEP);
  }
  state.current = name;
  state.selected = null;
  state.atBottom = true;
  setCompose(null);
  localStorage.setItem("chat.room", name);
  renderAll();
  // A window left scrolled up starts again from the newest page.
  if (state.rooms.get(name).hasNewer) jumpToNewest();
  closeDrawer();
  maybeMarkRead();
}

// ---------------------------------------------------------------- search

function openSearch(query) {
  const dialog = $("search-dialog");
  $("search-input").value = query || "";
  $("search-results").replaceChildren();
  $("search-status").textContent = "";
  if (!dialog.open) dialog.showModal();
  $("search-input").focus();
  if (query) runSearch(false);
}

function runSearch(more) {
  const query = $("search-input").value.trim();
  if (!query) return;
  const scope = $("search-scope").value === "room" ? state.current : null;
  if (!more) {
    state.search = { query, room: scope, next: null, loading: false };
    $("search-results").replaceChildren();
  }
  const search = state.search;
  if (!search || search.loading || (more && !search.next)) return;
  search.loading = true;
  $("search-status").textContent = "Searching…";
  const request = { type: "search", query: search.query, limit: 20 };
  if (search.room) request.room = search.room;
  if (more) request.cursor = search.next;
  send(request, (event) => {
    if (state.search !== search) return true;
    search.loading = false;
    if (event.type !== "search_results") {
      $("search-status").textContent = event.message || event.code;
      return true;
    }
    search.next = event.next || null;
    const words = search.query.toLowerCase().split(/\s+/).filter(Boolean);
    const list = $("search-results");
    for (const message of event.messages) list.append(searchResult(message, words));
    const count = list.children.length;
    $("search-status").textContent =
      count === 0 ? "Nothing found." : `${count} result${count === 1 ? "" : "s"}` + (search.next ? ", more below" : "");
    return true;
  });
}

function searchResult(message, words) {
  const li = el("li");
  const button = el("button");
  button.type = "button";
  button.dataset.room = message.room;
  button.dataset.seq = String(message.seq);
  const room = state.rooms.get(message.room) || newRoom(message.room);
  const where = el("div", "where", `${new Date(message.ts).toLocaleString()} · ${roomLabel(room)} · `);
  where.append(el("span", "who " + colourClass(message.user), message.user));
  button.append(where);
  const text = el("div", "text");
  appendMarked(text, firstLine(message.text, 200), words);
  button.append(text);
  li.append(button);
  return li;
}

// ------------------------------------------------------------ room browser

function openBrowser() {
  $("rooms-browser").replaceChildren();
  state.browse = { after: null };
  $("rooms-dialog").showModal();
  loadRooms();
}

function loadRooms() {
  const browse = state.browse;
  if (!browse) return;
  const request = { type: "rooms" };
  if (state.features.has("rooms_paging")) {
    request.limit = 100;
    if (browse.after) request.after = browse.after;
  }
  send(request, (event) => {
    if (event.type !== "rooms") return answerError(event);
    const list = $("rooms-browser");
    for (const info of event.rooms) {
      const li = el("li");
      const button = el("button");
      button.type = "button";
      button.dataset.room = info.name;
      button.append(el("div", "who", "# " + info.name));
      const mine = state.rooms.has(info.name) ? " · joined" : "";
      button.append(el("div", "where", `${info.members} online · ${info.last_seq} messages${mine}`));
      li.append(button);
      list.append(li);
    }
    browse.after = event.rooms.length ? event.rooms[event.rooms.length - 1].name : browse.after;
    $("rooms-more").hidden = !event.has_more;
    return true;
  });
}

// ------------------------------------------------------------------ drawer

function openDrawer() {
  $("sidebar").classList.add("open");
  $("backdrop").hidden = false;
  $("drawer-button").setAttribute("aria-expanded", "true");
  const current = $("room-list").querySelector("[aria-current]") || $("join-input");
  current.focus();
}

function closeDrawer() {
  if (!$("sidebar").classList.contains("open")) return;
  $("sidebar").classList.remove("open");
  $("backdrop").hidden = true;
  $("drawer-button").setAttribute("aria-expanded", "false");
}

// ----------------------------------------------------------- login, logout

function showLoginError(text) {
  const error = $("login-error");
  error.textContent = text;
  error.hidden = false;
  $("login-submit").disabled = false;
  $("register-button").disabled = false;
  $("login-password").focus();
}

function startLogin(register) {
  const user = $("login-user").value.trim();
  const secret = $("login-password").value;
  if (!user || !secret) {
    showLoginError("Enter a user name and a password.");
    return;
  }
  $("login-error").hidden = true;
  $("login-submit").disabled = true;
  $("register-button").disabled = true;
  localStorage.setItem("chat.user", user);
  state.user = user;
  state.register = register;
  state.everOnline = false;
  password = secret;
  $("login-password").value = "";
  if ("Notification" in window && Notification.permission === "default" && window.isSecureContext) {
    Notification.requestPermission().catch(() => {});
  }
  if (state.ws) state.ws.close();
  connect();
}

function logout() {
  password = null;
  const ws = state.ws;
  state.ws = null;
  if (ws) ws.close(1000);
  clearTimeout(state.reconnectTimer);
  Object.assign(state, {
    online: false, everOnline: false, rooms: new Map(), current: null, outbox: [],
    waiting: new Map(), selected: null, compose: null, attempt: 0,
  });
  $("chat-view").hidden = true;
  $("login-view").hidden = false;
  $("login-submit").disabled = false;
  $("register-button").disabled = false;
  $("login-password").focus();
}

// ------------------------------------------------------------------ wiring

function wire() {
  $("login-user").value = localStorage.getItem("chat.user") || "";
  $("login-server").textContent = `on ${location.host}`;
  (($("login-user").value && $("login-password")) || $("login-user")).focus();
  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    startLogin(false);
  });
  $("register-button").addEventListener("click", () => startLogin(true));
  $("logout-button").addEventListener("click", logout);

  const input = $("input");
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    submitInput();
    input.focus();
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      submitInput();
    } else if (e.key === "Escape" && state.compose) {
      if (state.compose.mode === "edit") input.value = "";
      setCompose(null);
      autoGrow();
    } else if ((e.key === "ArrowUp" && !input.value) || (e.key === "ArrowUp" && e.altKey)) {
      const room = state.rooms.get(state.current);
      const last = room && room.messages[room.messages.length - 1];
      if (last) {
        e.preventDefault();
        select(last.seq, true);
      }
    }
  });
  input.addEventListener("input", () => {
    autoGrow();
    sendTyping();
  });

  $("compose-cancel").addEventListener("click", () => {
    if (state.compose && state.compose.mode === "edit") input.value = "";
    setCompose(null);
    input.focus();
  });

  const timeline = $("timeline");
  timeline.addEventListener("scroll", () => {
    const room = state.rooms.get(state.current);
    state.atBottom = timeline.scrollHeight - timeline.scrollTop - timeline.clientHeight < 40;
    if (!room) return;
    if (timeline.scrollTop < 300) loadOlder(room);
    if (timeline.scrollHeight - timeline.scrollTop - timeline.clientHeight < 300) loadNewer(room);
    $("jump-newest").hidden = !room.hasNewer && state.atBottom;
    maybeMarkRead();
  });
  $("jump-newest").addEventListener("click", () => {
    jumpToNewest();
    input.focus();
  });

  const list = $("messages");
  list.addEventListener("click", (e) => {
    const target = e.target.closest("button, a, .msg");
    if (!target) return;
    const item = e.target.closest(".msg");
    const seq = item && item.dataset.seq ? Number(item.dataset.seq) : null;
    if (target.dataset.dismiss) {
      state.outbox = state.outbox.filter((i) => i.id !== target.dataset.dismiss);
      renderPending();
    } else if (target.dataset.jump) {
      jumpTo(state.current, Number(target.dataset.jump));
    } else if (target.dataset.emoji && seq !== null) {
      react(seq, target.dataset.emoji);
    } else if (target.dataset.action && seq !== null) {
      act(target.dataset.action, seq);
    } else if (target.classList.contains("msg") && seq !== null && !window.getSelection().toString()) {
      select(state.selected === seq ? null : seq, false);
    }
  });
  list.addEventListener("keydown", (e) => {
    const room = state.rooms.get(state.current);
    if (!room || state.selected === null) return;
    const index = room.messages.findIndex((m) => m.seq === state.selected);
    const message = room.messages[index];
    const keys = { e: "edit", d: "delete", r: "reply", "+": "react" };
    if (e.key === "ArrowUp" && index > 0) {
      e.preventDefault();
      select(room.messages[index - 1].seq, true);
      if (index - 1 < 5) loadOlder(room);
    } else if (e.key === "ArrowDown") {
      e.preventDefault();
      if (index >= 0 && index < room.messages.length - 1) select(room.messages[index + 1].seq, true);
      else {
        select(null, false);
        input.focus();
      }
    } else if (e.key === "Escape") {
      select(null, false);
      input.focus();
    } else if (e.key === "Enter" && message && message.reply_to && e.target.classList.contains("msg")) {
      jumpTo(room.name, message.reply_to);
    } else if (keys[e.key] && message && !e.ctrlKey && !e.metaKey && !e.altKey) {
      e.preventDefault();
      act(keys[e.key], message.seq);
    }
  });

  $("room-list").addEventListener("click", (e) => {
    const button = e.target.closest("button[data-room]");
    if (button) {
      switchRoom(button.dataset.room);
      input.focus();
    }
  });
  $("join-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const name = $("join-input").value.trim();
    if (!name) return;
    $("join-input").value = "";
    openRoom(name, false);
    closeDrawer();
    input.focus();
  });
  $("browse-button").addEventListener("click", openBrowser);
  $("rooms-more").addEventListener("click", loadRooms);
  $("rooms-browser").addEventListener("click", (e) => {
    const button = e.target.closest("button[data-room]");
    if (!button) return;
    $("rooms-dialog").close();
    openRoom(button.dataset.room, false);
    closeDrawer();
    input.focus();
  });

  $("drawer-button").addEventListener("click", () =>
    $("sidebar").classList.contains("open") ? closeDrawer() : openDrawer()
  );
  $("backdrop").addEventListener("click", closeDrawer);

  $("search-button").addEventListener("click", () => openSearch(""));
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    runSearch(false);
  });
  $("search-results").addEventListener("scroll", (e) => {
    const results = e.target;
    if (results.scrollHeight - results.scrollTop - results.clientHeight < 100) runSearch(true);
  });
  $("search-results").addEventListener("click", (e) => {
    const button = e.target.closest("button[data-seq]");
    if (!button) return;
    $("search-dialog").close();
    jumpTo(button.dataset.room, Number(button.dataset.seq));
  });

  $("react-choices").addEventListener("click", (e) => {
    const button = e.target.closest("button[data-emoji]");
    if (!button) return;
    $("react-dialog").close();
    react(state.reacting, button.dataset.emoji);
  });
  $("react-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const emoji = $("react-input").value.trim();
    $("react-dialog").close();
    if (emoji) react(state.reacting, emoji);
  });
  for (const close of document.querySelectorAll("dialog .close")) {
    close.addEventListener("click", () => close.closest("dialog").close());
  }

  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape") closeDrawer();
    if (e.altKey && (e.key === "ArrowUp" || e.key === "ArrowDown") && document.activeElement !== input) {
      e.preventDefault();
      const names = [...$("room-list").querySelectorAll("button[data-room]")].map((b) => b.dataset.room);
      const at = names.indexOf(state.current);
      const next = names[(at + (e.key === "ArrowDown" ? 1 : names.length - 1)) % names.length];
      if (next) switchRoom(next);
    }
    if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "k" && state.online) {
      e.preventDefault();
      openSearch("");
    }
  });

  // The on-screen keyboard shrinks the visual viewport: the page follows it,
  // so the input stays above the keyboard.
  if (window.visualViewport) {
    const fit = () =>
      document.documentElement.style.setProperty("--viewport-height", `${window.visualViewport.height}px`);
    window.visualViewport.addEventListener("resize", fit);
    fit();
  }
  window.addEventListener("beforeunload", (e) => {
    if (state.outbox.length) e.preventDefault();
  });
}

wire();
