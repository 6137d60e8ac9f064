// Curves with uPlot: the records of a metrics stream (runtime/jobs/metrics.py)
// turned into one chart per metric, a line per phase and worker group (or per
// server, for the servers' staleness and update counts). uPlot draws on a
// canvas; its legend shows the values under the cursor and hides a line when
// clicked. window.__plots[title] holds each chart's labels and data (tests).
"use strict";
const singaCharts = (() => {
  const META = new Set(["time", "step", "phase", "group", "worker", "server"]);
  const EXTRA = ["lr", "samples_per_s"];
  const SERVER = ["staleness_mean", "staleness_max", "updates"];
  const PHASES = ["train", "validation", "test"];
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
                  "#17becf", "#7f7f7f", "#bcbd22"];
  window.__plots = window.__plots || {};

  // Store: metric -> key -> {label, phase, group, pts: [[step, time, value]]}
  function collect(records, store, label) {
    for (const r of records) {
      const phase = r.phase;
      if (typeof r.time !== "number") continue;
      const group = r.group || 0;
      let key, name, x;
      if (phase === "server") {
        key = `server ${r.server}`; name = `server ${r.server}, updates of group ${group}`;
        x = typeof r.updates === "number" ? r.updates : null;
        key += ` g${group}`;
      } else if (PHASES.includes(phase) && typeof r.step === "number") {
        key = phase + (group ? ` g${group}` : ""); name = phase + (group ? ` (group ${group})` : "");
        x = r.step;
      } else continue;
      if (label) { key = `${label} ${key}`; name = `${label} ${name}`; }
      for (const [m, v] of Object.entries(r)) {
        if (META.has(m) || typeof v !== "number" || !isFinite(v)) continue;
        const series = (store[m] = store[m] || {});
        const s = (series[key] = series[key] || {label: name, phase, group, pts: []});
        s.pts.push([x, r.time, v]);
      }
    }
  }

  function metricNames(store) {
    const names = Object.keys(store);
    const isServer = (m) => Object.values(store[m]).every((s) => s.phase === "server");
    const net = names.filter((m) => !EXTRA.includes(m) && !isServer(m));
    const first = ["loss", "accuracy"].filter((m) => net.includes(m));
    return [...first, ...net.filter((m) => !first.includes(m)).sort(),
            ...EXTRA.filter((m) => names.includes(m)), ...SERVER.filter((m) => names.includes(m) && isServer(m))];
  }

  // [xs, ys...] on the union of the series' x values (uPlot's aligned data).
  function align(series, xmode, relative) {
    const xi = xmode === "time" ? 1 : 0;
    const maps = series.map((s) => {
      const t0 = relative ? Math.min(...s.pts.map((p) => p[1])) : 0;
      const m = new Map();
      for (const p of s.pts) {
        let x = p[xi];
        if (x == null) continue;
        if (xi === 1 && relative) x -= t0;
        m.set(x, p[2]);
      }
      return m;
    });
    const xs = [...new Set(maps.flatMap((m) => [...m.keys()]))].sort((a, b) => a - b);
    return [xs, ...maps.map((m) => xs.map((x) => (m.has(x) ? m.get(x) : null)))];
  }

  class Chart {
    constructor(parent, title, opts) {
      this.title = title; this.opts = opts || {};
      this.el = document.createElement("div");
      this.el.className = "chart"; this.el.dataset.metric = title;
      parent.appendChild(this.el);
      this.u = null; this.labels = null; this.hidden = new Set();
    }
    update(series, xmode) {
      const data = align(series, xmode, this.opts.relative);
      const labels = series.map((s) => s.label).join("|") + "|" + xmode;
      if (this.u && labels === this.labels) this.u.setData(data);
      else {
        if (this.u) this.u.destroy();
        this.labels = labels;
        const timeAxis = xmode === "time" && !this.opts.relative;
        this.u = new uPlot({
          title: this.title, width: Math.max(320, this.el.clientWidth || 480), height: 230,
          scales: {x: {time: timeAxis}},
          series: [{label: xmode === "time" ? (timeAxis ? "time" : "seconds") : "step",
                    value: timeAxis ? "{YYYY}-{MM}-{DD} {HH}:{mm}:{ss}" : undefined},
                   ...series.map((s, i) => ({
                     label: s.label, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true,
                     show: this.visible(s), phase: s.phase,
                     points: {show: s.phase !== "train" || s.pts.length < 40, size: 5},
                     value: (u, v) => (v == null ? "-" : Math.abs(v) >= 1000 || v === Math.round(v) ? String(v) : v.toPrecision(4)),
                   }))],
          axes: [{}, {size: 60}],
          legend: {live: true},
        }, data, this.el);
      }
      this.el.dataset.points = String(data.slice(1).reduce((n, ys) => n + ys.filter((y) => y != null).length, 0));
      window.__plots[this.title] = {labels: series.map((s) => s.label), data: this.u.data,
                                    points: parseInt(this.el.dataset.points, 10), xmode};
    }
    visible(s) { return !(this.opts.hiddenPhases && this.opts.hiddenPhases.has(s.phase)); }
    showPhases() {
      if (!this.u) return;
      this.u.series.forEach((s, i) => { if (i > 0) this.u.setSeries(i, {show: this.visible(s)}); });
    }
    resize() { if (this.u) this.u.setSize({width: Math.max(320, this.el.clientWidth), height: 230}); }
    destroy() { if (this.u) this.u.destroy(); this.el.remove(); delete window.__plots[this.title]; }
  }

  return {collect, metricNames, align, Chart, PHASES};
})();
