// The page: sign-in, the conversation list and the open conversation, on
// top of the protocol connection (connection.js) and the model (model.js).

import { Connection } from "./connection.js";
import { Conversation } from "./model.js";
import { drawConversations, drawMessages } from "./render.js";

const TOKEN_KEY = "switchboard.token"; // localStorage: every tab of this browser signs in with it
const DEVICE_KEY = "switchboard.device"; // sessionStorage: one device per tab, kept across its reloads
const OPEN_KEY = "switchboard.open"; // sessionStorage: the conversation this tab shows

const $ = (id) => document.getElementById(id);
const uuid = () => crypto.randomUUID();

/** What each error code means to the person (docs/protocol.md, "error"). */
const ERRORS = {
  rate_limited: "You are sending too fast; the message will be sent again shortly.",
  too_large: "That message is too large to send.",
  text_too_long: "That message is too long. Shorten it and send it again.",
  unauthorized: "Your token was refused: sign in again.",
  token_expired: "Your sign-in expired: sign in again with a new token.",
  unavailable: "The service is briefly unavailable; retrying.",
  internal: "The server hit an error. Try again.",
  busy: "The assistant is still answering; wait for the reply first.",
  not_running: "Nothing is running to stop.",
  not_interrupted: "That question was already answered.",
  already_resumed: "That question was already answered.",
  unknown_message: "That reply cannot be regenerated.",
  not_last: "Only the last reply can be regenerated.",
  too_old: "That message is too old to change.",
  too_many_conversations: "You have too many conversations; this one cannot be started.",
  conversation_full: "This conversation is full: start a new one.",
  backlog_full: "Too many messages wait for replies; send again once they are answered.",
  unreadable: "A message could not be read by the server and is not shown.",
  too_many_connections: "Too many windows or devices are connected.",
  unknown_graph: "The server has no such assistant.",
  graph_mismatch: "This conversation runs another assistant.",
  bad_frame: "The page sent something the server did not understand.",
};

const app = {
  connection: null,
  deviceId: null,
  conversations: [], // the list, as the server sent it
  unread: new Set(),
  open: null, // Conversation
  models: new Map(), // conversation id -> Conversation (those opened in this tab)
  listTimer: null,
};

const CLAIM_WAIT_MS = 150;

/**
 * This tab's device id. A duplicated tab inherits its origin's
 * sessionStorage, device id included: two tabs of one device would replace
 * each other's connection (4005). So a tab asks the others first, and takes
 * a new id when one already uses it.
 */
async function deviceId() {
  const fresh = () => `web-${uuid().slice(0, 13)}`;
  let id = sessionStorage.getItem(DEVICE_KEY) ?? fresh();
  if ("BroadcastChannel" in window) {
    const channel = new BroadcastChannel("switchboard.devices");
    const taken = await new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), CLAIM_WAIT_MS);
      channel.onmessage = (e) => {
        if (e.data?.taken === id) {
          clearTimeout(timer);
          resolve(true);
        }
      };
      channel.postMessage({ claim: id });
    });
    if (taken) {
      sessionStorage.removeItem(`switchboard.pending.${id}`); // the other tab's to resend
      id = fresh();
    }
    channel.onmessage = (e) => {
      if (e.data?.claim === app.deviceId) channel.postMessage({ taken: app.deviceId });
    };
  }
  sessionStorage.setItem(DEVICE_KEY, id);
  return id;
}

function notice(text) {
  const box = $("notice");
  box.textContent = text ?? "";
  box.hidden = !text;
}

function setStatus({ state, text }) {
  $("status").dataset.state = state;
  $("status").textContent = text;
}

// -- signing in -------------------------------------------------------------------

function tokenFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token) {
    localStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, "", location.pathname + location.search); // off the address bar
  }
}

function showSignIn(text) {
  $("sign-in").hidden = false;
  $("chat").hidden = true;
  $("sign-out").hidden = true;
  setStatus({ state: "signed-out", text: "Signed out" });
  notice(text);
  $("token").focus();
}

