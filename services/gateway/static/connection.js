// The protocol connection (docs/protocol.md, version 1): hello with the
// device's stored position, exact resume, deduplication by event id,
// cumulative batched acks, resending unaccepted sends, and reconnecting with
// exponential back-off and full jitter. No DOM here: the page listens to
// the events this object dispatches.
//
//   "state"   detail: {state, text}       the connection's state changed
//   "welcome" detail: welcome frame       a session began (after any reconnect)
//   "event"   detail: event frame         a new event, in stream order, each once
//   "frame"   detail: any other frame     accepted, history, conversations, error, ...
//   "stopped" detail: {code, reason}      closed for good: do not reconnect

const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 30000;
const ACK_DELAY_MS = 250;
const HEARTBEAT_MS = 15000; // a ping when nothing arrived for this long ...
const HEARTBEAT_TIMEOUT_MS = 10000; // ... and a reconnect when no answer follows

/** Compare two stream ids `<ms>-<seq>` numerically, part by part. */
export function compareIds(a, b) {
  const [am, as] = a.split("-").map(BigInt);
  const [bm, bs] = b.split("-").map(BigInt);
  if (am !== bm) return am < bm ? -1 : 1;
  if (as !== bs) return as < bs ? -1 : 1;
  return 0;
}

/** Close codes after which reconnecting cannot help (docs/protocol.md, "Close codes"). */
const TERMINAL = new Map([
  [1000, "The connection was closed."],
  [1002, "The page and the server disagree on the WebSocket protocol."],
  [1007, "The page sent text that is not valid UTF-8."],
  [4001, "Your token was refused: sign in again."],
  [4002, "The page broke the protocol."],
  [4004, "Your sign-in expired: sign in again with a new token. Nothing is lost."],
]);

export const REPLACED = "replaced by a newer connection of this device";

/** The user id (`sub`) of a JWT, read without checking it (the server does). */
export function tokenUser(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part)).sub ?? null;
  } catch {
    return null;
  }
}

export class Connection extends EventTarget {
  constructor({ url, token, deviceId, storage = localStorage, pendingStorage = sessionStorage }) {
    super();
    this.url = url;
    this.token = token;
    this.deviceId = deviceId;
    this.storage = storage;
    this.pendingStorage = pendingStorage;
    this.positionKey = `switchboard.position.${deviceId}`;
    this.pendingKey = `switchboard.pending.${deviceId}`;
    this.user = tokenUser(token);
    const stored = this.#readJson(storage, this.positionKey);
    // A position is the device's own, for this user only.
    this.position = stored && stored.user === this.user ? stored : { user: this.user, last_id: null, epoch: null };
    this.pending = new Map(this.#readJson(pendingStorage, this.pendingKey) ?? []); // client_msg_id -> frame
    this.ws = null;
    this.welcomed = false;
    this.attempt = 0;
    this.timer = null;
    this.ackTimer = null;
    this.acked = null;
    this.lastSent = null; // the newest event id this connection was sent
    this.stopped = false;
    this.resuming = false; // the hello carried a stored position
    this.heartbeat = null;
    this.lastFrameAt = 0;
    this.onOnline = () => this.reconnectNow();
    this.onOffline = () => this.ws && this.#drop("offline");
    addEventListener("online", this.onOnline);
    addEventListener("offline", this.onOffline);
  }

  #readJson(storage, key) {
    try {
      return JSON.parse(storage.getItem(key));
    } catch {
      return null;
    }
  }

