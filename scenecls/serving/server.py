"""Running the service: the listening socket, uvicorn, and a graceful stop.

The socket is bound here, before uvicorn starts, so that a port in use is one clear line (and ``--port
0`` can say which port it got). On SIGTERM or Ctrl-C uvicorn stops accepting connections, lets the
requests in flight finish, and then the batcher answers every image it had accepted; the process then
exits 0: a stop that was asked for is not a failure.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
from collections.abc import Callable

from scenecls.command_options import ServeOptions
from scenecls.errors import SceneclsError, UsageError
from scenecls.serving.model import ServedModel

EXTRA = "pip install 'scenecls[serve]'"


def check_installed() -> None:
    """A one-line error naming the extra when the service's packages are missing."""
    import importlib.util

    missing = [name for name in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(name) is None]
    if missing:
        raise SceneclsError(f"scenecls serve needs {', '.join(missing)}: {EXTRA}")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or a one-line error (a port in use, an address not here)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart right after a stop
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} on {host} is in use: choose another with --port") from None
        if exc.errno == errno.EACCES:
            raise UsageError(f"port {port} needs more privileges: choose one above 1023") from None
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def serve(
    served: ServedModel,
    options: ServeOptions,
    *,
    say: Callable[[str, str], None],
    sock: socket.socket | None = None,
    log_requests: bool = True,
) -> None:
    """Answer requests until SIGTERM or Ctrl-C; ``say`` gets the sentence that tells where, and the URL.
    ``sock`` is the listening socket when the caller bound it already (:func:`bind`, before the model
    loads, so that a port in use is said at once)."""
    import uvicorn

    from scenecls.serving.app import create_app

    sock = sock or bind(options.host, options.port)
    _log_to_stderr(log_requests)
    config = uvicorn.Config(
        create_app(served, options),
        log_config=None,
        access_log=False,  # the app logs one line per request itself
        log_level="warning",
        timeout_keep_alive=5,
        timeout_graceful_shutdown=max(30.0, options.client_timeout),
        lifespan="on",
    )
    server = _server(config)
    url = url_of(sock)
    name = served.facts.get("run") or served.path.name
    say(f"Serving {name} ({served.runtime.kind}) on {url} (API docs at {url}/docs); Ctrl-C stops it", url)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        raise SceneclsError("the server did not start (see the lines above)")


def _server(config):
    """uvicorn's server, which by default raises SIGTERM again after its graceful stop (so that the
    process dies of the signal); a stop that was asked for and went well exits 0 here instead."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list) and not self.force_exit:
                captured.clear()

    return GracefulServer(config)


def _log_to_stderr(log_requests: bool) -> None:
    log = logging.getLogger("scenecls.serve")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(logging.INFO if log_requests else logging.WARNING)
    log.propagate = False
