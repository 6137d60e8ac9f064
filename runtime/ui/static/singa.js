// Shared helpers of the dashboard's pages: fetch, POST with the token, polling
// that pauses while the page is hidden, formatting. No inline scripts (CSP).
"use strict";
const singa = (() => {
  const meta = (n) => (document.querySelector(`meta[name="${n}"]`) || {}).content || "";
  const token = () => meta("singa-token");
  const pollMs = () => parseInt(meta("singa-poll-ms"), 10) || 2000;

  async function get(url) {
    const r = await fetch(url, {headers: {"Accept": "application/json"}, credentials: "same-origin"});
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
    return body;
  }

  // An action: POST with the token in the form body (never in the URL or a cookie).
  async function post(url) {
    const form = new URLSearchParams({token: token()});
    const r = await fetch(url, {method: "POST", body: form, credentials: "same-origin"});
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
    return body;
  }

  // Call fn every ms while the page is visible (and at once when it shows again);
  // fn may return false to stop. One call at a time.
  function poll(fn, ms) {
    let timer = null, busy = false, stopped = false;
    async function tick() {
      timer = null;
      if (stopped || document.hidden || busy) return;
      busy = true;
      let more = true;
      try { more = (await fn()) !== false; } catch (e) { console.warn(e); }
      busy = false;
      if (!more) { stopped = true; return; }
      if (!document.hidden) timer = setTimeout(tick, ms);
    }
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && !timer && !stopped) tick();
      else if (document.hidden && timer) { clearTimeout(timer); timer = null; }
    });
    tick();
    return {stop() { stopped = true; if (timer) clearTimeout(timer); }, now: tick};
  }

  const esc = (s) => String(s ?? "").replace(/[&<>"']/g,
    (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  const pad = (n) => String(n).padStart(2, "0");
  function ts(t) {
    if (t == null) return "-";
    const d = new Date(t * 1000);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function dur(s) {
    if (s == null) return "-";
    s = Math.max(0, Math.floor(s));
    return `${Math.floor(s / 3600)}:${pad(Math.floor(s / 60) % 60)}:${pad(s % 60)}`;
  }
  function ago(s) {
    if (s == null) return "-";
    if (s < 60) return `${s.toFixed(1)}s ago`;
    if (s < 3600) return `${Math.floor(s / 60)}m${pad(Math.floor(s) % 60)}s ago`;
    return `${Math.floor(s / 3600)}h${pad(Math.floor(s / 60) % 60)}m ago`;
  }
  const num = (x, d = 4) => (typeof x === "number" && isFinite(x)) ? x.toFixed(d) : "-";
  const step = (n, total) => (n == null ? "-" : String(n)) + (total ? `/${total}` : "");
  function bytes(b) {
    if (b < 1024) return `${b} B`;
    if (b < 2 ** 20) return `${(b / 1024).toFixed(1)} KiB`;
    return `${(b / 2 ** 20).toFixed(1)} MiB`;
  }
  function toast(msg, bad) {
    const el = document.getElementById("toast");
    if (!el) return;
    el.textContent = msg; el.className = "toast" + (bad ? " bad" : ""); el.hidden = false;
    clearTimeout(toast._t); toast._t = setTimeout(() => { el.hidden = true; }, 6000);
  }
  const TERMINAL = new Set(["SUCCEEDED", "FAILED", "KILLED", "LOST", "CANCELLED"]);
  return {token, pollMs, get, post, poll, esc, ts, dur, ago, num, step, bytes, toast, TERMINAL};
})();
