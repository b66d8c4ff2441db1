"""Running the server: bind, load the model on a thread while /health answers 503, serve with
uvicorn until Ctrl-C or SIGTERM, then stop cleanly.

On a stop signal the engine is asked to stop at once (after its current step): requests still
generating end with an error event (streams) or a 503 (the others), uvicorn closes the listening
socket and waits for those responses to go out, and the process exits with code 0.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sys
import threading

import uvicorn

from ..errors import BadInputError
from .app import create_app
from .state import ServerConfig, ServerState

log = logging.getLogger("llmcli.server")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState):
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig, frame) -> None:
        if not self.should_exit:
            log.info("stopping (%s)", signal.Signals(sig).name)
        self.state.stop_engine()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self):
        """uvicorn's, without raising the signal again once stopped: a stop asked for by Ctrl-C or
        SIGTERM is a clean exit (code 0), not a KeyboardInterrupt or a death by signal."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a taken port is one clear error (and port 0 works)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise BadInputError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise BadInputError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("llmcli.server")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def serve(config: ServerConfig) -> None:
    """Serve until stopped; a model that fails to load stops the server and its error is raised here."""
    from ..engine.jit import on_compile_start

    _setup_logging()
    compiling = []

    def compile_notice() -> None:  # whenever a kernel's first use on this machine compiles it
        if not compiling:
            compiling.append(True)
            log.info("compiling kernels (their first use on this machine; cached for later runs)")

    on_compile_start(compile_notice)
    sock = _listen(config.host, config.port)
    host, port = sock.getsockname()[:2]
    state = ServerState(config)
    uv_config = uvicorn.Config(create_app(state), log_level="warning", access_log=False, lifespan="off",
                               timeout_graceful_shutdown=10, server_header=False)
    server = _Server(uv_config, state)

    def load_then_report() -> None:
        state.load()
        if state.load_error is not None:
            server.should_exit = True
        else:
            log.info("model %s loaded: %d slot(s) x %d tokens of context; ready", state.model_id,
                     config.parallel, state.llm.n_ctx)

    shown_host = f"[{host}]" if ":" in host else host
    log.info("listening on http://%s:%d (model loading)", shown_host, port)
    threading.Thread(target=load_then_report, name="llmcli-load", daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        if state.llm is not None:
            state.llm.close()
    if state.load_error is not None:
        raise state.load_error
    log.info("stopped")
