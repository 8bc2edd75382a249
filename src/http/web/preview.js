// Draws a rendered payload roughly as the chat app would, with DOM nodes and text
// only: a payload is built from hostile job fields, so nothing in it is ever parsed
// as HTML here.
function el(tag, cls, text) {
  const n = document.createElement(tag);
  if (cls) n.className = cls;
  if (text !== undefined) n.textContent = text;
  return n;
}

function decodeSlack(text) {
  return text.replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&");
}

function safeHref(url) {
  return /^https?:\/\//i.test(url) ? url : null;
}

function link(url, label) {
  const href = safeHref(url);
  if (!href) return el("span", "link", label);
  const a = el("a", "link", label);
  a.href = href;
  a.rel = "noreferrer noopener";
  a.target = "_blank";
  return a;
}

// Slack mrkdwn: *bold* _italic_ ~strike~ `code` ```pre``` <url|label> <@U…> <!here>.
function mrkdwnInline(parent, text) {
  const re = /(`[^`\n]+`)|(<[^<>\n]+>)|(\*[^*\n]+\*)|(_[^_\n]+_)|(~[^~\n]+~)/g;
  let last = 0;
  for (const m of text.matchAll(re)) {
    if (m.index > last) parent.append(decodeSlack(text.slice(last, m.index)));
    const tok = m[0];
    const inner = tok.slice(1, -1);
    if (m[1]) parent.append(el("code", null, decodeSlack(inner)));
    else if (m[2]) {
      if (inner.startsWith("@")) parent.append(el("span", "mention", `@${inner.slice(1).split("|")[0]}`));
      else if (inner.startsWith("!")) parent.append(el("span", "mention", `@${inner.slice(1).split("|")[0]}`));
      else if (inner.startsWith("#")) parent.append(el("span", "mention", `#${inner.slice(1).split("|").pop()}`));
      else {
        const [url, label] = inner.split("|");
        parent.append(link(decodeSlack(url), decodeSlack(label ?? url)));
      }
    } else if (m[3]) mrkdwnInline(parent.appendChild(el("b")), inner);
    else if (m[4]) mrkdwnInline(parent.appendChild(el("i")), inner);
    else if (m[5]) mrkdwnInline(parent.appendChild(el("s")), inner);
    last = m.index + tok.length;
  }
  if (last < text.length) parent.append(decodeSlack(text.slice(last)));
}

function mrkdwn(text, cls = "mrkdwn") {
  const box = el("div", cls);
  const parts = String(text).split("```");
  parts.forEach((part, i) => {
    if (i % 2 === 1) box.append(el("pre", "slack-pre", decodeSlack(part.replace(/^\n/, ""))));
    else mrkdwnInline(box, part);
  });
  return box;
}

function slackText(t, cls) {
  if (!t) return el("div");
  return t.type === "mrkdwn" ? mrkdwn(t.text ?? "", cls) : el("div", cls, t.text ?? "");
}

function richText(block) {
  const box = el("div", "mrkdwn");
  for (const part of block.elements ?? []) {
    const target = part.type === "rich_text_preformatted" ? box.appendChild(el("pre", "slack-pre")) : box.appendChild(el("div"));
    for (const e of part.elements ?? []) {
      if (e.type === "link") target.append(link(e.url ?? "", e.text ?? e.url ?? ""));
      else if (e.type === "user") target.append(el("span", "mention", `@${e.user_id}`));
      else if (e.type === "broadcast") target.append(el("span", "mention", `@${e.range}`));
      else target.append(e.text ?? "");
    }
  }
  return box;
}

