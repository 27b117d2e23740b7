// The chat view: streams /v1/chat/completions as the OpenAI clients do, with the page's API key.
// Stop aborts the fetch: the gateway sees the disconnect and cancels the kernel request at once.

import { failure, headers, readEvents } from "./api.js";
import { render } from "./md.js";
import { progressText } from "./system.js";

const $ = (id) => document.getElementById(id);

export class Chat {
  constructor(latest) {
    this.latest = latest;          // () => the newest live snapshot, for the model list and load progress
    this.messages = [];            // the conversation so far, without the system prompt
    this.controller = null;
    this.defaultModel = null;
    $("chat-form").addEventListener("submit", (e) => { e.preventDefault(); this.send(); });
    $("chat-message").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); this.send(); }
    });
    $("chat-stop").addEventListener("click", () => this.stop());
    $("chat-new").addEventListener("click", () => this.clear());
  }

  setDefault(model) { this.defaultModel = model; }

  // The picker: loaded models first, then those the registry can load; the choice survives updates.
  updateModels(models) {
    const select = $("chat-model");
    const chosen = select.value || this.defaultModel;
    const names = [];
    for (const m of models.loaded) if (m.kind !== "embed" && !names.includes(m.name)) names.push(m.name);
    for (const m of models.available) if (m.kind !== "embed" && !names.includes(m.name)) names.push(m.name);
    if (this.defaultModel && !names.includes(this.defaultModel)) names.unshift(this.defaultModel);
    const same = names.length === select.options.length && names.every((n, i) => select.options[i].value === n);
    if (same) return;
    select.replaceChildren(...names.map((n) => {
      const loaded = models.loaded.some((m) => m.name === n && m.state === "ready");
      return new Option(loaded ? `${n} (loaded)` : n, n);
    }));
    if (chosen && names.includes(chosen)) select.value = chosen;
  }

  clear() {
    this.stop();
    this.messages = [];
    $("transcript").replaceChildren();
    $("chat-status").textContent = "";
  }

  stop() {
    if (this.controller) this.controller.abort();
  }

  bubble(role, text) {
    const div = document.createElement("div");
    div.className = `msg ${role}`;
    const body = div.appendChild(document.createElement("div"));
    body.className = "body";
    if (role === "user") body.textContent = text; else body.append(render(text));
    const meta = div.appendChild(document.createElement("p"));
    meta.className = "meta";
    $("transcript").append(div);
    return { div, body, meta };
  }

  async send() {
    const box = $("chat-message");
    const text = box.value.trim();
    if (!text || this.controller) return;
    box.value = "";
    this.messages.push({ role: "user", content: text });
    this.bubble("user", text);
    const model = $("chat-model").value || this.defaultModel || undefined;
    const system = $("chat-system").value.trim();
    const maxTokens = parseInt($("chat-max-tokens").value, 10) || 512;
    const answer = this.bubble("assistant", "");
    answer.div.setAttribute("aria-busy", "true");
    const controller = (this.controller = new AbortController());
    $("chat-stop").disabled = false;
    $("chat-send").disabled = true;
    const started = performance.now();
    let first = null;
    let text_ = "";
    let usage = null;
    let painted = false;
    const paint = () => {
      painted = false;
      answer.body.replaceChildren(render(text_));
      $("transcript").scrollTop = $("transcript").scrollHeight;
    };
    const waiting = setInterval(() => this.showWaiting(model, started, first), 250);
    this.showWaiting(model, started, first);
    let ended = "done";
    try {
      const body = {
        model, max_tokens: maxTokens, stream: true, stream_options: { include_usage: true },
        messages: [...(system ? [{ role: "system", content: system }] : []), ...this.messages],
      };
      const r = await fetch("/v1/chat/completions", {
        method: "POST", headers: headers(true), body: JSON.stringify(body), signal: controller.signal,
      });
      if (!r.ok) throw await failure(r);
      await readEvents(r, (_, data) => {
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) {
          if (first === null) first = performance.now();
          text_ += delta.content;
          if (!painted) { painted = true; requestAnimationFrame(paint); }
        }
      }, controller.signal);
      if (controller.signal.aborted) ended = "stopped";
    } catch (e) {
      ended = e.name === "AbortError" ? "stopped" : `error: ${e.message}`;
    } finally {
      clearInterval(waiting);
      paint();
      answer.div.removeAttribute("aria-busy");
      this.controller = null;
      $("chat-stop").disabled = true;
      $("chat-send").disabled = false;
    }
    if (text_) this.messages.push({ role: "assistant", content: text_ });
    const now = performance.now();
    const tokens = usage ? usage.completion_tokens : null;
    const parts = [];
    if (first !== null) parts.push(`TTFT ${Math.round(first - started)} ms`);
    if (tokens !== null && first !== null && now > first) parts.push(`${tokens} tokens, ${(tokens / ((now - first) / 1000)).toFixed(1)} tok/s`);
    if (ended !== "done") parts.push(ended);
    answer.meta.textContent = parts.join(" · ");
    answer.div.dataset.state = ended === "done" ? "done" : ended.startsWith("error") ? "error" : "stopped";
    $("chat-status").textContent = ended.startsWith("error") ? ended : "";
  }

  // While no token has come: a model loading says how far it has got, else we wait for the first token.
  showWaiting(model, started, first) {
    if (first !== null) { $("chat-status").textContent = ""; return; }
    const snap = this.latest();
    const loading = snap && snap.models.loaded.find((m) => m.name === model && m.state === "loading");
    const waited = ((performance.now() - started) / 1000).toFixed(1);
    if (loading && loading.progress) {
      $("chat-status").textContent = `loading ${model}: ${progressText(loading.progress)}`;
    } else {
      $("chat-status").textContent = `waiting for the first token… ${waited} s`;
    }
  }
}
