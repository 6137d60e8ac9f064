"""`singa ui [--port 8080] [--host 127.0.0.1] [--token T]`: the web dashboard.

Serves the registry ($SINGA_HOME/jobs.db) and the jobs' workspaces as web
pages (runtime/ui): the jobs table, each job's page with its curves, its
logs, and the compare page. Prints the URL with the token, as Jupyter does:
without the token the dashboard is read-only; kill, resume and resubmit
need it (POST). It listens on 127.0.0.1 unless told otherwise; on any other
address every page asks for the token, and it says so. `--port 0` picks a
free port and prints it. Ctrl-C stops it.
"""
from __future__ import annotations

import ipaddress
import secrets
import socket
import sys

import click

from runtime.errors import UserError


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: one the OS picks)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        hint = "; try another --port, or --port 0 for a free one" if port else ""
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}{hint}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


@click.command("ui")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port to listen on; 0 picks a free one (printed).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Any other than loopback makes every page ask "
                   "for the token.")
@click.option("--token", default=None, metavar="T",
              help="The token for actions (kill, resume, resubmit); default: a new random one.")
def ui(port: int, host: str, token: str | None) -> None:
    """Serve the web dashboard: jobs, curves, logs, compare; prints its URL."""
    try:
        import uvicorn

        from runtime.ui.app import create_app
    except ModuleNotFoundError as e:
        raise UserError(f"singa ui needs {e.name}: pip install starlette uvicorn jinja2 "
                        "python-multipart (or reinstall singa)") from None
    from runtime.jobs import jobdb

    token = token or secrets.token_urlsafe(24)
    local = _loopback(host)
    sock = _listen(host, port)
    real_port = sock.getsockname()[1]
    shown = host if ":" not in host else f"[{host}]"
    app = create_app(jobdb.home(), token, reads_need_token=not local)
    click.echo(f"singa ui: the dashboard of {jobdb.show_path(jobdb.home() / 'jobs.db')}")
    click.echo(f"    http://{shown}:{real_port}/?token={token}")
    if local:
        click.echo("Read-only without the token; kill, resume and resubmit need it "
                   "(open the URL above).")
    else:
        click.echo(f"Listening on {host}, not loopback: every page asks for the token; open the "
                   "URL above (with this host's name or address).")
    click.echo("Ctrl-C stops it.")
    sys.stdout.flush()
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
