// A process's log, followed: /api/jobs/ID/log?offset=N returns the lines added
// since byte N (the first answer: the log's last 256 KiB).
"use strict";
(() => {
  const root = document.getElementById("logview");
  const pre = document.getElementById("log");
  const follow = document.getElementById("follow");
  const MAX_LINES = 20000;
  let offset = null, lines = 0;
  window.__log = {lines: 0, polls: 0};
  const base = `/api/jobs/${root.dataset.job}/log?proc=${root.dataset.proc}` +
    (root.dataset.attempt ? `&attempt=${root.dataset.attempt}` : "");

  function add(newLines, replace) {
    if (replace) { pre.textContent = ""; lines = 0; }
    if (!newLines.length) return;
    const atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
    const frag = document.createDocumentFragment();
    for (const l of newLines) {
      const span = document.createElement("span");
      span.textContent = l + "\n";
      if (l.startsWith("Test @") || l.startsWith("Validation @")) span.className = "test";
      else if (/error|Traceback|FAILED/.test(l)) span.className = "err";
      frag.appendChild(span);
    }
    pre.appendChild(frag);
    lines += newLines.length;
    while (lines > MAX_LINES && pre.firstChild) { pre.removeChild(pre.firstChild); lines -= 1; }
    window.__log.lines = lines;
    if (follow.checked && atBottom) window.scrollTo(0, document.body.scrollHeight);
  }

  singa.poll(async () => {
    const d = await singa.get(base + (offset == null ? "" : `&offset=${offset}`));
    window.__log.polls += 1;
    add(d.lines, d.replace);
    offset = d.offset;
    document.getElementById("job-state").textContent = d.job_state;
    document.getElementById("job-state").className = `state st-${d.job_state}`;
    document.getElementById("log-path").textContent = (d.path ? `${d.path} on ${d.host}` : "") +
      ` · procs ${d.procs_id} (${d.role}), attempt ${d.attempt}, ${d.state}` + (d.error ? ` · ${d.error}` : "") +
      (d.truncated ? " · showing the end of the log" : "");
    return !(d.terminal && !d.lines.length && !d.remote);
  }, parseInt(root.dataset.pollMs, 10) || 1000);
})();
