// A safe Markdown subset, rendered as DOM nodes: paragraphs, headings,
// emphasis, code spans and blocks, lists, and links. Text only ever reaches
// the page through text nodes (textContent), never as markup, and a link is
// made only for an http: or https: address: model output cannot create an
// element, an attribute or a script.

/** The nodes of `source` rendered, as a DocumentFragment. */
export function render(source) {
  const fragment = document.createDocumentFragment();
  for (const block of blocks(String(source ?? ""))) fragment.append(block);
  return fragment;
}

function el(tag, children = []) {
  const node = document.createElement(tag);
  node.append(...children);
  return node;
}

/** Block structure, line by line. */
function* blocks(text) {
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(/^\s*(```|~~~)/);
    if (fence) {
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trimStart().startsWith(fence[1])) body.push(lines[i++]);
      i += 1; // the closing fence (or the end)
      const code = el("code");
      code.textContent = body.join("\n");
      yield el("pre", [code]);
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    if (heading) {
      // Headings inside a message sit below the page's own (h1, h2).
      yield el(`h${Math.min(6, heading[1].length + 2)}`, inline(heading[2]));
      i += 1;
      continue;
    }
    const item = listItem(line);
    if (item) {
      const list = el(item.ordered ? "ol" : "ul");
      while (i < lines.length) {
        const next = listItem(lines[i]);
        if (!next || next.ordered !== item.ordered) break;
        list.append(el("li", inline(next.text)));
        i += 1;
      }
      yield list;
      continue;
    }
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const paragraph = [];
    while (i < lines.length && lines[i].trim() && !startsBlock(lines[i])) paragraph.push(lines[i++]);
    const nodes = [];
    paragraph.forEach((part, index) => {
      if (index) nodes.push(el("br"));
      nodes.push(...inline(part));
    });
    yield el("p", nodes);
  }
}

function listItem(line) {
  const bullet = line.match(/^\s*[-*+]\s+(.*)$/);
  if (bullet) return { ordered: false, text: bullet[1] };
  const number = line.match(/^\s*\d{1,9}[.)]\s+(.*)$/);
  return number ? { ordered: true, text: number[1] } : null;
}

function startsBlock(line) {
  return /^\s*(```|~~~)/.test(line) || /^#{1,6}\s/.test(line) || listItem(line) !== null;
}

/** Inline spans: `code`, **strong**, *em* / _em_, [text](http(s) url). */
export function inline(text) {
  const nodes = [];
  let plain = "";
  const flush = () => {
    if (plain) nodes.push(document.createTextNode(plain));
    plain = "";
  };
  let i = 0;
  while (i < text.length) {
    const rest = text.slice(i);
    let m;
    if ((m = rest.match(/^`([^`]+)`/))) {
      flush();
      const code = el("code");
      code.textContent = m[1];
      nodes.push(code);
    } else if ((m = rest.match(/^\*\*(?=\S)([\s\S]*?\S)\*\*/)) || (m = rest.match(/^__(?=\S)([\s\S]*?\S)__/))) {
      flush();
      nodes.push(el("strong", inline(m[1])));
    } else if ((m = rest.match(/^\*(?=\S)([^*]*?\S)\*/)) || (m = rest.match(/^_(?=\S)([^_]*?\S)_(?![A-Za-z0-9])/))) {
      flush();
      nodes.push(el("em", inline(m[1])));
    } else if ((m = rest.match(/^\[([^\]]+)\]\(([^)\s]+)\)/))) {
      flush();
      nodes.push(link(m[1], m[2]));
    } else {
      plain += text[i];
      i += 1;
      continue;
    }
    i += m[0].length;
  }
  flush();
  return nodes;
}

/** A link for http: and https: addresses only; anything else stays text. */
function link(label, href) {
  let url = null;
  try {
    url = new URL(href);
  } catch {
    url = null;
  }
  if (!url || (url.protocol !== "http:" && url.protocol !== "https:")) {
    return document.createTextNode(`[${label}](${href})`);
  }
  const a = el("a", inline(label));
  a.href = url.href;
  a.rel = "noopener noreferrer nofollow";
  a.target = "_blank";
  return a;
}
