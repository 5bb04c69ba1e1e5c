// The page's DOM, drawn from the model. Server text only ever becomes text
// nodes (textContent) or the safe Markdown subset (markdown.js).

import { render as markdown } from "./markdown.js";

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "text") node.textContent = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

const REPLY_PREFIX = { error: "The assistant failed: ", cancelled: "Stopped. " };

/** The messages of `conversation` into the list `list`; `onAnswer(turn, text)` answers a question. */
export function drawMessages(list, conversation, onAnswer) {
  const focused = document.activeElement;
  const keepAnswer = focused?.classList.contains("answer") ? { key: focused.dataset.cmid, value: focused.value } : null;
  const nodes = [];
  for (const note of conversation?.notes ?? []) nodes.push(el("li", { class: "note", text: note.text }));
  for (const turn of conversation?.turns ?? []) {
    const classes = ["user", turn.unsent ? "unsent" : "", turn.failed ? "failed" : ""].filter(Boolean).join(" ");
    const user = el("li", { class: classes, dataset: { role: "user", cmid: turn.key } });
    user.textContent = turn.userText;
    if (turn.failed) user.append(el("span", { class: "error-text", text: ` (not sent: ${turn.failed})` }));
    nodes.push(user);
    if (turn.reply.state !== "none" || turn.question) nodes.push(drawReply(turn, onAnswer));
  }
  list.replaceChildren(...nodes);
  if (keepAnswer) {
    const box = list.querySelector(`textarea.answer[data-cmid="${CSS.escape(keepAnswer.key)}"]`);
    if (box) {
      box.value = keepAnswer.value;
      box.focus();
    }
  }
  list.scrollTop = list.scrollHeight;
}

function drawReply(turn, onAnswer) {
  const reply = turn.reply;
  const item = el("li", { class: "assistant", dataset: { role: "assistant", cmid: turn.key, state: reply.state } });
  if (reply.eventId) item.dataset.eventId = reply.eventId;
  if (reply.state === "streaming") item.setAttribute("aria-busy", "true");
  const body = el("div", { class: "body" });
  if (REPLY_PREFIX[reply.state]) body.append(el("p", { class: "reply-state", text: REPLY_PREFIX[reply.state] }));
  body.append(markdown(reply.text));
  item.append(body);
  if (turn.question) item.append(drawQuestion(turn, onAnswer));
  return item;
}

function questionText(value) {
  if (value && typeof value === "object" && "question" in value) return String(value.question);
  return typeof value === "string" ? value : JSON.stringify(value);
}

function drawQuestion(turn, onAnswer) {
  const id = `answer-${turn.key}`;
  const box = el("textarea", { id, class: "answer", rows: "2", dataset: { cmid: turn.key } });
  const form = el("form", { class: "question", dataset: { cmid: turn.key } }, [
    el("p", { class: "question-text", text: `The assistant asks: ${questionText(turn.question.value)}` }),
    el("label", { for: id, text: "Your answer" }),
    box,
    el("button", { type: "submit", text: "Answer" }),
  ]);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (box.value.trim()) onAnswer(turn, box.value);
  });
  box.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  return form;
}

/** The conversation list; `onOpen(id)` opens one. */
export function drawConversations(list, conversations, openId, unread, onOpen) {
  list.replaceChildren(...conversations.map((c) => {
    const title = c.title || c.conversation_id;
    const button = el("button", { type: "button", dataset: { conversation: c.conversation_id }, onclick: () => onOpen(c.conversation_id) });
    button.textContent = title;
    if (c.conversation_id === openId) button.setAttribute("aria-current", "true");
    if (unread.has(c.conversation_id)) {
      button.classList.add("unread");
      button.append(el("span", { class: "visually-hidden", text: " (new messages)" }));
    }
    return el("li", {}, [button]);
  }));
}
