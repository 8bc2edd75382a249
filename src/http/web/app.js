// The artists' page. Everything here goes through the public API (api.js); job
// data reaches the DOM only as text (textContent / text nodes), never as HTML.
import { api, ApiError, session } from "./api.js";
import { parseJobRef, parseQueueRef } from "./jobref.js";
import { draw } from "./preview.js";

const $ = (id) => document.getElementById(id);
const REFRESH_MS = 5000;
const FAST_REFRESH_MS = 300;
// After "Subscribe", refresh quickly until the new job's name has been read.
const FAST_FOR_MS = 60000;

const FRIENDLY = {
  PENDING: "waiting on dependencies",
  READY: "waiting for a worker",
  ASSIGNED: "assigned to a worker",
  STARTING: "starting",
  SCHEDULED: "scheduled",
  RUNNING: "rendering",
  INTERRUPTING: "stopping",
  SUSPENDED: "suspended",
  CANCELED: "canceled",
  FAILED: "failed",
  SUCCEEDED: "done",
  NOT_COMPATIBLE: "no compatible workers",
};

// Event checkboxes are named in words; the event's API name stands beside the label
// (not in it), so no control's name contains another's ("job.requeued" ⊃ "queue").
const EVENT_TEXT = {
  "job.started": "Started",
  "job.succeeded": "Succeeded",
  "job.failed": "Failed",
  "job.canceled": "Canceled",
  "job.suspended": "Suspended",
  "job.not_compatible": "No compatible workers",
  "job.requeued": "Sent back to run again",
  "job.tasks_failed": "Some tasks failed",
  "job.create_failed": "Could not be created",
  "job.upload_failed": "Attachments upload failed",
  "job.update_failed": "Update failed",
  "job.archived": "Archived",
  "job.stalled": "Stalled (no task finished for a while)",
  "job.progress": "Passed a progress milestone",
};

const state = {
  team: null,
  channels: [],
  watches: [],
  timer: null,
  fastUntil: 0,
  farmTouched: false,
  generation: 0,
  // Which list the jobs table shows, what it is searched for, and how many pages
  // of it "Show more" has asked for.
  view: "active",
  query: "",
  pages: 1,
};

const PAGE_SIZE = { active: 100, finished: 50 };

/**
 * The jobs table's rows: `state.pages` pages' worth of the current view, following
 * the cursor. A search page reads a bounded slice of the history, so it may match
 * few rows and still have a next page: keep going (within a bound) until the rows
 * fill the pages asked for.
 */
async function loadSubs() {
  const q = state.query ? `&q=${encodeURIComponent(state.query)}` : "";
  const base = `/v1/subscriptions?state=${state.view}&limit=${PAGE_SIZE[state.view]}${q}`;
  const want = state.pages * PAGE_SIZE[state.view];
  let rows = [];
  let next = null;
  for (let calls = 0; calls < state.pages + 50 && rows.length < want; calls++) {
    const page = await api("GET", next ? `${base}&cursor=${encodeURIComponent(next)}` : base);
    rows = rows.concat(page.subscriptions);
    next = page.next;
    if (!next) break;
  }
  return { subscriptions: rows, next };
}

function el(tag, cls, text) {
  const n = document.createElement(tag);
  if (cls) n.className = cls;
  if (text !== undefined && text !== null) n.textContent = String(text);
  return n;
}

function button(label, onClick, cls) {
  const b = el("button", cls, label);
  b.type = "button";
  b.addEventListener("click", onClick);
  return b;
}

function when(iso) {
  const t = el("time", null, new Date(iso).toLocaleString());
  t.dateTime = iso;
  return t;
}

function say(message) {
  $("error").textContent = "";
  $("notice").textContent = message;
}

function fail(e) {
  $("notice").textContent = "";
  $("error").textContent = e instanceof Error ? e.message : String(e);
  if (e instanceof ApiError && e.status === 401) signOut("Your team token is no longer accepted (HTTP 401): sign in again.");
}

// Keeps one DOM node per item, keyed, updating in place: a refresh never takes
// away the focus or a half-typed value.
function reconcile(container, items, keyOf, create, update) {
  const existing = new Map([...container.children].map((n) => [n.dataset.key, n]));
  items.forEach((item, i) => {
    const key = keyOf(item);
    let node = existing.get(key);
    if (node) existing.delete(key);
    else {
      node = create(item);
      node.dataset.key = key;
    }
    update(node, item);
    if (container.children[i] !== node) container.insertBefore(node, container.children[i] ?? null);
  });
  for (const n of existing.values()) n.remove();
}

