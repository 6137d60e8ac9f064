"""The dashboard's web application (Starlette): pages, JSON API, actions.

Pages (Jinja2 templates; their scripts poll the JSON API every 2 s while
the page is visible, and draw the curves with uPlot):

    /                        the jobs table (?state=RUNNING,QUEUED filters)
    /jobs/<id>               a job: conf, validate's summary, processes,
                             curves, staleness, net graph, checkpoints, attempts
    /jobs/<id>/log           a process's log, followed (?proc=P&attempt=A)
    /compare                 curves of several jobs overlaid (?jobs=3,5-7), and
                             for a sweep (?array=N) its sortable table of final metrics
    /jobs/<id>/graph.svg     the partitioned net, drawn by Graphviz

JSON: /api/jobs, /api/jobs/<id>, /api/jobs/<id>/metrics?offset=,
/api/jobs/<id>/log?proc=&attempt=&offset=, /api/jobs/<id>/summary,
/api/compare?jobs=&array=.

Actions: POST /jobs/<id>/kill, /jobs/<id>/resume, /jobs/<id>/resubmit.

Access: every action needs the token `singa ui` printed, in the POST body
(form field `token`) or the `X-Singa-Token` header; never a cookie or the
query string, so another site cannot make a browser act (CSRF), and a GET
never changes anything. Without the token the dashboard is read-only. When
it listens on an address other than loopback (`reads_need_token`), every
page and API answer needs the token too: the `?token=` of the printed URL
sets a cookie (HttpOnly, SameSite=Strict) that later pages present. Pages
opened with the token carry it for their buttons. Nothing served holds a
job's secret (see api.py); the pages may not be framed (clickjacking).
"""
from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.errors import UserError
from runtime.ui import actions, api, describe_job

HERE = Path(__file__).resolve().parent
COOKIE = "singa_token"
HEADER = "x-singa-token"
#: how often the pages poll (ms); the jobs table, a job and its curves
POLL_MS = 2000
LOG_POLL_MS = 1000

SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
     b"script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),  # the token in a URL never leaves in a Referer
]
NO_STORE = [(b"cache-control", b"no-store")]  # pages and answers; not the static files


