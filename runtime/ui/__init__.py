"""`singa ui`: the web dashboard of the job registry (issue 18).

- `api`: the JSON views, built from the registry (`runtime.jobs.jobdb`) and
  the workspaces (metrics stream, logs, checkpoints);
- `app`: the Starlette application: pages (Jinja2 templates), the JSON API,
  the actions (kill, resume, resubmit: POST + token) and the access rules;
- `actions`: what the actions do (kill in a thread; resume and resubmit as
  a `singa submit` in a subprocess, from the job's own working directory);
- `describe_job`: validate's summary and the partitioned net as SVG, made in
  a subprocess (`python -m runtime.ui.describe_job`);
- `templates/`, `static/`: the pages, their scripts and uPlot (MIT, shipped
  here so that the dashboard works offline; see static/NOTICE).
"""