function replaceText(cell, ...parts) {
  cell.replaceChildren(...parts.filter((p) => p !== null && p !== undefined));
}

// --- sign in / out ---

async function signIn(token) {
  const team = await api("GET", "/v1/team", undefined, token);
  session.remember(token);
  await start(team);
}

async function start(team) {
  state.team = team;
  state.generation += 1;
  $("team-name").textContent = team.name;
  $("who").hidden = false;
  $("signin").hidden = true;
  $("app").hidden = false;
  buildChoices(team);
  await refresh();
}

function signOut(why) {
  session.forget();
  state.team = null;
  state.generation += 1;
  clearTimeout(state.timer);
  $("who").hidden = true;
  $("app").hidden = true;
  $("signin").hidden = false;
  for (const id of ["team-name", "notice", "error", "preview-json"]) $(id).textContent = "";
  for (const id of ["channels", "watches", "dead-letters", "preview-drawn", "add-events", "add-channels"]) {
    const keep = $(id).querySelector("legend");
    $(id).replaceChildren(...(keep ? [keep] : []));
  }
  $("subs").tBodies[0].replaceChildren();
  $("signin-error").textContent = why ?? "";
  $("token").focus();
}

// --- the add form's choices ---

function checkbox(name, value, label, checked, note) {
  const wrap = el("div", "check");
  const box = el("input");
  box.type = "checkbox";
  box.name = name;
  box.value = value;
  box.id = `${name}-${value}`.replace(/[^A-Za-z0-9_-]/g, "_");
  box.checked = checked;
  const l = el("label", null, label);
  l.htmlFor = box.id;
  wrap.append(box, l);
  if (note) wrap.append(el("code", "event-id", note));
  return wrap;
}

function buildChoices(team) {
  const events = $("add-events");
  events.replaceChildren(events.querySelector("legend") ?? el("legend", null, "Events"));
  for (const e of team.events) {
    events.append(checkbox("event", e.name, EVENT_TEXT[e.name] ?? e.name, e.default, e.name));
  }
  const channels = $("add-channels");
  channels.replaceChildren(channels.querySelector("legend") ?? el("legend", null, "Channels"));
  for (const c of team.channels) channels.append(checkbox("channel", c, c, true));
  const ev = $("preview-event");
  ev.replaceChildren(...team.events.map((e) => new Option(e.name, e.name)));
  ev.value = "job.failed";
}

// --- refresh ---

async function refresh() {
  clearTimeout(state.timer);
  const gen = state.generation;
  try {
    const [subs, channels, watches, dead] = await Promise.all([
      loadSubs(),
      api("GET", "/v1/channels"),
      api("GET", "/v1/watches"),
      api("GET", "/v1/dead-letters"),
    ]);
    if (gen !== state.generation) return;
    state.channels = channels.channels;
    state.watches = watches.watches;
    renderSubs(subs.subscriptions);
    $("subs-more").hidden = !subs.next;
    if (!subs.subscriptions.some((s) => s.state === "active" && !s.job && !s.pollError)) state.fastUntil = 0;
    renderChannels(channels.channels);
    renderWatches(watches.watches);
    renderDead(dead.deadLetters);
    renderPreviewChoices(channels.channels);
    prefillFarmQueue(subs.subscriptions);
    if ($("error").dataset.fromRefresh) {
      $("error").textContent = "";
      delete $("error").dataset.fromRefresh;
    }
  } catch (e) {
    if (gen !== state.generation) return;
    fail(e);
    $("error").dataset.fromRefresh = "1";
  }
  if (gen !== state.generation || !state.team) return;
  const fast = Date.now() < state.fastUntil;
  state.timer = setTimeout(refresh, fast ? FAST_REFRESH_MS : REFRESH_MS);
}

function counts(view) {
  const c = view?.taskRunStatusCounts ?? {};
  const total = Object.values(c).reduce((a, b) => a + b, 0);
  return { c, total, done: c.SUCCEEDED ?? 0 };
}

