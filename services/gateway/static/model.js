// One conversation's turns, built from `history` and events, keyed by
// client_msg_id so that whatever order they come in (a history read while a
// replay runs, a replay after a reload) each message is there once.
//
// A turn: {key, userText, userEventId, reply: {text, state, eventId}, question, unsent, failed}
// reply.state: "none" | "streaming" | "done" | "error" | "cancelled"

const FINAL = { assistant: "done", turn_error: "error", cancelled: "cancelled" };

export class Conversation {
  constructor(id) {
    this.id = id;
    this.turns = [];
    this.byKey = new Map();
    this.notes = []; // {afterKey, text}: "cleared", "history reloaded"
  }

  turn(key, create = true) {
    let turn = this.byKey.get(key);
    if (!turn && create) {
      turn = { key, userText: "", userEventId: null, reply: { text: "", state: "none", eventId: null },
               question: null, unsent: false, failed: null };
      this.byKey.set(key, turn);
      this.turns.push(turn);
    }
    return turn;
  }

  get last() {
    return this.turns[this.turns.length - 1] ?? null;
  }

  /** The turn waiting for its reply, if any (Stop applies to it). */
  get running() {
    return this.turns.find((t) => !t.failed && (t.reply.state === "none" || t.reply.state === "streaming")) ?? null;
  }

  /** A message this device is sending (shown before the server has it). */
  sending(key, text) {
    const turn = this.turn(key);
    turn.userText = text;
    turn.unsent = true;
  }

  /** Apply one event; returns false for kinds that change nothing here. */
  apply(event) {
    const key = event.client_msg_id;
    switch (event.kind) {
      case "user": {
        const turn = this.turn(key);
        turn.userText = event.text;
        turn.userEventId = event.id;
        turn.unsent = false;
        return true;
      }
      case "delta":
      case "tool_call":
      case "tool_result": {
        const turn = this.turn(key);
        if (!["none", "streaming"].includes(turn.reply.state)) return false; // its final is shown
        const piece = event.kind === "delta" ? event.text : "";
        turn.reply.text = event.seq === 0 ? piece : turn.reply.text + piece;
        turn.reply.state = "streaming";
        return true;
      }
      case "assistant":
      case "turn_error":
      case "cancelled": {
        const turn = this.turn(key);
        turn.reply = { text: event.text, state: FINAL[event.kind], eventId: event.id };
        turn.question = null;
        return true;
      }
      case "interrupt": {
        const turn = this.turn(key);
        try {
          turn.question = JSON.parse(event.text);
        } catch {
          turn.question = { id: null, value: event.text };
        }
        return true;
      }
      case "resumed": {
        const turn = this.turn(key, false);
        if (turn) turn.question = null;
        return Boolean(turn);
      }
      case "replaced": {
        const index = this.turns.findIndex((t) => t.key === key);
        if (index < 0) return false;
        if (event.text === "message") {
          for (const t of this.turns.splice(index)) this.byKey.delete(t.key);
        } else {
          for (const t of this.turns.splice(index + 1)) this.byKey.delete(t.key);
          this.turns[index].reply = { text: "", state: "none", eventId: null };
        }
        return true;
      }
      case "cleared":
        this.turns = [];
        this.byKey.clear();
        this.notes = [{ text: "The conversation was cleared." }];
        return true;
      default:
        return false;
    }
  }

  /**
   * Take the `history` answer as the truth for what it holds, keeping the
   * turns it does not have yet (being written, or newer) after it.
   */
  loadHistory(messages, note = null) {
    const turns = [];
    const byKey = new Map();
    let current = null;
    for (const message of messages) {
      if (message.role === "user") {
        const key = message.client_msg_id ?? message.id;
        const known = this.byKey.get(key);
        current = { key, noCmid: !message.client_msg_id, userText: message.text,
                    userEventId: known?.userEventId ?? null,
                    reply: { text: "", state: "none", eventId: null }, question: known?.question ?? null,
                    unsent: false, failed: null };
        if (known && known.reply.state !== "none") current.reply = known.reply;
        turns.push(current);
        byKey.set(key, current);
      } else if (message.role === "assistant" && current) {
        // A final reply from an event is the reply; the checkpoint's is used otherwise.
        if (current.reply.eventId && current.reply.state !== "streaming") continue;
        const prior = current.reply.fromHistory ? current.reply.text + "\n" : "";
        current.reply = { text: prior + message.text, state: "done", eventId: null, fromHistory: true };
        current.question = null;
      }
    }
    for (const turn of this.turns) {
      if (!byKey.has(turn.key)) {
        turns.push(turn);
        byKey.set(turn.key, turn);
      }
    }
    this.turns = turns;
    this.byKey = byKey;
    this.notes = note ? [{ text: note }] : [];
  }
}
