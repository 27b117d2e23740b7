// The gateway's API as the page uses it: the API key (this tab only, sent as a header, never a cookie),
// JSON calls that raise the gateway's error message, and the live snapshot stream.

const KEY = "llmos-api-key";

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error ? body.error.code : null;
  }
}

export const apiKey = {
  get: () => sessionStorage.getItem(KEY),
  set: (key) => sessionStorage.setItem(KEY, key),
  clear: () => sessionStorage.removeItem(KEY),
};

export function headers(json = false) {
  const h = {};
  const key = apiKey.get();
  if (key) h.Authorization = `Bearer ${key}`;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

export async function failure(response) {
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON: the status says it */ }
  return new ApiError(response.status, body);
}

export async function get(path) {
  const r = await fetch(path, { headers: headers() });
  if (!r.ok) throw await failure(r);
  return r.json();
}

export async function post(path, body) {
  const r = await fetch(path, { method: "POST", headers: headers(true), body: JSON.stringify(body) });
  if (!r.ok) throw await failure(r);
  return r.json();
}

// Server-sent events over fetch (EventSource cannot send the Authorization header).
// onEvent(name, data) for each event; resolves when the stream ends, rejects on failure.
export async function readEvents(response, onEvent, signal) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  while (!signal || !signal.aborted) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data.push(line.slice(6));
      }
      if (data.length) onEvent(name, data.join("\n"));
    }
  }
}

// The live snapshots, one a second; reconnects after a failure with a growing pause (at most 10 s).
export function subscribe(onSnapshot, onState) {
  let pause = 1000;
  let stopped = false;
  const controller = new AbortController();
  (async () => {
    while (!stopped) {
      try {
        const r = await fetch("/console/api/events", { headers: headers(), signal: controller.signal });
        if (!r.ok) throw await failure(r);
        onState("live", null);
        pause = 1000;
        await readEvents(r, (name, data) => {
          const parsed = JSON.parse(data);
          if (name === "failure") onState("failure", parsed.error.message);
          else { onState("live", null); onSnapshot(parsed); }
        }, controller.signal);
      } catch (e) {
        if (stopped) return;
        onState("failure", e.message);
        if (e.status === 401) return;
      }
      await new Promise((done) => setTimeout(done, pause));
      pause = Math.min(pause * 2, 10000);
    }
  })();
  return () => { stopped = true; controller.abort(); };
}
