// A job's page: its state, processes, attempts and checkpoints (polling
// /api/jobs/ID), its curves (the metrics stream, read on from the byte offset
// already seen), the servers' staleness, the net graph and validate's summary.
"use strict";
(() => {
  const root = document.getElementById("job");
  const id = root.dataset.job;
  const store = {}, charts = {};
  const hiddenPhases = new Set();
  let offset = 0, xmode = "step", job = null, metricsDone = false;
  const $ = (s) => document.getElementById(s);

  function fact(k, v) { return `<dt>${singa.esc(k)}</dt><dd>${v}</dd>`; }

  function renderJob(d) {
    job = d.job;
    $("job-state").textContent = job.state;
    $("job-state").className = `state st-${job.state}`;
    let reason = job.reason || "";
    if (job.state === "QUEUED") reason = `#${job.queue_position} in the queue` + (reason ? ` · ${reason}` : "");
    $("job-reason").textContent = reason;
    const elapsed = job.started != null ? (job.ended != null ? job.ended : d.now) - job.started : null;
    const hosts = [...new Set(job.hosts)].map((h) => `${h} (${job.hosts.filter((x) => x === h).length})`).join(", ");
    const prog = [`step ${singa.step(job.step, job.train_steps)}`];
    if (job.loss != null) prog.push(`loss ${singa.num(job.loss)}`);
    if (job.accuracy != null) prog.push(`accuracy ${singa.num(job.accuracy)}`);
    if (job.samples_per_s != null) prog.push(`${job.samples_per_s.toFixed(1)} samples/s`);
    let facts = fact("progress", singa.esc(prog.join(", "))) +
      fact("submitted", singa.ts(job.submitted)) + fact("started", singa.ts(job.started)) +
      fact("ended", singa.ts(job.ended)) + fact("elapsed", singa.dur(elapsed)) +
      fact("hosts", singa.esc(hosts || "-")) + fact("launcher", singa.esc(job.launcher || "-")) +
      fact("workspace", singa.esc(job.workspace || "-")) + fact("user", singa.esc(job.user || "-")) +
      fact("priority", String(job.priority)) +
      fact("attempts", `${job.attempts} (max restarts ${job.max_restarts})`);
    if (d.array) facts += fact("array", `<a href="/compare?array=${d.array.id}">${d.array.id}</a>[${job.array_index}]: ` +
      singa.esc(Object.entries(job.settings).map(([k, v]) => `${k}=${v}`).join(" ")));
    if (job.after && job.after.length) facts += fact("after", job.after.map(([p, m]) => `<a href="/jobs/${p}">${p}</a>:${m}`).join(", "));
    $("facts").innerHTML = facts;

    $("attempt").textContent = d.attempt != null ? `(attempt ${d.attempt})` : "";
    $("procs").querySelector("tbody").innerHTML = d.procs.length ? d.procs.map((p) =>
      `<tr data-procs="${p.procs_id}" data-state="${p.state}"><td>${p.procs_id}</td><td>${singa.esc(p.host || "-")}</td>` +
      `<td>${p.pid ?? "-"}</td><td>${singa.esc(p.role || "-")}</td>` +
      `<td><span class="state st-${p.state}">${p.state}</span></td><td>${singa.ago(p.heartbeat_age)}</td>` +
      `<td>${p.step ?? "-"}</td><td>${singa.esc(p.exit)}</td>` +
      `<td><a href="/jobs/${id}/log?proc=${p.procs_id}&attempt=${p.attempt}">log</a></td></tr>`).join("")
      : `<tr><td colspan="9" class="muted">no processes yet${job.state === "QUEUED" ? " (queued)" : ""}</td></tr>`;
    $("attempts").innerHTML = d.earlier_attempts.length ? "<h3>Earlier attempts</h3><ul>" +
      d.earlier_attempts.map((a) => `<li>attempt ${a.attempt}: ${singa.esc(a.summary)} ` +
        a.procs.map((p) => `<a href="/jobs/${id}/log?proc=${p.procs_id}&attempt=${a.attempt}">log ${p.procs_id}</a>`).join(" ") +
        "</li>").join("") + "</ul>" : "";
    $("checkpoints").innerHTML = d.checkpoints.length ? "<table class=\"ckpt\"><thead><tr><th>step</th><th>file</th><th>size</th><th>written</th></tr></thead><tbody>" +
      d.checkpoints.map((c) => `<tr><td>${c.step}</td><td>${singa.esc(c.file)}</td><td>${singa.bytes(c.bytes)}</td><td>${singa.ts(c.time)}</td></tr>`).join("") +
      "</tbody></table>" : "none";
    const active = !singa.TERMINAL.has(job.state);
    $("btn-kill").disabled = !active || !singa.token();
    $("btn-resume").disabled = active || !singa.token() || !d.checkpoints.length;
    $("btn-resubmit").disabled = active || !singa.token();
  }

  function renderCharts() {
    const names = singaCharts.metricNames(store);
    const box = $("charts");
    if (names.length) $("no-metrics")?.remove();
    for (const m of names) {
      if (!charts[m]) charts[m] = new singaCharts.Chart(box, m, {hiddenPhases});
      const series = Object.values(store[m]);
      // the servers' counters have no step: they are drawn against wall time
      const servers = series.every((s) => s.phase === "server");
      charts[m].update(series, servers ? "time" : xmode);
    }
  }

  function renderServers() {
    const mean = store.staleness_mean || {}, max = store.staleness_max || {}, upd = store.updates || {};
    const rows = [];
    for (const [k, s] of Object.entries(mean)) {
      if (s.phase !== "server") continue;
      const p = s.pts[s.pts.length - 1];
      const m = (max[k] || {pts: []}).pts.slice(-1)[0];
      const u = (upd[k] || {pts: []}).pts.slice(-1)[0];
      rows.push(`<tr><td>${singa.esc(s.label)}</td><td>${s.group}</td><td>${u ? u[2] : "-"}</td>` +
        `<td>${p[2].toFixed(3)}</td><td>${m ? m[2] : "-"}</td><td>${singa.ts(p[1])}</td></tr>`);
    }
    $("staleness-section").hidden = rows.length === 0;
    $("servers").querySelector("tbody").innerHTML = rows.join("");
  }

  async function pollMetrics() {
    for (let i = 0; i < 20; i++) {  // a long stream comes in several answers
      const d = await singa.get(`/api/jobs/${id}/metrics?offset=${offset}`);
      if (d.reset) { for (const k of Object.keys(store)) delete store[k]; }
      offset = d.offset;
      singaCharts.collect(d.records, store);
      if (!d.more) { metricsDone = d.terminal; break; }
    }
    renderCharts();
    renderServers();
  }

  singa.poll(async () => {
    renderJob(await singa.get(`/api/jobs/${id}`));
    if (!metricsDone) await pollMetrics();
    return true;
  }, singa.pollMs());

  for (const r of document.querySelectorAll('input[name="xmode"]')) r.addEventListener("change", () => {
    xmode = r.value; renderCharts();
  });
  for (const c of document.querySelectorAll('input[name="phase"]')) c.addEventListener("change", () => {
    if (c.checked) hiddenPhases.delete(c.value); else hiddenPhases.add(c.value);
    for (const ch of Object.values(charts)) ch.showPhases();
  });
  window.addEventListener("resize", () => { for (const ch of Object.values(charts)) ch.resize(); });

  for (const b of document.querySelectorAll("button[data-action]")) b.addEventListener("click", async () => {
    const what = b.dataset.action;
    if (what === "kill" && !window.confirm(`Kill job ${id}?`)) return;
    b.disabled = true;
    try {
      const r = await singa.post(`/jobs/${id}/${what}`);
      singa.toast(r.message);
      if (r.job && String(r.job) !== String(id)) setTimeout(() => { location.href = `/jobs/${r.job}`; }, 800);
    } catch (e) { singa.toast(`${what}: ${e.message}`, true); b.disabled = false; }
  });

  // validate's summary and the net (made once per job, in a subprocess)
  singa.get(`/api/jobs/${id}/summary`).then((d) => {
    $("validate").textContent = d.text || d.error || "";
    const g = $("graph");
    if (d.has_graph) {
      g.innerHTML = `<a href="/jobs/${id}/graph.svg" target="_blank"><img src="/jobs/${id}/graph.svg" alt="the partitioned net of job ${id}"></a>`;
      g.classList.remove("muted");
    } else g.textContent = d.error || "no graph";
  }).catch((e) => { $("validate").textContent = String(e.message); $("graph").textContent = ""; });
})();