  #state(state, text) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, text } }));
  }

  start() {
    this.stopped = false;
    this.#open();
  }

  /** Close for good (signing out, another tab took the device). */
  stop(text = "Disconnected.") {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.heartbeat);
    removeEventListener("online", this.onOnline);
    removeEventListener("offline", this.onOffline);
    if (this.ws) this.ws.close(1000);
    this.ws = null;
    this.#state("stopped", text);
  }

  reconnectNow() {
    if (this.stopped || (this.ws && this.ws.readyState <= WebSocket.OPEN)) return;
    clearTimeout(this.timer);
    this.attempt = 0;
    this.#open();
  }

  #open() {
    clearTimeout(this.timer);
    this.welcomed = false;
    this.lastSent = null;
    this.#state("connecting", this.attempt ? "Reconnecting…" : "Connecting…");
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => {
      const hello = { type: "hello", token: this.token, device_id: this.deviceId };
      this.resuming = Boolean(this.position.last_id && this.position.epoch);
      if (this.resuming) {
        hello.last_id = this.position.last_id;
        hello.epoch = this.position.epoch;
      }
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (message) => this.ws === ws && this.#receive(message.data);
    ws.onclose = (close) => this.ws === ws && this.#closed(close.code, close.reason);
  }

  #receive(data) {
    this.lastFrameAt = Date.now();
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (frame.type === "welcome") return this.#welcome(frame);
    if (frame.type === "event") return this.#event(frame);
    if (frame.type === "accepted" && frame.client_msg_id) this.#settle(frame.client_msg_id);
    if (frame.type === "error" && frame.client_msg_id && this.#refusesForGood(frame)) this.#settle(frame.client_msg_id);
    this.dispatchEvent(new CustomEvent("frame", { detail: frame }));
  }

  #welcome(frame) {
    this.welcomed = true;
    this.attempt = 0;
    if (frame.epoch !== this.position.epoch || !frame.recovered) {
      // Another life of the stream, or a gap: the position starts again
      // from what this replay delivers (docs/protocol.md, `recovered`).
      this.position = { user: this.user, last_id: null, epoch: frame.epoch };
      this.#savePosition();
    }
    this.#state("open", "Connected");
    this.dispatchEvent(new CustomEvent("welcome", { detail: frame }));
    for (const send of this.pending.values()) this.#write(send); // safe: same client_msg_id
    clearInterval(this.heartbeat);
    this.heartbeat = setInterval(() => this.#beat(), HEARTBEAT_MS / 3);
  }

  #event(frame) {
    this.lastSent = frame.id;
    if (this.position.last_id && compareIds(frame.id, this.position.last_id) <= 0) return; // seen
    this.dispatchEvent(new CustomEvent("event", { detail: frame }));
    this.position.last_id = frame.id;
    this.#savePosition();
    this.#scheduleAck();
  }

  #savePosition() {
    this.storage.setItem(this.positionKey, JSON.stringify(this.position));
  }

  #scheduleAck() {
    if (this.ackTimer) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = null;
      const id = this.position.last_id;
      // Only what this connection was sent may be acked (`invalid_ack`).
      if (!id || !this.welcomed || !this.lastSent || compareIds(id, this.lastSent) > 0) return;
      if (this.acked && compareIds(id, this.acked) <= 0) return;
      if (this.#write({ type: "ack", id })) this.acked = id;
    }, ACK_DELAY_MS);
  }

  #beat() {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    const quiet = Date.now() - this.lastFrameAt;
    if (quiet > HEARTBEAT_MS + HEARTBEAT_TIMEOUT_MS) return this.#drop("no answer to ping");
    if (quiet > HEARTBEAT_MS) this.#write({ type: "ping" });
  }

  /** Give up on this socket now (the network is gone): reconnect as after a drop. */
  #drop(why) {
    const ws = this.ws;
    this.ws = null;
    try {
      ws.close(4000, why);
    } catch {
      /* already closing */
    }
    this.#closed(1006, why);
  }

  #closed(code, reason) {
    this.ws = null;
    this.welcomed = false;
    clearInterval(this.heartbeat);
    if (this.stopped) return;
    const terminal = TERMINAL.get(code) ?? (code === 4005 && reason === REPLACED
      ? "This device is connected in another window." : null);
    if (terminal) {
      this.stopped = true;
      this.#state("stopped", terminal);
      this.dispatchEvent(new CustomEvent("stopped", { detail: { code, reason, text: terminal } }));
      return;
    }
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2); // jitter: a storm spreads out
    this.attempt += 1;
    const why = navigator.onLine === false ? "offline" : closeText(code);
    this.#state("waiting", `${why}; reconnecting in ${Math.ceil(delay / 1000)} s`);
    this.timer = setTimeout(() => this.#open(), delay);
  }

  #write(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN || !this.welcomed) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  /** Send a frame now if connected; returns whether it went out. */
  send(frame) {
    return this.#write(frame);
  }

  /**
   * A frame the server answers with `accepted` (send, resume, regenerate,
   * clear with client_msg_id): kept, and resent after each reconnect, until
   * it is accepted or refused for good.
   */
  sendReliably(frame) {
    const key = frame.new_client_msg_id ?? frame.request_id ?? frame.client_msg_id;
    this.pending.set(key, frame);
    this.#savePending();
    this.#write(frame);
  }

  /** Resend one pending frame later (a refusal that passes: rate_limited, unavailable). */
  retryLater(key, ms) {
    setTimeout(() => {
      const frame = this.pending.get(key);
      if (frame) this.#write(frame);
    }, ms);
  }

  #refusesForGood(error) {
    if (error.code === "unavailable") return false;
    if (error.code === "rate_limited" && error.retry_after_ms != null) return false;
    return true;
  }

  /** Forget a pending frame: it was answered (an event shows it arrived). */
  settle(key) {
    this.#settle(key);
  }

  /** The frames not yet accepted, oldest first. */
  pendingFrames() {
    return [...this.pending.values()];
  }

  #settle(key) {
    for (const [k, frame] of this.pending) {
      if (k === key || frame.client_msg_id === key) this.pending.delete(k);
    }
    this.#savePending();
  }

  isPending(key) {
    return this.pending.has(key);
  }

  #savePending() {
    this.pendingStorage.setItem(this.pendingKey, JSON.stringify([...this.pending]));
  }
}

function closeText(code) {
  switch (code) {
    case 1001: return "The server is restarting";
    case 1006: return "The connection dropped";
    case 1009: return "A message was too large for the server";
    case 1011: return "The server is unavailable";
    case 4003: return "The server timed out waiting for the page";
    case 4005: return "Too many connections";
    case 4006: return "Too many frames were sent";
    case 4008: return "The page fell behind";
    case 4009: return "Messages were trimmed on the server";
    default: return `The connection closed (${code})`;
  }
}
