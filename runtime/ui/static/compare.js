// Several jobs' curves overlaid (one metric, one phase at a time), and for a
// sweep (an array) the table of its jobs' final metrics, sortable by any column.
"use strict";
(() => {
  const root = document.getElementById("compare");
  const $ = (s) => document.getElementById(s);
  const stores = {}, offsets = {}, done = {};
  let jobs = [], chart = null, xmode = "step", table = null, sortKey = "rank", sortDir = 1;
  const q = new URLSearchParams({jobs: root.dataset.jobs || "", array: root.dataset.array || ""});
  if (!root.dataset.jobs && !root.dataset.array) return;

  function label(j) {
    const set = Object.entries(j.settings || {}).map(([k, v]) => `${k.split(".").pop()}=${v}`).join(" ");
    return `job ${j.id}` + (set ? ` ${set}` : ` ${j.name}`);
  }

  function metrics() {
    const all = {};
    for (const s of Object.values(stores)) for (const m of Object.keys(s)) all[m] = Object.assign(all[m] || {}, s[m]);
    return singaCharts.metricNames(all).filter((m) => !["staleness_mean", "staleness_max", "updates"].includes(m));
  }

  function draw() {
    const sel = $("metric"), names = metrics();
    const cur = sel.value;
    if (sel.options.length !== names.length) {
      sel.innerHTML = names.map((m) => `<option>${m}</option>`).join("");
      sel.value = names.includes(cur) ? cur : (names.includes("accuracy") ? "accuracy" : names[0] || "");
    }
    const metric = sel.value, phase = $("phase").value;
    if (!metric) return;
    $("no-metrics")?.remove();
    const series = [];
    for (const j of jobs) {
      const s = ((stores[j.id] || {})[metric] || {})[phase];
      if (s && s.pts.length) series.push({...s, label: label(j)});
    }
    if (!chart) chart = new singaCharts.Chart($("charts"), "compare", {relative: true});
    chart.title = `compare`;
    chart.update(series, xmode);
  }

  function renderTable() {
    if (!table) return;
    $("sweep").hidden = false;
    const cols = [["rank", "rank"], ["id", "job"], ["index", "index"], ["state", "state"],
      ...table.settings.map((s) => [`set:${s}`, s]), ["accuracy", "accuracy"], ["loss", "loss"],
      ["source", "from"]];
    const val = (r, k) => (k.startsWith("set:") ? r.settings[k.slice(4)] : r[k]);
    const rows = [...table.rows].sort((a, b) => {
      const x = val(a, sortKey), y = val(b, sortKey);
      if (x == null && y == null) return a.rank - b.rank;
      if (x == null) return 1;
      if (y == null) return -1;
      const c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y), undefined, {numeric: true});
      return c * sortDir || a.rank - b.rank;
    });
    const t = $("sweep-table");
    t.querySelector("thead").innerHTML = "<tr>" + cols.map(([k, n]) =>
      `<th data-sort="${singa.esc(k)}" class="${k === sortKey ? (sortDir > 0 ? "asc" : "desc") : ""}">${singa.esc(n)}</th>`).join("") + "</tr>";
    t.querySelector("tbody").innerHTML = rows.map((r) => `<tr data-id="${r.id}">` + cols.map(([k]) => {
      const v = val(r, k);
      if (k === "id") return `<td><a href="/jobs/${r.id}">${r.id}</a></td>`;
      if (k === "state") return `<td><span class="state st-${v}">${v}</span></td>`;
      if (k === "accuracy" || k === "loss") return `<td>${singa.num(v)}</td>`;
      return `<td>${singa.esc(v ?? "-")}</td>`;
    }).join("") + "</tr>").join("");
  }

  $("sweep-table").addEventListener("click", (ev) => {
    const th = ev.target.closest("th[data-sort]");
    if (!th) return;
    if (sortKey === th.dataset.sort) sortDir = -sortDir;
    else { sortKey = th.dataset.sort; sortDir = ["accuracy"].includes(sortKey) ? -1 : 1; }
    renderTable();
  });
  $("metric").addEventListener("change", draw);
  $("phase").addEventListener("change", draw);
  for (const r of document.querySelectorAll('input[name="xmode"]')) r.addEventListener("change", () => { xmode = r.value; draw(); });

  async function load(id) {
    for (let i = 0; i < 20; i++) {
      const d = await singa.get(`/api/jobs/${id}/metrics?offset=${offsets[id] || 0}`);
      if (d.reset) stores[id] = {};
      offsets[id] = d.offset;
      singaCharts.collect(d.records, (stores[id] = stores[id] || {}));
      if (!d.more) { done[id] = d.terminal; break; }
    }
  }

  singa.poll(async () => {
    const d = await singa.get(`/api/compare?${q}`);
    jobs = d.jobs;
    table = d.table;
    $("what").textContent = d.array ? `array ${d.array.id}: ${d.array.name}` : jobs.map((j) => j.id).join(", ");
    await Promise.all(jobs.filter((j) => !done[j.id]).map((j) => load(j.id)));
    draw();
    renderTable();
    window.__compare = {jobs: jobs.map((j) => j.id), sortKey, sortDir};
    return jobs.some((j) => !done[j.id]);
  }, singa.pollMs());
})();