function signIn(token) {
  $("sign-in").hidden = true;
  $("chat").hidden = false;
  $("sign-out").hidden = false;
  notice(null);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const connection = new Connection({ url: `${scheme}//${location.host}/ws`, token, deviceId: app.deviceId });
  app.connection = connection;
  connection.addEventListener("state", (e) => setStatus(e.detail));
  connection.addEventListener("welcome", (e) => onWelcome(e.detail));
  connection.addEventListener("event", (e) => onEvent(e.detail));
  connection.addEventListener("frame", (e) => onFrame(e.detail));
  connection.addEventListener("stopped", (e) => {
    if (e.detail.code === 4001 || e.detail.code === 4004) {
      localStorage.removeItem(TOKEN_KEY);
      showSignIn(e.detail.text);
    } else {
      notice(e.detail.text);
    }
  });
  const stored = sessionStorage.getItem(OPEN_KEY);
  openConversation(stored ?? newConversationId(), { fetch: false });
  // Messages sent before a reload and not yet accepted: shown, and resent once connected.
  for (const frame of connection.pendingFrames()) {
    if (frame.type === "send" && frame.conversation_id === app.open.id) app.open.sending(frame.client_msg_id, frame.text);
  }
  connection.start();
}

function signOut() {
  app.connection?.stop("Signed out");
  localStorage.removeItem(TOKEN_KEY);
  app.models.clear();
  app.conversations = [];
  showSignIn(null);
}

// -- protocol -----------------------------------------------------------------------

function onWelcome(welcome) {
  if (!welcome.recovered) {
    // Events may be missing: the open conversation is read again from the server
    // (a new tab starts from its history anyway: nothing to say then).
    if (app.connection.resuming) {
      notice("Some updates could not be replayed; the conversation was reloaded from the server.");
    }
    app.models.clear();
    if (app.open) {
      const fresh = new Conversation(app.open.id);
      for (const turn of app.open.turns) if (turn.unsent) fresh.sending(turn.key, turn.userText);
      app.models.set(fresh.id, fresh);
      app.open = fresh;
    }
  }
  requestList();
  if (app.open) requestHistory(app.open.id, welcome.recovered ? null : "Reloaded from the server.");
  draw();
}

function onEvent(event) {
  if (["user", "resumed", "replaced", "assistant", "turn_error", "cancelled"].includes(event.kind)) {
    app.connection.settle(event.client_msg_id); // it arrived: never resent again
  }
  const model = app.models.get(event.conversation_id);
  if (model) model.apply(event);
  if (event.kind === "renamed") {
    const entry = app.conversations.find((c) => c.conversation_id === event.conversation_id);
    if (entry) entry.title = event.text;
  }
  if (!app.conversations.some((c) => c.conversation_id === event.conversation_id)) scheduleList();
  if (event.conversation_id !== app.open?.id && ["user", "assistant"].includes(event.kind)) {
    app.unread.add(event.conversation_id);
  }
  if (event.conversation_id === app.open?.id || event.kind === "renamed") draw();
  else drawList();
}

const historyNotes = new Map(); // conversation id -> the note to show once its history arrives

function onFrame(frame) {
  switch (frame.type) {
    case "history": {
      const model = app.models.get(frame.conversation_id);
      if (model) model.loadHistory(frame.messages, historyNotes.get(frame.conversation_id) ?? null);
      historyNotes.delete(frame.conversation_id);
      if (frame.conversation_id === app.open?.id) draw();
      break;
    }
    case "conversations":
      app.conversations = frame.conversations;
      drawList();
      break;
    case "accepted":
      draw();
      break;
    case "error":
      onError(frame);
      break;
    default:
      break;
  }
}

function onError(error) {
  if (error.code === "unknown_conversation") return; // a conversation not started yet: nothing to load
  const text = ERRORS[error.code] ?? `The server refused a request (${error.code}).`;
  notice(text);
  const key = error.client_msg_id;
  if (!key) return;
  if (error.code === "unavailable") return app.connection.retryLater(key, 2000);
  if (error.code === "rate_limited" && error.retry_after_ms != null) {
    return app.connection.retryLater(key, error.retry_after_ms);
  }
  const turn = app.open?.turn(key, false);
  if (turn && turn.unsent) {
    turn.failed = text;
    turn.unsent = false;
    draw();
  }
}

