// The services view: the service host's catalog (svc_list) and a form that calls one task (svc_call).

import { get, post } from "./api.js";

const $ = (id) => document.getElementById(id);

export class Services {
  constructor() {
    $("service-form").addEventListener("submit", (e) => { e.preventDefault(); this.call(); });
  }

  async refresh() {
    let listing;
    try {
      listing = await get("/console/api/services");
    } catch (e) {
      $("services-host").textContent = `services: ${e.message}`;
      return;
    }
    const host = listing.host;
    $("services-host").textContent = `service host ${host.state}, ${host.restarts} restarts, ${host.in_flight} calls in flight`
      + (listing.failed.length ? ` · failed plugins: ${listing.failed.map((f) => `${f.plugin} (${f.error})`).join("; ")}` : "");
    const body = $("services-table").tBodies[0];
    body.replaceChildren();
    const select = $("service-task");
    const chosen = select.value;
    select.replaceChildren();
    for (const s of listing.services) {
      for (const t of s.tasks) {
        const name = `${s.name}.${t.name}`;
        const row = body.insertRow();
        row.insertCell().textContent = name;
        row.insertCell().textContent = Object.entries(t.args)
          .map(([a, spec]) => `${a}${spec.required ? "" : "?"}: ${spec.type}`).join(", ");
        row.insertCell().textContent = t.description || s.description || "";
        select.append(new Option(name, name));
      }
    }
    if (chosen) select.value = chosen;
  }

  async call() {
    const [service, ...rest] = $("service-task").value.split(".");
    const out = $("service-result");
    let args;
    try {
      args = JSON.parse($("service-args").value || "{}");
    } catch (e) {
      out.textContent = `the arguments are not JSON: ${e.message}`;
      return;
    }
    out.textContent = "calling…";
    try {
      out.textContent = JSON.stringify(await post("/console/api/services/call", { service, task: rest.join("."), args }), null, 2);
    } catch (e) {
      out.textContent = `error: ${e.message}`;
    }
  }
}
