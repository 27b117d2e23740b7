// The audit view: the log's newest lines and its verification, through the kernel's `audit` syscall,
// which answers only an admin (anyone else sees the kernel's refusal).

import { get, post } from "./api.js";

const $ = (id) => document.getElementById(id);
const SHOWN_APART = new Set(["ts", "event", "prev", "principal", "mac"]);

export class Audit {
  constructor() {
    $("audit-refresh").addEventListener("click", () => this.refresh());
    $("audit-verify").addEventListener("click", () => this.verify());
  }

  async refresh() {
    const lines = Math.min(Math.max(parseInt($("audit-lines").value, 10) || 100, 1), 1000);
    let answer;
    try {
      answer = await get(`/console/api/audit?lines=${lines}`);
    } catch (e) {
      $("audit-status").textContent = `audit log: ${e.message}`;
      $("audit-table").tBodies[0].replaceChildren();
      return;
    }
    const body = $("audit-table").tBodies[0];
    body.replaceChildren();
    for (const r of answer.lines.slice().reverse()) {       // newest first
      const row = body.insertRow();
      row.insertCell().textContent = new Date(r.ts * 1000).toLocaleString();
      row.insertCell().textContent = r.event;
      row.insertCell().textContent = r.principal || r.by || "";
      row.insertCell().textContent = Object.entries(r).filter(([k]) => !SHOWN_APART.has(k))
        .map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(" ");
    }
    $("audit-status").textContent = `${answer.lines.length} newest lines`;
  }

  async verify() {
    $("audit-status").textContent = "verifying…";
    try {
      const v = await post("/console/api/audit/verify", {});
      $("audit-status").textContent = v.problem
        ? `PROBLEM: ${v.problem} (${v.lines} lines read)`
        : `${v.lines} lines, chain intact${v.notes.length ? ` · ${v.notes.join(" · ")}` : ""}`;
    } catch (e) {
      $("audit-status").textContent = `verify: ${e.message}`;
    }
  }
}