function requestList() {
  app.connection.send({ type: "conversations", limit: 50 });
}

function scheduleList() {
  if (app.listTimer) return; // one request for a burst of events
  app.listTimer = setTimeout(() => {
    app.listTimer = null;
    requestList();
  }, 300);
}

function requestHistory(id, note = null) {
  if (note) historyNotes.set(id, note);
  app.connection.send({ type: "history", conversation_id: id, limit: 200 });
}

// -- actions ------------------------------------------------------------------------

function newConversationId() {
  return `web-${uuid().slice(0, 8)}`;
}

function openConversation(id, { fetch = true } = {}) {
  let model = app.models.get(id);
  if (!model) {
    model = new Conversation(id);
    app.models.set(id, model);
  }
  app.open = model;
  app.unread.delete(id);
  sessionStorage.setItem(OPEN_KEY, id);
  if (fetch) requestHistory(id);
  draw();
}

function send() {
  const box = $("text");
  const text = box.value;
  if (!text.trim() || !app.open) return;
  const key = uuid();
  app.open.sending(key, text);
  app.connection.sendReliably({ type: "send", conversation_id: app.open.id, client_msg_id: key, text });
  box.value = "";
  draw();
}

function answer(turn, value) {
  app.connection.sendReliably({ type: "resume", conversation_id: app.open.id, client_msg_id: turn.key, value,
                                interrupt_id: turn.question?.id ?? undefined });
}

function stop() {
  if (app.open) app.connection.send({ type: "cancel", conversation_id: app.open.id });
}

function regenerate() {
  const last = app.open?.last;
  if (!last) return;
  app.connection.sendReliably({ type: "regenerate", conversation_id: app.open.id, client_msg_id: last.key,
                                request_id: uuid() });
}

function rename() {
  if (!app.open) return;
  const title = prompt("New title for this conversation:", currentTitle());
  if (title && title.trim()) {
    app.connection.send({ type: "rename", conversation_id: app.open.id, title: title.trim().slice(0, 200) });
  }
}

function clearConversation() {
  if (app.open && confirm("Clear this conversation? Its messages are removed on every device.")) {
    app.connection.sendReliably({ type: "clear", conversation_id: app.open.id, client_msg_id: uuid() });
  }
}

// -- drawing ------------------------------------------------------------------------

function currentTitle() {
  const entry = app.conversations.find((c) => c.conversation_id === app.open?.id);
  return entry?.title || (app.open?.turns.length ? app.open.id : "New conversation");
}

function drawList() {
  drawConversations($("conversations"), app.conversations, app.open?.id, app.unread, (id) => openConversation(id));
}

function draw() {
  drawList();
  $("title").textContent = currentTitle();
  drawMessages($("messages"), app.open, answer);
  const running = app.open?.running;
  $("stop").hidden = !running || running.unsent;
  const last = app.open?.last;
  $("regenerate").hidden = !last || running !== null || last.reply.state !== "done" || last.noCmid;
}

// -- start ----------------------------------------------------------------------------

function bind() {
  $("sign-in").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    localStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    signIn(token);
  });
  $("sign-out").addEventListener("click", signOut);
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  $("stop").addEventListener("click", stop);
  $("regenerate").addEventListener("click", regenerate);
  $("rename").addEventListener("click", rename);
  $("clear").addEventListener("click", clearConversation);
  $("new-conversation").addEventListener("click", () => {
    openConversation(newConversationId(), { fetch: false });
    $("text").focus();
  });
  // Another tab signed out (or in with another token): follow it.
  addEventListener("storage", (e) => {
    if (e.key === TOKEN_KEY && !e.newValue && app.connection) signOut();
  });
}

async function main() {
  bind();
  app.deviceId = await deviceId();
  tokenFromFragment();
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) signIn(token);
  else showSignIn(null);
  window.switchboard = app; // for the browser's console (and tests)
}

main();