function slack(payload) {
  const msg = el("div", "slack-msg");
  msg.append(el("div", "slack-avatar", "DN"));
  const body = msg.appendChild(el("div", "slack-body"));
  const who = body.appendChild(el("div"));
  who.append(el("span", "slack-who", "deadline-notifier"), " ", el("span", "slack-app", "APP"));
  const blocks = Array.isArray(payload.blocks) ? payload.blocks : [];
  if (!blocks.length && payload.text) body.append(mrkdwn(payload.text));
  for (const b of blocks) {
    switch (b.type) {
      case "header":
        body.append(el("div", "slack-header", b.text?.text ?? ""));
        break;
      case "section": {
        if (b.text) body.append(slackText(b.text));
        if (Array.isArray(b.fields)) {
          const grid = body.appendChild(el("div", "slack-fields"));
          for (const f of b.fields) grid.append(slackText(f));
        }
        break;
      }
      case "context": {
        const row = body.appendChild(el("div", "slack-context"));
        for (const e of b.elements ?? []) if (e.type !== "image") row.append(slackText(e, "mrkdwn small"));
        break;
      }
      case "actions":
        for (const e of b.elements ?? []) {
          const label = e.text?.text ?? "button";
          const btn = e.url ? link(e.url, label) : el("span", null, label);
          btn.classList.add("slack-button");
          body.append(btn);
        }
        break;
      case "divider":
        body.append(el("hr"));
        break;
      case "rich_text":
        body.append(richText(b));
        break;
      default:
        body.append(el("div", "unknown", `[${b.type} block]`));
    }
  }
  return msg;
}

function teamsText(t) {
  // <at>Name</at> is how a Teams mention appears in text.
  return String(t ?? "").replace(/<at>(.*?)<\/at>/g, "@$1");
}

function cardElement(parent, e) {
  switch (e.type) {
    case "TextBlock": {
      const n = parent.appendChild(el("div", "card-text", teamsText(e.text)));
      if (e.size) n.classList.add(`size-${String(e.size).toLowerCase()}`);
      if (e.weight === "Bolder") n.classList.add("bolder");
      if (e.isSubtle) n.classList.add("subtle");
      break;
    }
    case "RichTextBlock": {
      const n = parent.appendChild(el("div", "card-text"));
      for (const r of e.inlines ?? []) {
        const run = n.appendChild(el("span", null, teamsText(typeof r === "string" ? r : r.text)));
        if (r.size) run.classList.add(`size-${String(r.size).toLowerCase()}`);
        if (r.weight === "Bolder") run.classList.add("bolder");
        if (r.fontType === "Monospace") run.classList.add("mono");
        if (r.italic) run.classList.add("italic");
      }
      break;
    }
    case "FactSet": {
      const dl = parent.appendChild(el("dl", "card-facts"));
      for (const f of e.facts ?? []) dl.append(el("dt", null, teamsText(f.title)), el("dd", null, teamsText(f.value)));
      break;
    }
    case "Container":
      for (const i of e.items ?? []) cardElement(parent, i);
      break;
    case "ColumnSet": {
      const row = parent.appendChild(el("div", "card-columns"));
      for (const c of e.columns ?? []) {
        const col = row.appendChild(el("div"));
        for (const i of c.items ?? []) cardElement(col, i);
      }
      break;
    }
    default:
      parent.append(el("div", "unknown", `[${e.type}]`));
  }
}

function teams(payload) {
  const card = payload.attachments?.[0]?.content ?? {};
  const box = el("div", "teams-card");
  for (const e of card.body ?? []) cardElement(box, e);
  for (const a of card.actions ?? []) {
    const btn = a.url ? link(a.url, a.title ?? "Open") : el("span", null, a.title ?? "action");
    btn.classList.add("teams-action");
    box.append(btn);
  }
  return box;
}

// Returns the drawn message for a channel kind (null when the kind has no look).
export function draw(kind, payload) {
  if (!payload || typeof payload !== "object") return null;
  if (kind === "slack") return slack(payload);
  if (kind === "slack_app") return slackApp(payload);
  if (kind === "teams") return teams(payload);
  return null;
}

// A Slack app message: the living root as it reads after this event, and the
// event's reply in its thread.
function slackApp(payload) {
  const box = el("div", "slack-app-preview");
  if (payload.root && typeof payload.root === "object") {
    box.append(el("div", "help", "The job's one message, after this event:"), slack(payload.root));
  }
  if (payload.reply && typeof payload.reply === "object") {
    const where = payload.broadcast ? "In its thread, also sent to the channel:" : "In its thread:";
    box.append(el("div", "help", where), slack(payload.reply));
  }
  return box;
}