class Dashboard:
    """What the routes share: the registry, the token and the access rule."""

    def __init__(self, home: Path | None, token: str, reads_need_token: bool):
        self.registry = api.Registry(home)
        self.token = token
        self.reads_need_token = reads_need_token
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))

    def valid(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(str(given).encode(), self.token.encode())

    def reader_token(self, request: Request) -> bool:
        """True if this GET presents the token (query, header or cookie)."""
        return any(self.valid(t) for t in (request.query_params.get("token"),
                                           request.headers.get(HEADER),
                                           request.cookies.get(COOKIE)))


class Guard:
    """ASGI middleware: the security headers on every answer; with
    `reads_need_token`, a 403 for any request without the token (but the
    static files, which are the same for everyone)."""

    def __init__(self, app: ASGIApp, dash: Dashboard):
        self.app = app
        self.dash = dash

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        static = scope["path"].startswith("/static/")
        extra = SECURITY_HEADERS + ([] if static else NO_STORE)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        if self.dash.reads_need_token and not static:
            request = Request(scope)
            # a POST's own token is checked by the action; its body is not read here
            if request.method != "POST" and not self.dash.reader_token(request):
                resp = HTMLResponse(_NEED_TOKEN, status_code=403)
                await resp(scope, receive, send_with_headers)
                return
        await self.app(scope, receive, send_with_headers)


_NEED_TOKEN = """<!doctype html><meta charset="utf-8"><title>singa ui: token needed</title>
<body style="font-family:sans-serif;margin:3em"><h1>This dashboard needs its token</h1>
<p>singa ui listens on a non-loopback address, so every page asks for the token.
Open the URL that <code>singa ui</code> printed when it started
(<code>http://HOST:PORT/?token=...</code>).</p></body>"""


def _error(e: Exception, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": str(e)}, status_code=404 if isinstance(e, api.NotFound) else status)


def _int(request: Request, name: str, default: int | None = None) -> int | None:
    v = request.query_params.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise UserError(f"{name}={v!r}: expected a whole number") from None


def create_app(home: Path | None = None, token: str = "", reads_need_token: bool = False) -> Starlette:
    """The dashboard of the registry in `home` (default: $SINGA_HOME or ~/.singa)."""
    if not token:
        raise ValueError("the dashboard needs a token for its actions")
    dash = Dashboard(home, token, reads_need_token)
    reg = dash.registry

    def page(request: Request, name: str, **ctx: Any) -> Response:
        has = dash.reader_token(request)
        resp = dash.templates.TemplateResponse(request, name, {
            "token": dash.token if has else "", "poll_ms": POLL_MS, "log_poll_ms": LOG_POLL_MS,
            "home": str(reg.home), **ctx})
        if dash.valid(request.query_params.get("token")):
            resp.set_cookie(COOKIE, dash.token, httponly=True, samesite="strict", path="/")
        return resp

    def jobs_page(request: Request) -> Response:
        return page(request, "jobs.html", title="Jobs", states=list(api.jobdb.STATES),
                    selected=request.query_params.get("state", ""))

    def job_page(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            job = reg.job(job_id)
        except api.NotFound as e:
            return page(request, "missing.html", title="No such job", message=str(e))
        return page(request, "job.html", title=f"Job {job.id}: {job.name}", job=job)

    def log_page(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            job = reg.job(job_id)
            procs = reg.db().all_procs(job.id)
            attempt = _int(request, "attempt")
            proc = _int(request, "proc", 0)
        except UserError as e:
            return page(request, "missing.html", title="No such job", message=str(e))
        latest = max((p.attempt for p in procs), default=None)
        return page(request, "log.html", title=f"Job {job.id}: log", job=job, procs=procs,
                    attempt=attempt if attempt is not None else latest, proc=proc)

    def compare_page(request: Request) -> Response:
        return page(request, "compare.html", title="Compare",
                    ids=request.query_params.get("jobs", ""),
                    array=request.query_params.get("array", ""))

    def api_jobs(request: Request) -> Response:
        states = [s.strip().upper() for s in request.query_params.get("state", "").split(",")]
        try:
            return JSONResponse(api.jobs_view(reg, request.query_params.get("since"), states))
        except UserError as e:
            return _error(e)

    def api_job(request: Request) -> Response:
        try:
            return JSONResponse(api.job_view(reg, request.path_params["job_id"]))
        except UserError as e:
            return _error(e)

    def api_metrics(request: Request) -> Response:
        try:
            return JSONResponse(api.metrics_view(reg, request.path_params["job_id"],
                                                 _int(request, "offset", 0) or 0))
        except UserError as e:
            return _error(e)

    def api_log(request: Request) -> Response:
        try:
            return JSONResponse(api.log_view(reg, request.path_params["job_id"],
                                             _int(request, "proc", 0) or 0, _int(request, "attempt"),
                                             _int(request, "offset")))
        except UserError as e:
            return _error(e)

    def api_summary(request: Request) -> Response:
        try:
            d = describe_job.summarize(reg.job(request.path_params["job_id"]))
        except UserError as e:
            return _error(e)
        return JSONResponse({"text": d.get("text", ""), "error": d.get("error"),
                             "has_graph": bool(d.get("svg"))})

    def graph_svg(request: Request) -> Response:
        try:
            d = describe_job.summarize(reg.job(request.path_params["job_id"]))
        except UserError as e:
            return _error(e)
        if not d.get("svg"):
            return JSONResponse({"error": d.get("error") or "no graph"}, status_code=404)
        return Response(d["svg"], media_type="image/svg+xml")

    def api_compare(request: Request) -> Response:
        try:
            return JSONResponse(api.compare_view(reg, api.parse_ids(request.query_params.get("jobs")),
                                                 _int(request, "array")))
        except UserError as e:
            return _error(e)

    async def _token_of(request: Request) -> str | None:
        given = request.headers.get(HEADER)
        if given is None and request.headers.get("content-type", "").startswith(
                ("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            v = form.get("token")
            given = v if isinstance(v, str) else None
        return given

    def action(kind: str) -> Any:
        async def handle(request: Request) -> Response:
            if not dash.valid(await _token_of(request)):
                return JSONResponse({"error": "this action needs the token that singa ui printed "
                                              "(form field 'token' or header X-Singa-Token)"},
                                    status_code=403)
            job_id = request.path_params["job_id"]
            try:
                if kind == "kill":
                    state = await run_in_threadpool(actions.kill, reg.home, job_id)
                    return JSONResponse({"ok": True, "job": job_id, "state": state,
                                         "message": f"job {job_id} {state}"})
                job = await run_in_threadpool(reg.job, job_id)
                new = await run_in_threadpool(actions.resubmit, reg.home, job, kind == "resume")
            except UserError as e:
                return _error(e, 409)
            return JSONResponse({"ok": True, "job": new, "message":
                                 f"submitted job {new} ({'resumed' if kind == 'resume' else 'again'} "
                                 f"from job {job_id})"})
        return handle

    routes = [
        Route("/", jobs_page),
        Route("/jobs/{job_id:int}", job_page),
        Route("/jobs/{job_id:int}/log", log_page),
        Route("/jobs/{job_id:int}/graph.svg", graph_svg),
        Route("/compare", compare_page),
        Route("/api/jobs", api_jobs),
        Route("/api/jobs/{job_id:int}", api_job),
        Route("/api/jobs/{job_id:int}/metrics", api_metrics),
        Route("/api/jobs/{job_id:int}/log", api_log),
        Route("/api/jobs/{job_id:int}/summary", api_summary),
        Route("/api/compare", api_compare),
        *(Route(f"/jobs/{{job_id:int}}/{k}", action(k), methods=["POST"])
          for k in ("kill", "resume", "resubmit")),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(Guard, dash=dash)
    app.state.dashboard = dash
    return app
