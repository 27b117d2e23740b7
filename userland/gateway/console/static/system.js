// The system views, drawn from one live snapshot a second: processes, devices, models, the
// scheduler (with charts of the last minutes), fine-tune jobs. Actions post to the console's API
// as the page's principal; the kernel refuses what that principal may not do, and we show why.

import { failure, headers, post, readEvents } from "./api.js";
import { History, draw } from "./charts.js";

const $ = (id) => document.getElementById(id);
const SPAN_S = 300;

export function size(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = bytes || 0, u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return `${v.toFixed(u ? 1 : 0)} ${units[u]}`;
}

export function age(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`;
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function button(label, onClick, title) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  if (title) b.setAttribute("aria-label", title);
  b.addEventListener("click", onClick);
  return b;
}

async function act(statusId, what, path, body) {
  $(statusId).textContent = `${what}…`;
  try {
    await post(path, body);
    $(statusId).textContent = `${what}: done`;
  } catch (e) {
    $(statusId).textContent = `${what}: ${e.message}`;
    $(statusId).classList.add("error");
    setTimeout(() => $(statusId).classList.remove("error"), 4000);
  }
}

export function progressText(p) {
  const elapsed = p.elapsed_s === undefined ? "" : `, ${p.elapsed_s.toFixed(1)} s`;
  const expected = p.expected_s ? ` of about ${p.expected_s.toFixed(0)} s` : "";
  return `${p.stage}${elapsed}${expected}`;
}

// A load tells its progress as server-sent events while the kernel loads (or answers JSON when it was quick).
async function loadModel(name) {
  const status = $("models-status");
  status.textContent = `load ${name}…`;
  try {
    const r = await fetch("/console/api/models/load", {
      method: "POST", headers: headers(true), body: JSON.stringify({ model: name }),
    });
    if (!r.ok) throw await failure(r);
    if (!(r.headers.get("content-type") || "").startsWith("text/event-stream")) {
      await r.json();
      status.textContent = `load ${name}: done`;
      return;
    }
    let outcome = "the gateway ended the load's stream";
    await readEvents(r, (_, data) => {
      const event = JSON.parse(data);
      if (event.progress) status.textContent = `loading ${name}: ${progressText(event.progress)}`;
      else if (event.result) outcome = "done";
      else if (event.error) outcome = event.error.message;
    });
    status.textContent = `load ${name}: ${outcome}`;
  } catch (e) {
    status.textContent = `load ${name}: ${e.message}`;
  }
}

export class System {
  constructor() {
    this.tps = new History(SPAN_S);
    this.ttft = new History(SPAN_S);
    this.queue = new History(SPAN_S);
    this.losses = new Map();       // job -> [[step, loss]], as the snapshots saw them
    this.chartJob = null;
  }

  update(s) {
    const t = s.time;
    this.tps.add(t, s.throughput.tokens_per_s);
    this.ttft.add(t, s.ttft_s.p50 === null ? null : s.ttft_s.p50 * 1000);
    this.queue.add(t, Object.values(s.queues).reduce((a, b) => a + b, 0));
    this.processes(s);
    this.devices(s.devices);
    this.models(s.models);
    this.scheduler(s);
    this.jobs(s.jobs);
  }

  processes(s) {
    $("processes-note").textContent = s.admin
      ? `every principal's processes (you are ${s.principal}, an admin)`
      : `the processes of ${s.principal} and the kernel's service host`;
    const body = $("processes-table").tBodies[0];
    body.replaceChildren();
    for (const p of s.processes) {
      const row = body.insertRow();
      row.dataset.pid = p.pid;
      cell(row, p.pid, "num");
      cell(row, p.name);
      cell(row, p.principal);
      cell(row, age(p.age_s), "num");
      cell(row, p.requests, "num");
      cell(row, p.tokens, "num");
      cell(row, p.tokens_per_s.toFixed(1), "num");
      cell(row, size(p.reserved_bytes), "num");
      const actions = row.insertCell();
      if (s.admin) {
        actions.append(button("Kill", () => {
          if (confirm(`Kill process ${p.pid} (${p.name})?`)) act("processes-status", `kill ${p.pid}`, "/console/api/processes/kill", { pid: p.pid });
        }, `Kill process ${p.pid}`));
      }
    }
  }

  devices(devices) {
    const list = $("devices-list");
    list.replaceChildren();
    for (const d of devices) {
      const card = list.appendChild(document.createElement("article"));
      card.className = `card driver-${d.driver}`;
      const h = card.appendChild(document.createElement("h3"));
      h.textContent = `${d.name} — driver ${d.driver}`;
      const bar = card.appendChild(document.createElement("div"));
      bar.className = "bar";
      bar.setAttribute("role", "img");
      const total = d.total_bytes || 1;
      const kv = d.kv_bytes || 0;
      const weights = Math.max(0, d.models_bytes - kv);      // a model's bytes count its KV pool too
      const parts = [["weights", weights], ["kv", kv], ["reserved", d.reserved_bytes], ["free", d.free_bytes]];
      let used = 0;
      for (const [name, bytes] of parts) {
        const share = Math.max(0, Math.min(bytes, total - used));
        used += share;
        const seg = bar.appendChild(document.createElement("span"));
        seg.className = `seg ${name}`;
        seg.style.width = `${(100 * share) / total}%`;
      }
      bar.setAttribute("aria-label", parts.map(([n, b]) => `${n} ${size(b)}`).join(", ") + ` of ${size(d.total_bytes)}`);
      const facts = card.appendChild(document.createElement("p"));
      facts.className = "note";
      const inUse = d.kv_usage === null || d.kv_usage === undefined ? "-" : `${Math.round(d.kv_usage * 100)}%`;
      facts.textContent = `weights ${size(weights)} · KV pool ${size(kv)} (${inUse} in use) · `
        + `reservations ${size(d.reserved_bytes)} · free ${size(d.free_bytes)} of ${size(d.total_bytes)} · `
        + `${d.running} running, ${d.queued} queued`;
    }
  }

  models(models) {
    const body = $("models-table").tBodies[0];
    body.replaceChildren();
    for (const m of models.loaded) {
      const row = body.insertRow();
      row.dataset.model = m.name;
      cell(row, m.name);
      cell(row, m.kind);
      cell(row, m.device || "-");
      const state = cell(row, m.state);
      if (m.state === "loading" && m.progress) {
        const p = m.progress;
        const bar = document.createElement("progress");
        bar.max = p.expected_s || 1;
        if (p.expected_s) bar.value = Math.min(p.elapsed_s, p.expected_s);
        bar.setAttribute("aria-label", `loading ${m.name}`);
        state.textContent = `loading: ${progressText(p)} `;
        state.append(bar);
      }
      cell(row, size(m.bytes), "num");
      cell(row, m.refs, "num");
      cell(row, m.in_use, "num");
      row.insertCell().append(button("Unload", () => act("models-status", `unload ${m.name}`, "/console/api/models/unload", { model: m.name }), `Unload ${m.name}`));
    }
    const loaded = new Set(models.loaded.map((m) => m.name));
    const list = $("models-available");
    list.replaceChildren();
    for (const a of models.available.filter((a) => !loaded.has(a.name))) {
      const li = list.appendChild(document.createElement("li"));
      li.append(`${a.name} (${a.kind}, ${a.source}) `);
      li.append(button("Load", () => loadModel(a.name), `Load ${a.name}`));
    }
  }

  scheduler(s) {
    const ttft = s.ttft_s.p50 === null ? "-" : `${Math.round(s.ttft_s.p50 * 1000)} ms`;
    $("scheduler-summary").textContent = `${s.throughput.tokens_per_s.toFixed(1)} tok/s · TTFT p50 ${ttft} `
      + `(${s.ttft_s.count} in the last minute) · ${s.requests.total} replies, ${s.requests.errors} errors · `
      + (s.ready ? "ready" : `not ready: ${s.ready_reason}`) + ` · services ${s.services.state}`;
    draw($("chart-tps"), this.tps.points, { span: SPAN_S });
    draw($("chart-ttft"), this.ttft.points, { span: SPAN_S, format: (v) => v.toFixed(0) });
    draw($("chart-queue"), this.queue.points, { span: SPAN_S, format: (v) => v.toFixed(0) });
    const queues = $("queues-table").tBodies[0];
    queues.replaceChildren();
    for (const [principal, n] of Object.entries(s.queues).sort()) {
      const row = queues.insertRow();
      cell(row, principal);
      cell(row, n, "num");
    }
    const devices = $("device-queues-table").tBodies[0];
    devices.replaceChildren();
    for (const d of s.devices) {
      const row = devices.insertRow();
      cell(row, d.name);
      cell(row, d.queued, "num");
      cell(row, d.running, "num");
      cell(row, d.kv_usage === null || d.kv_usage === undefined ? "-" : `${Math.round(d.kv_usage * 100)}%`, "num");
    }
  }

  jobs(jobs) {
    const body = $("jobs-table").tBodies[0];
    body.replaceChildren();
    for (const j of jobs) {
      if (j.loss !== null && j.loss !== undefined) {
        const seen = this.losses.get(j.job) || [];
        if (!seen.length || seen[seen.length - 1][0] !== j.step) seen.push([j.step, j.loss]);
        this.losses.set(j.job, seen.slice(-2000));
      }
      const row = body.insertRow();
      row.dataset.job = j.job;
      cell(row, j.job);
      cell(row, j.model);
      cell(row, j.owner);
      cell(row, j.error ? `${j.state}: ${j.error}` : j.state);
      cell(row, `${j.step}/${j.steps}`, "num");
      cell(row, j.loss === null ? "-" : j.loss.toFixed(4), "num");
      cell(row, j.tokens_per_s.toFixed(1), "num");
      cell(row, j.eta_s === null ? "-" : age(j.eta_s), "num");
      const actions = row.insertCell();
      actions.append(button("Loss", () => { this.chartJob = j.job; this.drawLoss(); }, `Loss curve of ${j.job}`));
      if (j.state === "queued" || j.state === "running") {
        actions.append(button("Cancel", () => act("jobs-status", `cancel ${j.job}`, "/console/api/jobs/cancel", { job: j.job }), `Cancel ${j.job}`));
      }
    }
    if (!this.chartJob && jobs.length) this.chartJob = jobs[jobs.length - 1].job;
    this.drawLoss();
  }

  drawLoss() {
    const points = this.losses.get(this.chartJob) || [];
    $("loss-caption").textContent = this.chartJob ? `Loss of ${this.chartJob} by step (seen while this page was open)` : "Loss";
    draw($("chart-loss"), points, { format: (v) => v.toFixed(2) });
  }
}