function statusCell(cell, sub) {
  const v = sub.job;
  const parts = [];
  if (sub.state === "ended") {
    parts.push(el("span", "badge ended", "ENDED"), el("span", "friendly", sub.endedReason ?? ""));
  } else if (sub.state === "finished") {
    const run = v?.taskRunStatus;
    parts.push(el("span", "badge finished", "FINISHED"));
    parts.push(el("span", "friendly", run ? `${run.toLowerCase()}, no longer changing` : "no longer changing"));
  } else if (v) {
    const run = v.taskRunStatus ?? "UNKNOWN";
    parts.push(el("span", `badge st-${run}`, run));
    if (FRIENDLY[run]) parts.push(el("span", "friendly", FRIENDLY[run]));
    parts.push(el("span", "lifecycle", `lifecycle ${v.lifecycleStatus}`));
  } else {
    parts.push(el("span", "friendly", "waiting for the first read…"));
  }
  if (sub.pollError) parts.push(el("span", "poll-error", `last read failed: ${sub.pollError}`));
  if (sub.muted) parts.push(el("span", "badge muted", "MUTED"));
  // A space between the parts, so assistive technology reads "READY waiting for
  // a worker", not one run-together word.
  replaceText(cell, ...parts.flatMap((p, i) => (i ? [document.createTextNode(" "), p] : [p])));
}

/** "7 events · 3 channels", with the lists on demand. */
function notifiesCell(cell, sub) {
  const d = el("details");
  const plural = (n, w) => `${n} ${w}${n === 1 ? "" : "s"}`;
  d.append(el("summary", null, `${plural(sub.events.length, "event")} · ${plural(sub.channels.length, "channel")}`));
  d.append(el("p", "detail", `Events: ${sub.events.join(", ")}`), el("p", "detail", `Channels: ${sub.channels.join(", ")}`));
  const open = cell.querySelector("details")?.open ?? false;
  d.open = open;
  replaceText(cell, d);
}

function tasksCell(cell, sub) {
  const { c, total, done } = counts(sub.job);
  if (!sub.job || total === 0) {
    replaceText(cell, el("span", "help", sub.job ? "no tasks" : "—"));
    return;
  }
  const bar = el("progress");
  bar.max = total;
  bar.value = done;
  bar.setAttribute("aria-label", `${done} of ${total} tasks succeeded`);
  const words = [`${done}/${total} succeeded`];
  for (const k of ["FAILED", "RUNNING", "CANCELED", "SUSPENDED"]) if (c[k]) words.push(`${c[k]} ${k.toLowerCase()}`);
  replaceText(cell, bar, el("span", "counts", words.join(" · ")));
}

// A Slack app channel keeps one living message per job: say so, and link to it
// (only an https link from the service's own record; the text is a text node).
function livingLinks(sub) {
  return (sub.livingMessages ?? []).map((m) => {
    const text = `one message in #${m.channel}`;
    const line = el("div", "living");
    if (typeof m.url === "string" && m.url.startsWith("https://")) {
      const a = el("a", null, text);
      a.href = m.url;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      line.append(a);
    } else {
      line.textContent = text;
    }
    return line;
  });
}

function lastCell(cell, sub) {
  const n = sub.lastNotification;
  if (!n) {
    replaceText(cell, el("span", "help", "none yet"), ...livingLinks(sub));
    return;
  }
  const stateWord = el("span", `badge n-${n.state.replace(" ", "-")}`, n.state);
  replaceText(cell, el("span", null, `${n.event} · `), when(n.at), el("span", null, ` · ${n.channel} · `), stateWord, ...livingLinks(sub));
}

function sourceText(sub) {
  if (!sub.watch) return "by hand";
  const w = state.watches.find((x) => x.id === sub.watch);
  return `watch ${w ? w.name : sub.watch}`;
}

function createRow(sub) {
  const tr = el("tr");
  // Phone widths show each row as a card, with these as the cells' labels.
  for (const label of ["Job", "Status", "Tasks", "Notifies", "Source", "Last notification"]) {
    const td = el("td");
    td.dataset.label = label;
    tr.append(td);
  }
  const actions = el("td", "actions");
  const mute = button("Mute", () => toggleMute(tr.dataset.key, mute));
  mute.className = "toggle";
  const unsub = button("Unsubscribe", () => unsubscribe(tr.dataset.key, tr), "danger");
  actions.append(mute, unsub);
  tr.append(actions);
  return tr;
}

