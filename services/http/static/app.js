// dalc dashboard. Plain JS, no dependencies: polls ListTasks and GetStats, submits through
// SubmitTask, follows async tasks over the SSE endpoint (read with fetch so the Authorization
// header can be sent; EventSource cannot send headers). Every text from the API is written with
// textContent, never as HTML.
"use strict";

(() => {
  const TASKS_EVERY_MS = 1500;
  const STATS_EVERY_MS = 2000;
  const KEY_STORAGE = "dalc.apiKey";
  const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED"]);

  const $ = (id) => document.getElementById(id);
  const el = {
    form: $("submit-form"),
    expression: $("expression"),
    submit: $("submit"),
    result: $("submit-result"),
    error: $("submit-error"),
    filter: $("status-filter"),
    tasks: $("tasks"),
    tasksEmpty: $("tasks-empty"),
    detail: $("task-detail"),
    workers: $("workers"),
    workersTotal: $("workers-total"),
    workersEmpty: $("workers-empty"),
    queueDepth: $("queue-depth"),
    byStatus: $("tasks-by-status"),
    connection: $("connection"),
    authDialog: $("auth-dialog"),
    authForm: $("auth-form"),
    authError: $("auth-error"),
    apiKey: $("api-key"),
    apiKeyCancel: $("api-key-cancel"),
    changeKey: $("change-key"),
  };

  let selectedId = null;
  let followedId = null;
  // Aborts the event stream of the task followed before, so one tab holds one stream at most.
  let followAbort = null;

  /** An error answered by the API: {code, message} plus the HTTP status. */
  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
    toString() {
      return `${this.code}: ${this.message}`;
    }
  }

  // --- API access ---------------------------------------------------------------------------

  function apiKey() {
    try {
      return sessionStorage.getItem(KEY_STORAGE) || "";
    } catch {
      return "";
    }
  }

  /** Request headers with `key` (the one in storage when the request is made) as credentials. */
  function headers(key, extra) {
    const h = Object.assign({ Accept: "application/json" }, extra || {});
    if (key) h.Authorization = `Bearer ${key}`;
    return h;
  }

  /** The API's error in `response`, to a request made with `sentKey`. */
  async function errorFrom(response, sentKey) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    const code = body && body.code ? body.code : `HTTP_${response.status}`;
    const message = body && body.message ? body.message : response.statusText || "request failed";
    // A key was sent and refused: say why when asking again, not just show an empty prompt.
    // An answer to a request made before the key changed says nothing of the new key.
    if (response.status === 401 && sentKey === apiKey()) askForKey(sentKey ? message : "");
    return new ApiError(response.status, code, message);
  }

  async function api(method, path, body) {
    const key = apiKey();
    let response;
    try {
      response = await fetch(path, {
        method,
        headers: headers(key, body === undefined ? {} : { "Content-Type": "application/json" }),
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (e) {
      throw new ApiError(0, "UNAVAILABLE", "the server cannot be reached");
    }
    if (!response.ok) throw await errorFrom(response, key);
    return response.json();
  }

  // --- authentication -----------------------------------------------------------------------

  function askForKey(refusal) {
    el.changeKey.hidden = false;
    el.authError.textContent = refusal ? `The key was refused: ${refusal}` : "";
    el.authError.hidden = !refusal;
    if (el.authDialog.open) return;
    el.apiKey.value = "";
    if (typeof el.authDialog.showModal === "function") {
      el.authDialog.showModal();
    } else {
      el.authDialog.setAttribute("open", "");
    }
    el.apiKey.focus();
  }

  el.authForm.addEventListener("submit", (event) => {
    const key = el.apiKey.value.trim();
    if (!key) {
      event.preventDefault();
      el.apiKey.focus();
      return;
    }
    try {
      sessionStorage.setItem(KEY_STORAGE, key);
    } catch {
      // Storage refused (private mode): the key cannot be kept, the next call asks again.
    }
    el.changeKey.hidden = false;
    refreshAll();
  });
  el.apiKeyCancel.addEventListener("click", () => el.authDialog.close());
  el.changeKey.addEventListener("click", () => askForKey(""));

  // --- formatting ---------------------------------------------------------------------------

  const shortStatus = (status) => (status || "TASK_STATUS_UNSPECIFIED").replace(/^TASK_STATUS_/, "");

  function node(tag, attrs, ...children) {
    const n = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") n.className = value;
      else if (name === "text") n.textContent = value;
      else n.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      n.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return n;
  }

  /** A status badge; `field` false where an enclosing element already carries data-field. */
  function badge(status, field = true) {
    const s = shortStatus(status);
    return node("span", { class: `badge badge-${s.toLowerCase()}`, "data-field": field ? "status" : null, text: s });
  }

  function formatTime(text) {
    if (!text) return "–";
    const at = new Date(text);
    if (Number.isNaN(at.getTime())) return text;
    return at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function formatDateTime(text) {
    if (!text) return "–";
    const at = new Date(text);
    if (Number.isNaN(at.getTime())) return text;
    const ms = String(at.getMilliseconds()).padStart(3, "0");
    return `${at.toLocaleDateString()} ${at.toLocaleTimeString([], { hour12: false })}.${ms}`;
  }

  function ago(text) {
    if (!text) return "–";
    const at = new Date(text).getTime();
    if (Number.isNaN(at)) return text;
    const seconds = Math.max(0, Math.round((Date.now() - at) / 1000));
    if (seconds < 60) return `${seconds} s ago`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
    return `${Math.floor(seconds / 3600)} h ago`;
  }

  /** Seconds from a proto3 Duration string such as "1.500s". */
  function seconds(duration) {
    if (!duration) return null;
    const value = Number.parseFloat(String(duration).replace(/s$/, ""));
    return Number.isFinite(value) ? value : null;
  }

  function formatSeconds(value) {
    if (value === null || value === undefined) return "–";
    if (value < 0.001) return `${(value * 1e6).toFixed(0)} µs`;
    if (value < 1) return `${(value * 1000).toFixed(value < 0.01 ? 2 : 1)} ms`;
    return `${value.toFixed(2)} s`;
  }

  function between(from, to) {
    if (!from || !to) return null;
    const ms = new Date(to).getTime() - new Date(from).getTime();
    return Number.isFinite(ms) ? ms / 1000 : null;
  }

  const count = (value) => (value === undefined ? "0" : String(value));

  // --- submitting ---------------------------------------------------------------------------

  function showError(error) {
    el.error.textContent = String(error);
    el.error.hidden = false;
    el.expression.setAttribute("aria-invalid", "true");
  }

  function clearError() {
    el.error.textContent = "";
    el.error.hidden = true;
    el.expression.removeAttribute("aria-invalid");
  }

  function showResult(task, note) {
    const status = shortStatus(task.status);
    const parts = [node("div", { class: "result-head" }, badge(task.status),
      node("code", { class: "result-expression", text: task.expression }))];
    if (task.result !== undefined) {
      parts.push(node("p", { class: "result-value" }, "= ",
        node("strong", { "data-field": "result", text: task.result })));
    }
    if (task.error) {
      parts.push(node("p", { class: "result-error", "data-field": "error", text: task.error }));
    }
    if (!TERMINAL.has(status)) {
      parts.push(node("p", { class: "help", text: note || "Waiting for a worker…" }));
    }
    const id = node("button", { type: "button", class: "link-button", "data-field": "id", text: task.id,
      "aria-label": `Show details of task ${task.id}` });
    id.addEventListener("click", () => selectTask(task.id));
    parts.push(node("p", { class: "result-id" }, "Task ", id));
    el.result.replaceChildren(node("div", { class: `result-card result-${status.toLowerCase()}`,
      "data-task-id": task.id, "data-status": status }, ...parts));
  }

  el.form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError();
    const expression = el.expression.value;
    const wait = $("mode-sync").checked;
    el.submit.disabled = true;
    el.submit.textContent = wait ? "Evaluating…" : "Submitting…";
    el.result.replaceChildren();
    followedId = null;
    if (followAbort) followAbort.abort();
    try {
      // A sync call waits at most 30 s (the timeout is also the task's deadline); an async
      // one keeps the server's default deadline, so a queued task is not cut short.
      const request = wait ? { expression, wait, timeout: "30s" } : { expression, wait };
      const { task } = await api("POST", "/tasks", request);
      showResult(task);
      refreshTasks();
      if (!TERMINAL.has(shortStatus(task.status))) follow(task.id);
    } catch (error) {
      showError(error);
    } finally {
      el.submit.disabled = false;
      el.submit.textContent = "Submit";
    }
  });

  /** Follows a task over SSE until it ends; falls back to long-polling GetTask. */
  async function follow(id) {
    followedId = id;
    if (followAbort) followAbort.abort();
    const abort = new AbortController();
    followAbort = abort;
    try {
      await followEvents(id, abort.signal);
    } catch (error) {
      if (followedId !== id || abort.signal.aborted) return;
      if (error instanceof ApiError && error.status !== 0 && error.status < 500) {
        showError(error);
        return;
      }
      await followByPolling(id);
    }
  }

  async function followEvents(id, signal) {
    const key = apiKey();
    const response = await fetch(`/tasks/${encodeURIComponent(id)}/events`, {
      headers: headers(key, { Accept: "text/event-stream" }),
      cache: "no-store",
      signal,
    });
    if (!response.ok) throw await errorFrom(response, key);
    if (!response.body) throw new ApiError(0, "UNAVAILABLE", "streaming not supported");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let last = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const event = parseEvent(block);
        if (!event || followedId !== id) continue;
        if (event.type === "task" && event.data.task) {
          last = event.data.task;
          showResult(last);
          updateDetailIfSelected(last);
        } else if (event.type === "error") {
          throw new ApiError(500, event.data.code || "UNKNOWN", event.data.message || "stream failed");
        }
      }
    }
    if (!last || !TERMINAL.has(shortStatus(last.status))) {
      throw new ApiError(0, "UNAVAILABLE", "the event stream ended early");
    }
    refreshTasks();
  }

  function parseEvent(block) {
    let type = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") type = value;
      else if (field === "data") data.push(value);
    }
    if (data.length === 0) return null;
    try {
      return { type, data: JSON.parse(data.join("\n")) };
    } catch {
      return null;
    }
  }

  async function followByPolling(id) {
    for (let i = 0; i < 120 && followedId === id; i++) {
      try {
        const { task } = await api("GET", `/tasks/${encodeURIComponent(id)}?wait=true&timeout=10s`);
        if (followedId !== id) return;
        showResult(task);
        if (TERMINAL.has(shortStatus(task.status))) {
          refreshTasks();
          return;
        }
      } catch (error) {
        if (error instanceof ApiError && error.status >= 400 && error.status < 500) {
          showError(error);
          return;
        }
        await new Promise((resolve) => setTimeout(resolve, 1000));
      }
    }
  }

  // --- the task list ------------------------------------------------------------------------

  let tasksBusy = false;
  async function refreshTasks() {
    if (tasksBusy) return;
    tasksBusy = true;
    try {
      const status = el.filter.value;
      const query = new URLSearchParams({ pageSize: "50" });
      if (status) query.set("status", status);
      const page = await api("GET", `/tasks?${query}`);
      if (status !== el.filter.value) return; // the filter changed meanwhile
      renderTasks(page.tasks || []);
      online();
    } catch (error) {
      offline(error);
    } finally {
      tasksBusy = false;
    }
  }

  function renderTasks(tasks) {
    const rows = tasks.map((task) => {
      const status = shortStatus(task.status);
      const open = node("button", { type: "button", class: "link-button expression-button clip", title: task.expression,
        text: task.expression, "aria-label": `Show task ${task.expression} (${status.toLowerCase()})` });
      open.addEventListener("click", () => selectTask(task.id));
      const row = node("tr", { "data-task-id": task.id, "data-status": status,
        class: task.id === selectedId ? "selected" : null,
        "aria-current": task.id === selectedId ? "true" : null },
        node("td", { class: "expression-cell" }, open),
        node("td", {}, badge(task.status)),
        node("td", { class: "result-cell", "data-field": "result" },
          node("span", { class: "clip", title: task.result !== undefined ? task.result : task.error || "",
            text: task.result !== undefined ? task.result : task.error || "" })),
        node("td", { class: "hide-narrow hide-medium", "data-field": "workerId", text: task.workerId || "–" }),
        node("td", { class: "hide-narrow", "data-field": "createdAt", title: task.createdAt || "", text: formatTime(task.createdAt) }));
      row.addEventListener("click", (event) => {
        if (event.target === open) return;
        selectTask(task.id);
      });
      if (task.id === selectedId) updateDetailIfSelected(task);
      return row;
    });
    el.tasks.replaceChildren(...rows);
    el.tasksEmpty.hidden = rows.length > 0;
    el.tasksEmpty.textContent = el.filter.value
      ? `No ${el.filter.value.toLowerCase()} tasks.`
      : "No tasks yet. Submit one above.";
  }

  el.filter.addEventListener("change", () => {
    el.tasks.replaceChildren();
    refreshTasks();
  });

  // --- task detail --------------------------------------------------------------------------

  async function selectTask(id) {
    selectedId = id;
    for (const row of el.tasks.querySelectorAll("tr[data-task-id]")) {
      const on = row.dataset.taskId === id;
      row.classList.toggle("selected", on);
      if (on) row.setAttribute("aria-current", "true");
      else row.removeAttribute("aria-current");
    }
    try {
      const { task } = await api("GET", `/tasks/${encodeURIComponent(id)}`);
      renderDetail(task);
    } catch (error) {
      el.detail.replaceChildren(node("p", { class: "error-message", role: "alert", text: String(error) }));
    }
    revealDetail();
  }

  /** Brings the detail into view when it is out of it (in one column it lies below the list). */
  function revealDetail() {
    const card = el.detail.closest("section");
    const box = card.getBoundingClientRect();
    if (box.top < 0 || box.top > window.innerHeight - 80) {
      const smooth = !window.matchMedia("(prefers-reduced-motion: reduce)").matches;
      card.scrollIntoView({ behavior: smooth ? "smooth" : "auto", block: "start" });
    }
  }

  let detailShown = null;
  function updateDetailIfSelected(task) {
    if (task.id !== selectedId) return;
    const key = JSON.stringify(task);
    if (key === detailShown) return;
    renderDetail(task);
  }

  function renderDetail(task) {
    detailShown = JSON.stringify(task);
    const status = shortStatus(task.status);
    const field = (label, name, value, extra) =>
      [node("dt", { text: label }), node("dd", Object.assign({ "data-field": name }, extra || {}), value)];
    const queued = between(task.createdAt, task.startedAt);
    const ran = between(task.startedAt, task.finishedAt);
    const timeline = node("ol", { class: "timeline", "aria-label": "Timeline" },
      step("Created", task.createdAt, null, true),
      step("Started", task.startedAt, queued !== null ? `after ${formatSeconds(queued)} in the queue` : null,
        Boolean(task.startedAt)),
      step("Finished", task.finishedAt, ran !== null ? `ran ${formatSeconds(ran)}` : null,
        Boolean(task.finishedAt)));
    const list = node("dl", { class: "facts" },
      ...field("Id", "id", node("code", { text: task.id })),
      ...field("Expression", "expression", node("code", { text: task.expression })),
      ...field("Status", "status", badge(task.status, false)),
      ...(task.result !== undefined ? field("Result", "result", node("strong", { text: task.result })) : []),
      ...(task.error ? field("Error", "error", task.error) : []),
      ...field("Worker", "workerId", task.workerId || "–"),
      ...field("Attempts", "attempts", count(task.attempts)),
      ...field("Priority", "priority", task.priority === undefined ? "default" : String(task.priority)),
      ...field("Created", "createdAt", formatDateTime(task.createdAt), { title: task.createdAt || "" }),
      ...field("Started", "startedAt", formatDateTime(task.startedAt), { title: task.startedAt || "" }),
      ...field("Finished", "finishedAt", formatDateTime(task.finishedAt), { title: task.finishedAt || "" }));
    const children = [timeline, list];
    if (status === "PENDING") {
      const cancel = node("button", { type: "button", id: "cancel-task", class: "button button-danger", text: "Cancel task" });
      cancel.addEventListener("click", async () => {
        cancel.disabled = true;
        try {
          const { task: cancelled } = await api("POST", `/tasks/${encodeURIComponent(task.id)}:cancel`);
          renderDetail(cancelled);
          refreshTasks();
        } catch (error) {
          cancel.disabled = false;
          cancel.after(node("p", { class: "error-message", role: "alert", text: String(error) }));
        }
      });
      children.push(cancel);
    }
    el.detail.replaceChildren(...children);
  }

  function step(label, at, note, done) {
    return node("li", { class: done ? "done" : "todo" },
      node("span", { class: "step-label", text: label }),
      node("span", { class: "step-time", title: at || "", text: at ? formatTime(at) : "—" }),
      note ? node("span", { class: "step-note", text: note }) : null);
  }

  // --- statistics ---------------------------------------------------------------------------

  let statsBusy = false;
  async function refreshStats() {
    if (statsBusy) return;
    statsBusy = true;
    try {
      renderStats(await api("GET", "/stats"));
      online();
    } catch (error) {
      offline(error);
    } finally {
      statsBusy = false;
    }
  }

  function fillWorkerCells(row, stats) {
    const values = {
      succeeded: count(stats.succeeded),
      failed: count(stats.failed),
      total: count(stats.total),
      mean: formatSeconds(seconds(stats.meanRunTime)),
      p99: formatSeconds(seconds(stats.p99RunTime)),
      lastSeen: ago(stats.lastSeen),
    };
    for (const [name, value] of Object.entries(values)) {
      const cell = row.querySelector(`[data-field="${name}"]`);
      if (cell && cell.textContent !== value) cell.textContent = value;
    }
    const seen = row.querySelector('[data-field="lastSeen"]');
    if (seen) seen.title = stats.lastSeen || "";
  }

  function renderStats(stats) {
    const workers = stats.workers || [];
    const rows = workers.map((worker) => {
      const row = node("tr", { "data-worker-id": worker.workerId || "" },
        node("th", { scope: "row", class: "worker-id", title: worker.workerId || "", text: worker.workerId || "(unnamed)" }),
        node("td", { class: "num", "data-field": "succeeded", "data-label": "Succeeded" }),
        node("td", { class: "num", "data-field": "failed", "data-label": "Failed" }),
        node("td", { class: "num", "data-field": "total", "data-label": "Total" }),
        node("td", { class: "num", "data-field": "mean", "data-label": "Mean" }),
        node("td", { class: "num", "data-field": "p99", "data-label": "p99" }),
        node("td", { "data-field": "lastSeen", "data-label": "Last seen" }));
      fillWorkerCells(row, worker);
      return row;
    });
    el.workers.replaceChildren(...rows);
    el.workersEmpty.hidden = rows.length > 0;
    fillWorkerCells(el.workersTotal, stats.totals || {});
    el.queueDepth.textContent = count(stats.queueDepth);
    const byStatus = stats.tasksByStatus || {};
    const items = ["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED"].map((s) =>
      node("li", { "data-status": s },
        node("span", { class: `dot dot-${s.toLowerCase()}`, "aria-hidden": "true" }),
        node("span", { class: "status-name", text: s.charAt(0) + s.slice(1).toLowerCase() }),
        node("strong", { "data-field": "count", text: count(byStatus[`TASK_STATUS_${s}`]) })));
    el.byStatus.replaceChildren(...items);
  }

  // --- liveness -----------------------------------------------------------------------------

  function online() {
    el.connection.textContent = "Live";
    el.connection.className = "connection connection-live";
  }

  function offline(error) {
    el.connection.textContent = error && error.status === 401 ? "API key needed" : `Offline: ${error}`;
    el.connection.className = "connection connection-down";
  }

  function refreshAll() {
    refreshTasks();
    refreshStats();
  }

  // Hidden tabs skip polls: nobody is looking, and it spares the gateway.
  setInterval(() => document.hidden || refreshTasks(), TASKS_EVERY_MS);
  setInterval(() => document.hidden || refreshStats(), STATS_EVERY_MS);
  document.addEventListener("visibilitychange", () => document.hidden || refreshAll());
  if (apiKey()) el.changeKey.hidden = false;
  refreshAll();
})();
