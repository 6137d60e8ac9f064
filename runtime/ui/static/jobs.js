// The jobs table: every job (or the states ticked), arrays grouped under a line
// that counts their jobs by state, the queue's positions; follows the registry
// by polling /api/jobs?since=VERSION (an unchanged registry costs one stat).
"use strict";
(() => {
  const tbody = document.querySelector("#jobs tbody");
  const filters = document.getElementById("filters");
  const cmp = document.getElementById("compare-btn");
  let version = "", data = null, skew = 0;
  const picked = new Set();
  window.__jobs = {renders: 0};

  const initial = (filters.dataset.selected || "").split(",").filter(Boolean);
  for (const box of filters.querySelectorAll("input[value]:not([data-all])")) box.checked = initial.includes(box.value);
  filters.querySelector("[data-all]").checked = initial.length === 0;

  function wanted() {
    return new Set([...filters.querySelectorAll("input:not([data-all]):checked")].map((b) => b.value));
  }

  filters.addEventListener("change", (ev) => {
    const all = filters.querySelector("[data-all]");
    if (ev.target === all) {
      for (const b of filters.querySelectorAll("input:not([data-all])")) b.checked = false;
      all.checked = true;
    } else {
      all.checked = wanted().size === 0;
    }
    const w = [...wanted()];
    history.replaceState(null, "", w.length ? `?state=${w.join(",")}` : location.pathname);
    render();
  });

  tbody.addEventListener("change", (ev) => {
    if (!ev.target.matches("input[data-pick]")) return;
    const id = ev.target.dataset.pick;
    if (ev.target.checked) picked.add(id); else picked.delete(id);
    cmp.disabled = picked.size === 0;
  });
  cmp.addEventListener("click", () => { location.href = `/compare?jobs=${[...picked].join(",")}`; });

  function row(j, now, inArray) {
    const end = j.ended != null ? j.ended : now;
    const elapsed = j.started != null ? end - j.started : null;
    let queue = "";
    if (j.state === "QUEUED") queue = `#${j.queue_position} ${j.reason ? "· " + j.reason : ""}`;
    else if (j.reason) queue = j.reason;
    const hosts = j.hosts.length > 3 ? `${j.hosts.slice(0, 3).join(", ")} +${j.hosts.length - 3}` : j.hosts.join(", ");
    const name = inArray ? `↳ ${j.name}` : j.name;
    return `<tr data-id="${j.id}" data-state="${j.state}" class="${inArray ? "in-array" : ""}">` +
      `<td><input type="checkbox" data-pick="${j.id}"${picked.has(String(j.id)) ? " checked" : ""}></td>` +
      `<td><a href="/jobs/${j.id}">${j.id}</a></td><td>${singa.esc(name)}</td>` +
      `<td><span class="state st-${j.state}">${j.state}</span></td>` +
      `<td>${singa.esc(hosts || "-")}</td><td>${singa.step(j.step, j.train_steps)}</td>` +
      `<td>${singa.num(j.loss)}</td><td>${singa.num(j.accuracy)}</td>` +
      `<td>${singa.ts(j.started)}</td><td class="elapsed">${singa.dur(elapsed)}</td>` +
      `<td class="reason">${singa.esc(queue)}</td></tr>`;
  }

  function render() {
    if (!data) return;
    const now = Date.now() / 1000 - skew;
    const w = wanted();
    const jobs = data.jobs.filter((j) => w.size === 0 || w.has(j.state));
    const counts = {};
    for (const j of data.jobs) counts[j.state] = (counts[j.state] || 0) + 1;
    for (const el of filters.querySelectorAll("[data-count]")) el.textContent = counts[el.dataset.count] || "";
    // the queue in its order first when only QUEUED is shown
    if (w.size === 1 && w.has("QUEUED")) jobs.sort((a, b) => a.queue_position - b.queue_position);
    const out = [], shown = new Set();
    for (const j of jobs) {
      if (j.array_id == null) { out.push(row(j, now, false)); continue; }
      if (shown.has(j.array_id)) continue;
      shown.add(j.array_id);
      const a = data.arrays[j.array_id] || {name: "?", states: {}};
      const n = Object.values(a.states).reduce((x, y) => x + y, 0);
      const parts = data.states.filter((s) => a.states[s]).map((s) => `${a.states[s]} ${s}`).join(", ");
      out.push(`<tr class="array" data-array="${j.array_id}"><td></td><td colspan="10">` +
        `<a href="/compare?array=${j.array_id}">array ${j.array_id}</a>: ${singa.esc(a.name)} ` +
        `(${n} job${n === 1 ? "" : "s"}: ${parts})</td></tr>`);
      for (const k of jobs) if (k.array_id === j.array_id) out.push(row(k, now, true));
    }
    tbody.innerHTML = out.join("");
    document.getElementById("summary").textContent =
      `${data.jobs.length} job${data.jobs.length === 1 ? "" : "s"}` +
      (w.size ? `, ${jobs.length} shown` : "") + (data.queued ? `; ${data.queued} queued` : "");
    window.__jobs.renders += 1;
    window.__jobs.rendered = performance.now();
  }

  function tickElapsed() {
    // elapsed of running jobs moves on between polls
    if (!data) return;
    const now = Date.now() / 1000 - skew;
    const byId = new Map(data.jobs.map((j) => [String(j.id), j]));
    for (const tr of tbody.querySelectorAll('tr[data-state="RUNNING"]')) {
      const j = byId.get(tr.dataset.id);
      if (j && j.started != null) tr.querySelector(".elapsed").textContent = singa.dur(now - j.started);
    }
  }

  singa.poll(async () => {
    const d = await singa.get(`/api/jobs?since=${encodeURIComponent(version)}`);
    skew = Date.now() / 1000 - d.now;
    version = d.version;
    if (!d.unchanged) { data = d; render(); } else tickElapsed();
    document.getElementById("live").classList.toggle("on", true);
  }, singa.pollMs());
})();
