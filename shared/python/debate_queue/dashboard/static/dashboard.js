/* The build dashboard: one page script, no libraries, nothing from the network.
 *
 * Everything that came from a build or from Redis goes into the DOM as
 * text (textContent / text nodes), never as HTML.  Live data arrives on
 * one EventSource per tab (api/live): `fleet` snapshots every ~2 s, `job`
 * events of the job this page shows, `status` when Redis is away.
 */
"use strict";
(function () {
  const MAX_LOG_LINES = 20000;
  const FINAL = ["succeeded", "failed", "timed_out", "oom_killed", "cancelled", "error", "dead"];

  const $ = (id) => document.getElementById(id);
  const session = { read_only: true, authed: false, ns: "" };
  let snap = null;          // the latest fleet snapshot
  let offset = 0;           // server clock - browser clock, seconds
  let es = null;            // the EventSource
  let lastId = "";          // the last job event id, for a manual reconnect
  let redisDown = false;
  const view = route();
  const pages = { queued: 0, results: 0, dead: 0 };
  const PAGE = { queued: 20, results: 25, dead: 50 };

  // ------------------------------------------------------------ helpers

  /* el("td", {class: "x"}, "text", child, ...): strings become text nodes. */
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = String(v);
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      e.appendChild(typeof kid === "object" ? kid : document.createTextNode(String(kid)));
    }
    return e;
  }
  /* node.replaceChildren(...kids) without the null/false ones (the DOM would print "null"). */
  function fill(node, ...kids) {
    node.replaceChildren(...kids.flat(Infinity).filter((k) => k !== null && k !== undefined && k !== false));
    return node;
  }
  const now = () => Date.now() / 1000 + offset;
  const jobHref = (id) => "job/" + encodeURIComponent(id);

  function dur(s) {
    if (s === null || s === undefined || isNaN(s)) return "–";
    s = Math.max(0, s);
    if (s < 10) return s.toFixed(1) + "s";
    if (s < 60) return Math.floor(s) + "s";
    const m = Math.floor(s / 60), r = Math.floor(s % 60);
    if (m < 60) return m + "m" + String(r).padStart(2, "0") + "s";
    const h = Math.floor(m / 60);
    return h + "h" + String(m % 60).padStart(2, "0") + "m";
  }
  function bytes(n) {
    if (n === null || n === undefined || isNaN(n)) return "–";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i === 0 ? String(n) : n.toFixed(n < 10 ? 1 : 0)) + " " + u[i];
  }
  function ago(ts) { return ts ? dur(now() - ts) + " ago" : "–"; }
  function clock(ts) {
    if (!ts) return "–";
    const d = new Date(ts * 1000);
    return d.toLocaleTimeString([], { hour12: false });
  }
  function stamp(ts) {
    if (!ts) return "–";
    const d = new Date(ts * 1000), t = new Date();
    const day = d.toDateString() === t.toDateString() ? "" : d.toISOString().slice(0, 10) + " ";
    return day + d.toLocaleTimeString([], { hour12: false });
  }
  function chip(status) { return el("span", { class: "chip st-" + (status || "unknown") }, status || "?"); }
  function toast(msg, bad) {
    const t = $("toast");
    t.textContent = msg;
    t.className = "toast " + (bad ? "toast-bad" : "toast-ok");
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.hidden = true; }, bad ? 8000 : 4000);
  }
  function canAct() { return !session.read_only; }

  async function post(path, body) {
    let r;
    try {
      r = await fetch(path, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
    } catch (e) {
      toast("request failed: " + e, true);
      return null;
    }
    let j = {};
    try { j = await r.json(); } catch (e) { j = { error: r.status + " " + r.statusText }; }
    if (!r.ok) toast((j.error || "refused") + " (" + r.status + ")", true);
    else toast(j.message || "done", false);
    return r.ok ? j : null;
  }
  async function getJSON(path) {
    const r = await fetch(path, { credentials: "same-origin" });
    if (!r.ok) throw new Error(path + ": " + r.status);
    return r.json();
  }
  function cancelButton(id, asked) {
    if (!canAct()) return null;
    return el("button", {
      class: "btn btn-danger", "data-action": "cancel", "data-id": id,
      title: asked ? "cancel already asked; the worker stops it at its next check" : "stop this build",
      onclick: async (e) => {
        e.preventDefault();
        if (await post("api/cancel", { id: id })) e.target.textContent = "asked";
      },
    }, asked ? "asked" : "Cancel");
  }

  /* The elapsed-time bar: fill to elapsed/timeout, a mark at the warning point. */
  function bar(start, timeout, warning, done) {
    const b = el("div", { class: "bar", "data-bar": "1" });
    b.dataset.start = start || "";
    b.dataset.timeout = timeout || "";
    b.dataset.warning = warning || "";
    if (done) b.dataset.done = "1";
    b.appendChild(el("div", { class: "fill" }));
    if (timeout && warning && warning < timeout) {
      const m = el("div", { class: "warnmark", title: "warning at " + dur(warning) });
      m.style.left = (100 * warning / timeout).toFixed(2) + "%";
      b.appendChild(m);
    }
    b.appendChild(el("span", { class: "bar-label" }));
    tickBar(b);
    return b;
  }
  function tickBar(b) {
    const start = parseFloat(b.dataset.start), timeout = parseFloat(b.dataset.timeout);
    const warning = parseFloat(b.dataset.warning);
    const label = b.querySelector(".bar-label"), fill = b.querySelector(".fill");
    if (!start) { label.textContent = "starting…"; fill.style.width = "0"; return; }
    const el_ = b.dataset.done ? parseFloat(b.dataset.done_at || 0) - start : now() - start;
    const frac = timeout ? Math.min(el_ / timeout, 1) : 0;
    fill.style.width = (100 * frac).toFixed(2) + "%";
    b.classList.toggle("bar-warn", !!warning && el_ >= warning);
    b.classList.toggle("bar-late", !!timeout && el_ >= 0.95 * timeout);
    label.textContent = dur(el_) + (timeout ? " / " + dur(timeout) : "");
  }
  setInterval(() => {
    document.querySelectorAll("[data-bar]").forEach((b) => { if (!b.dataset.done) tickBar(b); });
    document.querySelectorAll("[data-ago]").forEach((e) => { e.textContent = ago(parseFloat(e.dataset.ago)); });
  }, 1000);

  function pager(name, total, reload) {
    const start = pages[name] * PAGE[name];
    const end = Math.min(start + PAGE[name], total);
    const p = el("span", { class: "pager" });
    p.append(
      el("button", { class: "btn btn-small", disabled: start === 0 ? true : null, "aria-label": "previous page",
        onclick: () => { pages[name] = Math.max(0, pages[name] - 1); reload(); } }, "‹"),
      el("span", { class: "muted" }, total ? (start + 1) + "–" + end + " of " + total : "none"),
      el("button", { class: "btn btn-small", disabled: end >= total ? true : null, "aria-label": "next page",
        onclick: () => { pages[name]++; reload(); } }, "›"));
    return p;
  }

  // ------------------------------------------------------------ routing

  function route() {
    const base = new URL(document.baseURI).pathname;
    let p = location.pathname.startsWith(base) ? location.pathname.slice(base.length) : "";
    if (p.startsWith("job/")) return { name: "job", id: decodeURIComponent(p.slice(4)) };
    if (p === "dead") return { name: "dead" };
    return { name: "fleet" };
  }

  // ------------------------------------------------------------ header

  function renderHeader() {
    $("ns").textContent = session.ns ? "ns " + session.ns : "";
    document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("on", a.dataset.view === view.name));
    const c = (snap && snap.counts) || {};
    const item = (n, label, cls, title) => el("span", { class: "count " + (cls || ""), title: title || "" },
      el("b", {}, n === undefined ? "–" : String(n)), " " + label);
    $("counts").replaceChildren(
      item(c.queued, "queued", c.queued ? "c-queued" : ""),
      item(c.delayed, "delayed", c.delayed ? "c-delayed" : "", "waiting to be retried"),
      item(c.running, "running", c.running ? "c-running" : ""),
      item(c.workers === undefined ? undefined : c.workers, "workers", "", "workers with a heartbeat"),
      item(c.free === undefined ? undefined : c.free + "/" + c.slots, "slots free", c.slots && !c.free ? "c-full" : ""),
      item(c.dead, "dead", c.dead ? "c-dead" : ""));
    $("nav-dead").textContent = c.dead ? String(c.dead) : "";
    $("nav-dead").className = c.dead ? "pill pill-bad" : "pill";
    $("ro").hidden = !session.read_only;
    $("login").hidden = session.read_only || session.authed;
    $("logout").hidden = session.read_only || !session.authed;
    $("login").querySelector("[name=next]").value = location.pathname;
    const ban = $("banner");
    if (snap && snap.redis === "down") {
      ban.hidden = false;
      ban.textContent = "Redis unreachable" + (snap.down_since ? " since " + clock(snap.down_since) : "") +
        ": " + (snap.error || "") + " — the numbers below are from before; retrying.";
    } else if (location.hash === "#login=refused") {
      ban.hidden = false;
      ban.textContent = "Login refused: wrong token.";
    } else ban.hidden = true;
  }

  /* For operators' scripts and the tests: how the live connection is doing. */
  const status = { connects: 0, conn: "connecting" };
  window.dashboard = status;

  function setConn(state, text) {
    status.conn = state === "ok" ? "live" : text;
    const c = $("conn");
    c.className = "conn conn-" + state;
    c.textContent = text;
  }

  // ------------------------------------------------------------ fleet view

  const fleet = {};
  function fleetView() {
    const v = $("view");
    v.replaceChildren();
    fleet.running = el("section", { id: "running", class: "panel" });
    fleet.workers = el("section", { id: "workers", class: "panel" });
    fleet.queue = el("section", { id: "queue", class: "panel" });
    fleet.results = el("section", { id: "results", class: "panel" });
    v.append(fleet.running, el("div", { class: "cols" }, fleet.workers, fleet.queue), fleet.results);
  }

  function renderFleet() {
    if (!snap) return;
    renderRunning(snap.running || []);
    renderWorkers(snap.workers || []);
    if (pages.queued === 0) renderQueue({ total: snap.counts.queued, items: snap.queued || [] });
    if (pages.results === 0) renderResults({ total: snap.counts.results, items: snap.results || [] });
  }

  function head(title, n, extra) {
    return el("h2", {}, title, n === null || n === undefined ? "" : el("span", { class: "n" }, String(n)), extra || "");
  }

  function renderRunning(rows) {
    const t = el("table", { class: "grid" },
      el("thead", {}, el("tr", {},
        el("th", { class: "w-job" }, "Job"), el("th", { class: "w-worker" }, "Worker"),
        el("th", { class: "w-num" }, "Att"), el("th", { class: "w-phase" }, "Phase"),
        el("th", { class: "w-bar" }, "Elapsed / timeout"), el("th", { class: "w-mem" }, "Memory"),
        el("th", { class: "w-cpu" }, "CPU"), el("th", { class: "w-flags" }, ""),
        canAct() ? el("th", { class: "w-act" }, "") : null)));
    const tb = el("tbody");
    for (const j of rows) {
      const mem = j.memory === null || j.memory === undefined ? "–" : bytes(j.memory) +
        (j.memory_limit ? " / " + bytes(j.memory_limit) : "");
      const memHigh = j.memory && j.memory_limit && j.memory > 0.9 * j.memory_limit;
      tb.append(el("tr", { "data-job": j.id, class: j.warned ? "row-warn" : "" },
        el("td", { class: "mono ell", title: j.id + (j.profile ? "\n" + j.profile : "") },
          el("a", { href: jobHref(j.id) }, j.id)),
        el("td", { class: "mono ell", title: j.worker }, j.worker),
        el("td", { class: "num" }, String(j.attempt || "–")),
        el("td", { class: "ell", title: j.phase || "" }, j.state === "running" ? (j.phase || "–") : chip(j.state)),
        el("td", {}, bar(j.started_at, j.timeout, j.warning)),
        el("td", { class: "num" + (memHigh ? " hot" : "") }, mem),
        el("td", { class: "num" }, j.cpu_pct === null || j.cpu_pct === undefined ? (j.cpu ? dur(j.cpu) : "–")
          : j.cpu_pct.toFixed(0) + "%"),
        el("td", {},
          j.warned ? el("span", { class: "badge badge-warn", title: "past its warning time" }, "warning") : null,
          j.cancel ? el("span", { class: "badge badge-cancel" }, "cancel asked") : null),
        canAct() ? el("td", {}, cancelButton(j.id, j.cancel)) : null));
    }
    if (!rows.length) tb.append(el("tr", {}, el("td", { colspan: 9, class: "empty" }, "no builds running")));
    t.append(tb);
    fleet.running.replaceChildren(head("Running builds", rows.length), t);
  }

  function renderWorkers(ws) {
    const t = el("table", { class: "grid" },
      el("thead", {}, el("tr", {},
        el("th", { class: "w-worker" }, "Worker"), el("th", { class: "w-host" }, "Host"),
        el("th", { class: "w-slots" }, "Slots"), el("th", {}, "Running jobs"),
        el("th", { class: "w-beat" }, "Beat"))));
    const tb = el("tbody");
    for (const w of ws) {
      const slots = el("span", { class: "slots", title: w.running + " running, " + w.free + " free of " + w.concurrency });
      for (let i = 0; i < Math.min(w.concurrency, 32); i++) slots.append(el("i", { class: i < w.running ? "busy" : "free" }));
      slots.append(el("span", { class: "muted" }, " " + w.free + " free"));
      tb.append(el("tr", { class: w.lost ? "row-bad" : "" },
        el("td", { class: "mono ell", title: w.id + (w.version ? "\nversion " + w.version : "") + (w.pid ? "\npid " + w.pid : "") }, w.id),
        el("td", { class: "ell", title: w.host }, w.host || "–"),
        el("td", {}, w.lost ? el("span", { class: "badge badge-bad" }, "lost") : slots),
        el("td", { class: "mono ell", title: w.jobs.join("\n") }, w.jobs.length ? w.jobs.map((id, i) => [i ? ", " : "", el("a", { href: jobHref(id) }, id)]) : el("span", { class: "muted" }, "idle")),
        el("td", { class: "num", "data-ago": w.beat }, ago(w.beat))));
    }
    if (!ws.length) tb.append(el("tr", {}, el("td", { colspan: 5, class: "empty" }, "no workers")));
    t.append(tb);
    fleet.workers.replaceChildren(head("Workers", ws.length), t);
  }

  async function reloadQueue() {
    if (pages.queued === 0) { renderFleet(); return; }
    renderQueue(await getJSON("api/queued?start=" + pages.queued * PAGE.queued + "&count=" + PAGE.queued));
  }
  function renderQueue(q) {
    const t = el("table", { class: "grid" },
      el("thead", {}, el("tr", {}, el("th", { class: "w-num" }, "#"), el("th", { class: "w-job" }, "Job"),
        el("th", {}, "Profile"), el("th", { class: "w-beat" }, "Waiting"), canAct() ? el("th", { class: "w-act" }, "") : null)));
    const tb = el("tbody");
    q.items.forEach((j, i) => {
      tb.append(el("tr", {},
        el("td", { class: "num muted" }, String(pages.queued * PAGE.queued + i + 1)),
        el("td", { class: "mono ell", title: j.id || j.bad }, j.id ? el("a", { href: jobHref(j.id) }, j.id) : el("span", { class: "bad" }, j.bad)),
        el("td", { class: "mono ell", title: j.profile }, j.profile || "–"),
        el("td", { class: "num", "data-ago": j.enqueued_at || "" }, ago(j.enqueued_at)),
        canAct() ? el("td", {}, j.id ? cancelButton(j.id, j.cancel) : null) : null));
    });
    if (!q.items.length) tb.append(el("tr", {}, el("td", { colspan: 5, class: "empty" }, "queue empty")));
    t.append(tb);
    fleet.queue.replaceChildren(head("Queue", q.total, [el("span", { class: "muted sub" }, "next first"),
      pager("queued", q.total || 0, reloadQueue)]), t);
  }

  async function reloadResults() {
    if (pages.results === 0) { renderFleet(); return; }
    renderResults(await getJSON("api/results?start=" + pages.results * PAGE.results + "&count=" + PAGE.results));
  }
  function renderResults(res) {
    const t = el("table", { class: "grid" },
      el("thead", {}, el("tr", {},
        el("th", { class: "w-status" }, "Status"), el("th", { class: "w-job" }, "Job"),
        el("th", { class: "w-dur" }, "Duration"), el("th", { class: "w-worker" }, "Worker"),
        el("th", { class: "w-num" }, "Att"), el("th", { class: "w-beat" }, "Finished"), el("th", {}, "Error"))));
    const tb = el("tbody");
    for (const r of res.items) {
      const bad = r.status !== "succeeded" && r.status !== "cancelled";
      tb.append(el("tr", { class: bad ? "row-bad" : "", "data-job": r.id },
        el("td", {}, chip(r.status)),
        el("td", { class: "mono ell", title: r.id }, r.id ? el("a", { href: jobHref(r.id) }, r.id) : "–"),
        el("td", { class: "num" }, dur(r.duration)),
        el("td", { class: "mono ell", title: r.worker || "" }, r.worker || "–"),
        el("td", { class: "num" }, String(r.attempt || "–")),
        el("td", { class: "num", title: stamp(r.finished_at), "data-ago": r.finished_at || "" }, ago(r.finished_at)),
        el("td", { class: "ell err-text", title: r.error || "" }, r.error || "")));
    }
    if (!res.items.length) tb.append(el("tr", {}, el("td", { colspan: 7, class: "empty" }, "no results yet")));
    t.append(tb);
    const tally = {};
    for (const r of res.items) tally[r.status] = (tally[r.status] || 0) + 1;
    const chips = el("span", { class: "tally", title: "of the results listed" },
      Object.keys(tally).sort().map((k) => el("span", { class: "chip st-" + k }, tally[k] + " " + k)));
    fleet.results.replaceChildren(head("Recent results", null, [el("span", { class: "muted sub" }, "newest first"), chips,
      pager("results", res.total || 0, reloadResults)]), t);
  }

  // ------------------------------------------------------------ dead letters

  let deadCount = -1;
  async function reloadDead() {
    let d;
    try { d = await getJSON("api/dead?start=" + pages.dead * PAGE.dead + "&count=" + PAGE.dead); }
    catch (e) { toast(String(e), true); return; }
    const t = el("table", { class: "grid", id: "dead-table" },
      el("thead", {}, el("tr", {},
        el("th", { class: "w-num" }, "#"), el("th", { class: "w-beat" }, "When"),
        el("th", { class: "w-reason" }, "Reason"), el("th", { class: "w-job" }, "Job"),
        el("th", { class: "w-worker" }, "Worker"), el("th", {}, "Error"),
        el("th", { class: "w-size" }, "Payload"), canAct() ? el("th", { class: "w-act" }, "") : null)));
    const tb = el("tbody");
    for (const x of d.items) {
      tb.append(el("tr", { "data-index": x.index },
        el("td", { class: "num muted" }, String(x.index)),
        el("td", { class: "num", title: stamp(x.ts) }, stamp(x.ts)),
        el("td", {}, el("span", { class: "chip st-dead" }, x.reason || "?")),
        el("td", { class: "mono ell", title: x.id || "" }, x.id ? el("a", { href: jobHref(x.id) }, x.id) : el("span", { class: "muted" }, "no id")),
        el("td", { class: "mono ell", title: x.worker || "" }, x.worker || "–"),
        el("td", { class: "wrap err-text" }, x.error || ""),
        el("td", { class: "num", title: x.profile ? "profile " + x.profile : "" }, bytes(x.size)),
        canAct() ? el("td", {}, x.retryable ? el("button", {
          class: "btn", "data-action": "retry", "data-index": x.index,
          title: "put the original payload back on the queue",
          onclick: async (e) => {
            e.target.disabled = true;
            await post("api/retry-dead", { index: x.index, digest: x.digest });
            reloadDead();
          },
        }, "Retry") : null) : null));
    }
    if (!d.items.length) tb.append(el("tr", {}, el("td", { colspan: 8, class: "empty" }, "no dead letters")));
    t.append(tb);
    $("view").replaceChildren(el("section", { class: "panel", id: "dead" },
      head("Dead letters", d.total, [el("span", { class: "muted sub" }, "newest first; payloads that could not run, with why"),
        pager("dead", d.total, reloadDead)]), t));
  }

  // ------------------------------------------------------------ job view

  const job = { seq: 0, lines: 0, follow: true, state: "", ev: {}, box: null, pending: [], hidden: 0, flushing: false };
  function jobView() {
    const id = view.id;
    document.title = id + " · builds";
    job.title = el("h1", {}, el("span", { class: "mono" }, id), " ");
    job.stateChip = el("span", { id: "job-state" });
    job.badges = el("span", { class: "badges" });
    job.actions = el("span", { class: "actions" });
    job.title.append(job.stateChip, job.badges, job.actions);
    job.info = el("dl", { class: "info" });
    job.progress = el("div", { class: "progress" });
    job.result = el("section", { class: "panel", id: "result", hidden: true });
    job.box = el("div", { class: "log", id: "log", tabindex: "0" });
    job.followBtn = el("button", { class: "btn btn-small", id: "follow", hidden: true,
      onclick: () => {
        job.follow = true; job.box.scrollTop = job.box.scrollHeight; job.autoTop = job.box.scrollTop;
        job.followBtn.hidden = true;
      } }, "↓ follow");
    job.logCount = el("span", { class: "n" }, "0");
    // Follow the end until the user scrolls up; scrolling back to the end follows again.
    // (Our own scrolling also fires "scroll", possibly after more lines came: only a
    // position above the one we set means the user moved.)
    job.autoTop = 0;
    job.box.addEventListener("scroll", () => {
      const b = job.box;
      if (b.scrollHeight - b.scrollTop - b.clientHeight < 8) job.follow = true;
      else if (b.scrollTop + 4 < job.autoTop) job.follow = false;
      job.followBtn.hidden = job.follow;
    });
    job.timeline = el("ol", { class: "timeline" });
    $("view").replaceChildren(
      el("section", { class: "panel jobhead" }, job.title, job.info, job.progress),
      job.result,
      el("div", { class: "cols cols-log" },
        el("section", { class: "panel logpanel" }, el("h2", {}, "Log", job.logCount, job.followBtn), job.box),
        el("section", { class: "panel" }, el("h2", {}, "Events"), job.timeline)));
    getJSON("api/job/" + encodeURIComponent(id)).then((j) => {
      job.hash = j.hash || {};
      job.cancelAsked = j.cancel;
      if (!job.state) job.state = job.hash.state || (j.result ? j.result.status : j.hash ? "unknown" : "not found");
      if (j.result && !job.ev.finished) showResult(j.result);
      renderJobHead();
    }).catch((e) => toast(String(e), true));
  }

  function renderJobHead() {
    const h = job.hash || {};
    const st = job.ev.started || {};
    const lim = st.limits || {};
    const stats = job.ev.stats || {};
    const res = job.ev.finished ? job.ev.finished.result : job.resultShown;
    job.stateChip.replaceChildren(chip(job.state || h.state || "unknown"));
    fill(job.badges, 
      job.ev.warning && job.state === "running" ? el("span", { class: "badge badge-warn", title: job.ev.warning.message || "" }, "warning") : null,
      job.cancelAsked && !FINAL.includes(job.state) ? el("span", { class: "badge badge-cancel" }, "cancel asked") : null);
    fill(job.actions, (job.state === "running" || job.state === "queued") ? cancelButton(view.id, job.cancelAsked) : null);
    const kv = (k, v, cls) => [el("dt", {}, k), el("dd", { class: cls || "" }, v === undefined || v === null || v === "" ? "–" : v)];
    fill(job.info, 
      ...kv("worker", st.worker || h.worker || (res && res.worker), "mono"),
      ...kv("attempt", String(st.attempt || h.attempt || (res && res.attempt) || "–")),
      ...kv("phase", job.phase || h.phase),
      ...kv("started", stamp(st.ts || parseFloat(h.started_at) || (res && res.started_at))),
      ...kv("image", st.image || (res && res.image), "mono"),
      ...kv("limits", lim.memory ? bytes(lim.memory) + ", " + lim.cpus + " cpus, timeout " + dur(lim.timeout) +
        ", warning " + dur(lim.warning) + (st.clamped ? " (" + st.clamped + ")" : "") : null),
      ...kv("memory", stats.memory !== undefined ? bytes(stats.memory) + (lim.memory ? " of " + bytes(lim.memory) : "") : null),
      ...kv("cpu", stats.cpu !== undefined ? dur(stats.cpu) + " used" + (job.cpuPct !== undefined ? " (" + job.cpuPct.toFixed(0) + "% now)" : "") : null),
      ...(h.last_error ? kv("last error", h.last_error, "err-text") : []),
      ...(h.error && !res ? kv("error", h.error, "err-text") : []));
    const running = job.state === "running";
    if (running && st.ts) {
      if (!job.bar || job.bar.dataset.start != String(st.ts)) {
        job.bar = bar(st.ts, lim.timeout, lim.warning);
        job.progress.replaceChildren(job.bar);
      }
    } else if (!running) {
      job.progress.replaceChildren();
      job.bar = null;
    }
  }

  /* Log lines are queued here and put in the DOM once per frame: a replay of
   * a long log arrives as hundreds of events a second, and laying the box
   * out after each would freeze the page.  Only the last MAX_LOG_LINES are
   * kept in the DOM. */
  function addLines(ev) {
    if (ev.dropped) job.pending.push({ note: "[" + ev.dropped + " lines dropped here]" });
    for (const line of ev.lines || []) {
      job.lines++;
      job.pending.push({ n: job.lines, err: ev.stream === "stderr", t: String(line) });
    }
    if (job.pending.length > 2 * MAX_LOG_LINES) {
      job.hidden += job.pending.length - MAX_LOG_LINES;
      job.pending.splice(0, job.pending.length - MAX_LOG_LINES);
    }
    if (!job.flushing) {
      job.flushing = true;
      requestAnimationFrame(flushLines);
    }
  }

  function flushLines() {
    job.flushing = false;
    const box = job.box;
    let items = job.pending;
    job.pending = [];
    if (items.length > MAX_LOG_LINES) {
      job.hidden += items.length - MAX_LOG_LINES;
      items = items.slice(-MAX_LOG_LINES);
    }
    const frag = document.createDocumentFragment();
    for (const it of items) {
      if (it.note) { frag.append(el("div", { class: "ln ln-note" }, it.note)); continue; }
      const d = el("div", { class: it.err ? "ln ln-err" : "ln" });
      d.append(el("span", { class: "lno" }, String(it.n)));
      d.append(document.createTextNode(it.t));
      frag.append(d);
    }
    box.append(frag);
    let extra = box.childElementCount - MAX_LOG_LINES - (job.cut ? 1 : 0);
    if (extra > 0 || job.hidden) {
      if (!job.cut) job.cut = el("div", { class: "ln ln-note" });
      if (job.cut.parentNode) job.cut.remove();
      job.hidden += Math.max(extra, 0);
      while (extra-- > 0) box.removeChild(box.firstChild);
      job.cut.textContent = "[" + job.hidden + " earlier lines not shown here; `enqueue logs " + view.id + "` has them]";
      box.insertBefore(job.cut, box.firstChild);
    }
    job.logCount.textContent = String(job.lines);
    if (job.follow) { box.scrollTop = box.scrollHeight; job.autoTop = box.scrollTop; }
    else job.followBtn.hidden = false;
  }

  function addTimeline(ev) {
    let text = ev.type;
    if (ev.type === "started") text = "started on " + ev.worker + " (attempt " + ev.attempt + ", " + ev.runtime + ")";
    else if (ev.type === "phase") text = "phase: " + ev.name;
    else if (ev.type === "warning") text = "warning: " + (ev.message || "");
    else if (ev.type === "requeued") text = "requeued: " + ev.reason + (ev.due ? " (due " + clock(ev.due) + ")" : "");
    else if (ev.type === "finished") text = "finished: " + (ev.result || {}).status;
    else if (ev.type === "dead") text = "dead: " + ev.reason + " — " + (ev.error || "");
    else return;
    const cls = ev.type === "warning" ? "tl-warn" : ev.type === "dead" || (ev.type === "finished" && (ev.result || {}).status !== "succeeded") ? "tl-bad" : "";
    job.timeline.append(el("li", { class: cls }, el("span", { class: "muted mono" }, clock(ev.ts)), " ", text));
  }

  function showResult(r) {
    job.resultShown = r;
    job.state = r.status;
    const bad = r.status !== "succeeded";
    const parts = [el("h2", {}, "Result ", chip(r.status),
      el("span", { class: "muted sub" }, "exit " + r.exit_code + " · " + dur(r.duration) + " · " + (r.worker || "") +
        " · attempt " + r.attempt + " · finished " + stamp(r.finished_at)))];
    if (r.error) parts.push(el("div", { class: "errbox" }, r.error));
    if (r.dropped_lines) parts.push(el("p", { class: "muted" }, r.dropped_lines + " log lines were not published (limits)."));
    const arts = r.artifacts || [];
    const at = el("table", { class: "grid arts" }, el("thead", {}, el("tr", {},
      el("th", {}, "Artifact"), el("th", { class: "w-size" }, "Size"), el("th", { class: "w-sha" }, "sha256"))));
    const tb = el("tbody");
    for (const a of arts) tb.append(el("tr", {}, el("td", { class: "mono ell", title: a.name }, a.name),
      el("td", { class: "num", title: a.size + " bytes" }, bytes(a.size)), el("td", { class: "mono sha" }, a.sha256)));
    if (!arts.length) tb.append(el("tr", {}, el("td", { colspan: 3, class: "empty" }, "no artifacts")));
    at.append(tb);
    parts.push(at);
    if (bad && (r.log_tail || []).length) {
      parts.push(el("h3", {}, "Last lines of output"));
      const pre = el("div", { class: "log log-tail" });
      for (const l of r.log_tail) {
        const t = String(l);
        pre.append(el("div", { class: /ERROR|error:|fatal/i.test(t) ? "ln ln-err" : "ln" }, t));
      }
      parts.push(pre);
      requestAnimationFrame(() => { pre.scrollTop = pre.scrollHeight; });
    }
    fill(job.result, parts);
    job.result.className = "panel " + (bad ? "panel-bad" : "panel-ok");
    job.result.hidden = false;
  }

  function onJob(ev) {
    if (typeof ev.seq !== "number" || ev.seq <= job.seq) return;   // already shown
    job.seq = ev.seq;
    switch (ev.type) {
      case "log": addLines(ev); return;
      case "started":
        job.ev = { started: ev }; job.state = "running"; job.phase = ""; job.cpuPct = undefined;
        job.result.hidden = true; break;
      case "phase": job.phase = ev.name; break;
      case "stats":
        if (job.ev.stats && ev.elapsed > job.ev.stats.elapsed)
          job.cpuPct = 100 * (ev.cpu - job.ev.stats.cpu) / (ev.elapsed - job.ev.stats.elapsed);
        job.ev.stats = ev; break;
      case "warning": job.ev.warning = ev; break;
      case "finished": job.ev.finished = ev; showResult(ev.result || {}); break;
      case "requeued": job.state = "queued"; break;
      case "dead": job.state = "dead"; job.hash = Object.assign({}, job.hash, { error: ev.error }); break;
    }
    addTimeline(ev);
    renderJobHead();
  }

  // ------------------------------------------------------------ live stream

  function connect() {
    const u = new URL("api/live", document.baseURI);
    if (view.name === "job") u.searchParams.append("job", view.id);
    if (lastId) u.searchParams.set("last", lastId);
    es = new EventSource(u.toString());
    es.addEventListener("open", () => { status.connects++; if (!redisDown) setConn("ok", "live"); });
    es.addEventListener("hello", (e) => {
      const h = JSON.parse(e.data);
      const changed = h.read_only !== session.read_only || h.authed !== session.authed;
      Object.assign(session, h);
      offset = h.server_ts - Date.now() / 1000;
      renderHeader();
      if (changed) rerender();
    });
    es.addEventListener("fleet", (e) => {
      snap = JSON.parse(e.data);
      offset = snap.ts - Date.now() / 1000;
      redisDown = snap.redis === "down";
      setConn(redisDown ? "bad" : "ok", redisDown ? "Redis down" : "live");
      renderHeader();
      if (view.name === "fleet") renderFleet();
      else if (view.name === "dead" && snap.counts && snap.counts.dead !== deadCount) {
        deadCount = snap.counts.dead;
        reloadDead();
      }
    });
    es.addEventListener("job", (e) => {
      lastId = e.lastEventId || lastId;
      onJob(JSON.parse(e.data));
    });
    es.addEventListener("status", (e) => {
      const s = JSON.parse(e.data);
      if (s.redis === "down") { redisDown = true; setConn("bad", "Redis down, reconnecting"); }
    });
    es.addEventListener("error", () => {
      if (es.readyState === EventSource.CLOSED) {
        setConn("bad", "disconnected, retrying");
        setTimeout(connect, 2000);
      } else setConn("wait", "reconnecting");
    });
  }

  function rerender() {
    if (view.name === "fleet") renderFleet();
    else if (view.name === "dead") reloadDead();
    else renderJobHead();
  }

  function start() {
    renderHeader();
    if (view.name === "fleet") fleetView();
    else if (view.name === "dead") { deadCount = -1; $("view").replaceChildren(el("p", { class: "muted" }, "loading…")); }
    else jobView();
    connect();
  }
  start();
})();