function updateRow(tr, sub) {
  const [job, status, tasks, notifies, source, last] = tr.cells;
  const name = sub.job?.name;
  replaceText(job, el("span", "job-name", name ?? sub.jobId), name ? el("span", "job-id", sub.jobId) : null);
  job.title = `${sub.farmId}/${sub.queueId}/${sub.jobId}`;
  statusCell(status, sub);
  tasksCell(tasks, sub);
  notifiesCell(notifies, sub);
  source.textContent = sourceText(sub);
  lastCell(last, sub);
  const mute = tr.querySelector("button.toggle");
  mute.setAttribute("aria-pressed", String(Boolean(sub.muted)));
  mute.disabled = sub.state !== "active";
}

function renderSubs(subs) {
  // The service answers newest first.
  reconcile($("subs").tBodies[0], subs, (s) => s.id, createRow, updateRow);
  $("subs-empty").hidden = subs.length > 0;
  $("subs-empty").textContent = state.query
    ? "No jobs match the search."
    : state.view === "finished"
      ? "No finished jobs."
      : "No subscriptions yet: paste a job above, or add a watch below.";
}

function showView(view) {
  if (state.view === view) return;
  state.view = view;
  state.pages = 1;
  for (const [id, v] of [["tab-active", "active"], ["tab-finished", "finished"]]) {
    const tab = $(id);
    tab.setAttribute("aria-selected", String(v === view));
    tab.tabIndex = v === view ? 0 : -1;
  }
  $("subs-panel").setAttribute("aria-labelledby", view === "active" ? "tab-active" : "tab-finished");
  $("subs").tBodies[0].replaceChildren();
  refresh();
}

function wireSubsControls() {
  $("tab-active").addEventListener("click", () => showView("active"));
  $("tab-finished").addEventListener("click", () => showView("finished"));
  // Arrow keys move between the two tabs, as a tab list's keyboard users expect.
  for (const id of ["tab-active", "tab-finished"]) {
    $(id).addEventListener("keydown", (ev) => {
      if (ev.key !== "ArrowLeft" && ev.key !== "ArrowRight") return;
      const other = id === "tab-active" ? "tab-finished" : "tab-active";
      $(other).focus();
      showView(other === "tab-active" ? "active" : "finished");
    });
  }
  let typing = null;
  $("subs-search").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      state.query = $("subs-search").value.trim();
      state.pages = 1;
      refresh();
    }, 250);
  });
  $("subs-more").addEventListener("click", () => {
    state.pages += 1;
    refresh();
  });
}

function prefillFarmQueue(subs) {
  if (state.farmTouched || !subs.length) return;
  const latest = subs.reduce((a, b) => (a.createdAt >= b.createdAt ? a : b));
  if (!$("farm").value) $("farm").value = latest.farmId;
  if (!$("queue").value) $("queue").value = latest.queueId;
}

// --- channels, dead letters, watches ---

function renderChannels(channels) {
  reconcile(
    $("channels"),
    channels,
    (c) => c.name,
    (c) => {
      const li = el("li");
      const head = li.appendChild(el("div", "item-head"));
      head.append(el("strong", null, c.name), el("span", "kind"), el("span", "state"));
      const bar = li.appendChild(el("div", "buttons"));
      bar.append(button("Send test message", () => testChannel(c.name)));
      const re = button("Re-enable", () => enableChannel(c.name));
      re.classList.add("reenable");
      bar.append(re);
      const now = button("Send now", () => flushChannel(c.name));
      now.classList.add("flush");
      bar.append(now);
      li.append(el("div", "quiet help"));
      return li;
    },
    (li, c) => {
      li.querySelector(".kind").textContent = c.kind;
      // Quiet hours and digests: what is held, and until when (text only).
      const words = [];
      if (c.quietUntilLocal) words.push(`quiet until ${c.quietUntilLocal}`);
      if (c.held) words.push(`${c.held} held`);
      if (c.nextDigest) words.push(`next digest ${new Date(c.nextDigest).toLocaleTimeString()}`);
      li.querySelector(".quiet").textContent = words.join(" · ");
      li.querySelector(".flush").hidden = !c.held;
      const st = li.querySelector(".state");
      st.className = `state badge ${c.disabled ? "n-dead-letter" : "n-delivered"}`;
      st.textContent = c.disabled ? `disabled: ${c.disabledReason ?? "no reason given"}` : "enabled";
      li.querySelector(".reenable").hidden = !c.disabled;
    },
  );
}

