// The console's start: who we are (a key to paste where the gateway has keys), the views, the live feed.

import { apiKey, get, subscribe } from "./api.js";
import { Audit } from "./audit.js";
import { Chat } from "./chat.js";
import { Services } from "./services.js";
import { System } from "./system.js";

const $ = (id) => document.getElementById(id);
const VIEWS = ["chat", "processes", "devices", "models", "scheduler", "jobs", "services", "audit"];

let latest = null;
let unsubscribe = null;
const chat = new Chat(() => latest);
const system = new System();
const services = new Services();
const audit = new Audit();

function show(view) {
  if (!VIEWS.includes(view)) view = "chat";
  for (const v of VIEWS) $(`view-${v}`).hidden = v !== view;
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.view === view) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  if (view === "services") services.refresh();
  if (view === "audit") audit.refresh();
  if (latest) system.update(latest);      // charts need a visible canvas to take their size
}

function onSnapshot(s) {
  latest = s;
  system.update(s);
  chat.updateModels(s.models);
}

function onState(state, message) {
  const el = $("live-state");
  el.textContent = state === "live" ? "● live" : `○ ${message}`;
  el.className = `live ${state}`;
  if (state === "failure" && message && /API key/.test(message) && apiKey.get()) logout("your API key was refused");
}

function login(reason) {
  $("views").hidden = true;
  $("login").hidden = false;
  $("logout").hidden = true;
  $("login-error").textContent = reason || "";
  $("api-key").focus();
}

function logout(reason) {
  apiKey.clear();
  if (unsubscribe) unsubscribe();
  unsubscribe = null;
  $("whoami").textContent = "";
  login(reason);
}

async function start() {
  let me;
  try {
    me = await get("/console/api/whoami");
  } catch (e) {
    if (e.status === 401) {
      const had = apiKey.get();
      apiKey.clear();
      login(had ? `refused: ${e.message}` : "");
    } else {
      $("live-state").textContent = `○ ${e.message}`;
    }
    return;
  }
  $("login").hidden = true;
  $("views").hidden = false;
  $("logout").hidden = !me.keyed;
  $("whoami").textContent = `${me.principal}${me.admin ? " (admin)" : ""}`;
  chat.setDefault(me.default_model);
  show(location.hash.slice(1));
  unsubscribe = subscribe(onSnapshot, onState);
}

$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const key = $("api-key").value.trim();
  $("api-key").value = "";
  if (!key) return;
  apiKey.set(key);
  start();
});
$("logout").addEventListener("click", () => logout(""));
window.addEventListener("hashchange", () => show(location.hash.slice(1)));
start();