function renderDead(items) {
  reconcile(
    $("dead-letters"),
    items,
    (d) => String(d.id),
    (d) => {
      const li = el("li");
      li.append(el("div", "item-head"), el("div", "reason"));
      li.append(button("Replay", () => replay(d.id)));
      return li;
    },
    (li, d) => {
      replaceText(li.querySelector(".item-head"), el("strong", null, d.event), el("span", null, ` → ${d.channel} · ${d.job?.jobId ?? ""} · `), when(d.deadAt));
      li.querySelector(".reason").textContent = d.reason;
    },
  );
  $("dead-empty").hidden = items.length > 0;
}

function renderWatches(watches) {
  reconcile(
    $("watches"),
    watches,
    (w) => w.id,
    (w) => {
      const li = el("li");
      li.append(el("div", "item-head"), el("div", "help"), el("div", "poll-error"));
      if (w.source !== "config") li.append(button("Remove watch", () => removeWatch(w.id, w.name)));
      return li;
    },
    (li, w) => {
      const src = w.source === "config" ? "from the config file (read-only)" : "added here";
      replaceText(li.querySelector(".item-head"), el("strong", null, w.name), el("span", "kind", src));
      const who = w.createdBy ? ` · only jobs by ${w.createdBy.join(", ")}` : "";
      const named = w.nameMatches ? ` · named like ${w.nameMatches}` : "";
      li.querySelector(".help").textContent = `${w.farmId} / ${w.queueIds.join(", ")}${who}${named} · ${w.events.join(", ")} → ${w.channels.join(", ")}`;
      li.querySelector(".poll-error").textContent = w.error ? `search failing since ${new Date(w.error.since).toLocaleString()}: ${w.error.message}` : "";
    },
  );
}

function renderPreviewChoices(channels) {
  const sel = $("preview-channel");
  const have = [...sel.options].map((o) => o.value).join("\n");
  const want = channels.map((c) => c.name).join("\n");
  if (have === want) return;
  const keep = sel.value;
  sel.replaceChildren(...channels.map((c) => new Option(`${c.name} (${c.kind})`, c.name)));
  if (channels.some((c) => c.name === keep)) sel.value = keep;
}

// --- actions ---

async function act(work, done) {
  try {
    const r = await work();
    if (done) say(done(r));
    await refresh();
  } catch (e) {
    fail(e);
  }
}

function toggleMute(id, btn) {
  const muted = btn.getAttribute("aria-pressed") !== "true";
  return act(
    () => api("PATCH", `/v1/subscriptions/${encodeURIComponent(id)}`, { muted }),
    (s) => `${s.job?.name ?? s.jobId}: ${muted ? "muted: nothing will be sent until you unmute" : "unmuted"}.`,
  );
}

function unsubscribe(id, tr) {
  const name = tr.cells[0].querySelector(".job-name")?.textContent ?? id;
  return act(
    async () => {
      await api("DELETE", `/v1/subscriptions/${encodeURIComponent(id)}`);
      // Keep keyboard users in the table rather than dropping focus to the page.
      const next = tr.nextElementSibling ?? tr.previousElementSibling;
      tr.remove();
      next?.querySelector("button.danger")?.focus();
    },
    () => `Unsubscribed from ${name}.`,
  );
}

function testChannel(name) {
  return act(
    () => api("POST", `/v1/channels/${encodeURIComponent(name)}/test`),
    (e) => `Test message queued for ${name} (id ${e?.webhookId ?? "?"}); it should arrive in a moment.`,
  );
}

function enableChannel(name) {
  return act(() => api("POST", `/v1/channels/${encodeURIComponent(name)}/enable`), () => `${name} re-enabled.`);
}

function flushChannel(name) {
  return act(() => api("POST", `/v1/channels/${encodeURIComponent(name)}/flush`), (r) => `${r.held} held messages of ${name} go now, as one digest.`);
}

function replay(id) {
  return act(() => api("POST", `/v1/dead-letters/${encodeURIComponent(id)}/replay`), (r) => `Queued again for ${r.channel}.`);
}

function removeWatch(id, name) {
  return act(() => api("DELETE", `/v1/watches/${encodeURIComponent(id)}`), () => `Watch ${name} removed; jobs it subscribed keep their subscriptions.`);
}

function checked(container) {
  return [...$(container).querySelectorAll("input:checked")].map((i) => i.value);
}

async function subscribe(ev) {
  ev.preventDefault();
  let ref;
  try {
    ref = parseJobRef($("job-ref").value, $("farm").value, $("queue").value);
  } catch (e) {
    fail(e);
    $("job-ref").focus();
    return;
  }
  const events = checked("add-events");
  const channels = checked("add-channels");
  if (!events.length || !channels.length) {
    fail(new Error(`choose at least one ${events.length ? "channel" : "event"}`));
    return;
  }
  state.fastUntil = Date.now() + FAST_FOR_MS;
  const typed = $("job-ref").value;
  await act(
    async () => {
      const r = await api("POST", "/v1/subscriptions", { ...ref, events, channels });
      // Only if nothing new was typed while the request was out.
      if ($("job-ref").value === typed) $("job-ref").value = "";
      $("farm").value = ref.farmId;
      $("queue").value = ref.queueId;
      return r;
    },
    (s) => `Subscribed to ${s.jobId}; its name shows once the service has read the job.`,
  );
}

async function addWatch(ev) {
  ev.preventDefault();
  const name = $("watch-name").value.trim();
  let target;
  try {
    if (!name) throw new Error("give the watch a name");
    target = parseQueueRef($("watch-target").value);
    if ($("watch-mine").checked && !$("watch-created-by").value.trim()) {
      throw new Error("“only my jobs” needs your Created by value, as Deadline Cloud shows it on your jobs");
    }
  } catch (e) {
    fail(e);
    return;
  }
  const body = { name, farmId: target.farmId, queueIds: [target.queueId] };
  if ($("watch-mine").checked) body.createdBy = [$("watch-created-by").value.trim()];
  await act(
    async () => {
      const w = await api("POST", "/v1/watches", body);
      $("watch-name").value = "";
      $("watch-target").value = "";
      return w;
    },
    (w) => `Watch ${w.name} added: new jobs in its queue are subscribed automatically.`,
  );
}

async function showPreview(ev) {
  ev?.preventDefault();
  const channel = $("preview-channel").value;
  const event = $("preview-event").value;
  if (!channel) return;
  try {
    const q = new URLSearchParams({ channel, event });
    const payload = await api("GET", `/v1/preview?${q}`);
    const kind = state.channels.find((c) => c.name === channel)?.kind;
    const drawn = draw(kind, payload);
    $("preview-drawn").replaceChildren(...(drawn ? [drawn] : []));
    $("preview-drawn").hidden = !drawn;
    $("preview-json").textContent = JSON.stringify(payload, null, 2);
  } catch (e) {
    fail(e);
  }
}

// --- wiring ---

function wire() {
  $("signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const token = $("token").value.trim();
    $("signin-error").textContent = "";
    if (!token) {
      $("signin-error").textContent = "Enter your team token.";
      return;
    }
    try {
      await signIn(token);
      $("token").value = "";
    } catch (e) {
      $("signin-error").textContent =
        e instanceof ApiError && e.status === 401
          ? "Wrong token: the service does not know this team token. Check it and try again."
          : `Could not sign in: ${e.message}`;
    }
  });
  $("sign-out").addEventListener("click", () => signOut("Signed out."));
  $("add-form").addEventListener("submit", subscribe);
  wireSubsControls();
  $("watch-form").addEventListener("submit", addWatch);
  $("preview-form").addEventListener("submit", showPreview);
  $("preview-channel").addEventListener("change", () => showPreview());
  $("preview-event").addEventListener("change", () => showPreview());
  for (const id of ["farm", "queue"]) $(id).addEventListener("input", () => (state.farmTouched = true));
  $("watch-mine").addEventListener("change", () => {
    $("watch-created-by").disabled = !$("watch-mine").checked;
    if ($("watch-mine").checked) $("watch-created-by").focus();
  });
  // A pasted link or full path fills Farm and Queue too.
  $("job-ref").addEventListener("change", () => {
    try {
      const r = parseJobRef($("job-ref").value, $("farm").value, $("queue").value);
      $("farm").value = r.farmId;
      $("queue").value = r.queueId;
    } catch {
      // Reported on submit.
    }
  });
}

async function boot() {
  wire();
  const token = session.token();
  if (!token) {
    $("token").focus();
    return;
  }
  try {
    await start(await api("GET", "/v1/team", undefined, token));
  } catch (e) {
    signOut(e instanceof ApiError && e.status === 401 ? "Your saved team token is no longer accepted: sign in again." : `Could not reach the service: ${e.message}`);
  }
}

boot();
