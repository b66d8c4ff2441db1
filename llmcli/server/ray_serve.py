"""`llmcli serve --ray`: the server's replicas on Ray Serve, behind one endpoint.

    Ray Serve proxy (HTTP, one port) ──route──► replica 1: llmcli's FastAPI app + its engine (-np slots)
                                      └──────► replica N: the same, its own model copy and KV cache

Each replica is a whole `llmcli serve`: the same ASGI app (`create_app`, OpenAI's routes, SSE
streaming passed through by the proxy as it is written) over its own engine thread and continuous
batching. Ray Serve routes each request to a replica with room (at most `max_ongoing_requests`
each: its slots plus its own queue), scales between `--autoscale MIN,MAX` replicas on ongoing
requests per replica (target: its slots), and starts a new replica when one dies. Requests still
waiting in Ray Serve's router go to the other replicas; those a dead replica was answering are not
failed by the proxy (Ray Serve 2.60): they wait until the client's timeout (or the proxy's
`request_timeout_s`, set to --timeout), and OpenAI's client then retries them (2 retries by default).

For `serve run` (or `serve.run(build_app({...}))`) the application is built from arguments:

    serve run llmcli.server.ray_serve:build_app model=/models/m.gguf parallel=4 replicas=2
    serve run llmcli.server.ray_serve:build_app model=/models/m.gguf autoscale=1,4 threads=2
"""

from __future__ import annotations

import signal
import threading
from dataclasses import replace
from pathlib import Path

from ..errors import BadInputError
from ..ray_support import import_ray
from .app import create_app
from .run import _setup_logging, log
from .state import ServerConfig, ServerState


class Replica:
    """One replica: the model loaded into a server state, then the app over it (Ray Serve calls
    `__serve_build_asgi_app__` after the constructor)."""

    def __init__(self, config: ServerConfig):
        self.state = ServerState(config)
        self.state.load()
        if self.state.load_error is not None:
            raise self.state.load_error

    def __serve_build_asgi_app__(self):
        return create_app(self.state)

    def __del__(self):
        if getattr(self, "state", None) is not None and self.state.llm is not None:
            self.state.llm.close()


def scaling(replicas: int | None, autoscale: tuple[int, int] | None, parallel: int) -> dict:
    """Ray Serve's deployment options for a fixed count or an autoscaling range."""
    if replicas is not None and autoscale is not None:
        raise BadInputError("give --replicas or --autoscale, not both")
    if autoscale is not None:
        low, high = autoscale
        if not 0 <= low <= high or high < 1:
            raise BadInputError(f"--autoscale MIN,MAX needs 0 <= MIN <= MAX and MAX >= 1, got {low},{high}")
        return {"autoscaling_config": {"min_replicas": low, "max_replicas": high,
                                       "target_ongoing_requests": parallel}}
    replicas = 1 if replicas is None else replicas
    if replicas < 1:
        raise BadInputError(f"--replicas must be at least 1, got {replicas}")
    return {"num_replicas": replicas}


def application(config: ServerConfig, replicas: int | None = None, autoscale: tuple[int, int] | None = None):
    """The Ray Serve application: `Replica` as an ingress deployment with those scaling options.
    Each replica reserves `config.threads` CPUs (default 1), its numba threads."""
    serve = import_ray("serve").serve
    options = scaling(replicas, autoscale, config.parallel)  # checked before finding the model
    threads = config.threads or 1
    if config.model is None:  # the demo model, resolved here so every replica loads the same file
        from ..demo import demo_model_path

        config = replace(config, model=Path(demo_model_path()))
    config = replace(config, threads=threads, model=Path(config.model).resolve())
    # a replica takes its slots' worth plus its own queue; beyond that the router holds requests,
    # so a replica that dies takes no more than these with it
    ongoing = config.parallel + (config.max_queue if config.max_queue is not None else config.parallel)
    deployment = serve.deployment(name="llmcli", max_ongoing_requests=ongoing,
                                  ray_actor_options={"num_cpus": threads},
                                  **options)(serve.ingress()(Replica))
    return deployment.bind(config)


def parse_autoscale(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        low, high = (int(part) for part in str(text).split(","))
    except ValueError:
        raise BadInputError(f"--autoscale must be MIN,MAX (two integers), got {text!r}") from None
    return low, high


def build_app(args: dict):
    """`serve run llmcli.server.ray_serve:build_app key=value ...`: model, parallel, threads, ctx_size,
    batch_size, alias, max_queue, timeout, replicas, autoscale (MIN,MAX)."""
    args = dict(args)
    replicas = int(args.pop("replicas")) if "replicas" in args else None
    autoscale = parse_autoscale(args.pop("autoscale", None))
    kinds = {"model": Path, "parallel": int, "threads": int, "ctx_size": int, "batch_size": int, "alias": str,
             "max_queue": int, "timeout": float, "pooling": str}
    unknown = sorted(set(args) - set(kinds))
    if unknown:
        raise BadInputError(f"unknown argument {unknown[0]!r} (arguments: {', '.join(kinds)}, replicas, autoscale)")
    config = ServerConfig(**{k: kinds[k](v) for k, v in args.items()})
    return application(config, replicas, autoscale)


def serve_on_ray(config: ServerConfig, address: str | None, replicas: int | None,
                 autoscale: tuple[int, int] | None) -> None:
    """`llmcli serve --ray`: join (or start) the cluster, run the application on config.host:port
    until Ctrl-C or SIGTERM, then delete it (and stop the cluster if this command started it)."""
    if config.port == 0:
        raise BadInputError("--port 0 does not apply to --ray: Ray Serve's proxy needs a port number")
    _setup_logging()
    ray = import_ray("serve")
    serve = ray.serve
    app = application(config, replicas, autoscale)
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    deployed = False
    try:
        # the proxy ends a request after --timeout (a generation cannot run longer): a request
        # on a replica that died is not failed by the proxy, it waits for this
        serve.start(http_options={"host": config.host, "port": config.port, "request_timeout_s": config.timeout})
        log.info("starting %s on Ray Serve (model loading in each replica)", scaling(replicas, autoscale,
                                                                                      config.parallel))
        deployed = True
        serve.run(app, name="llmcli", route_prefix="/")
        shown_host = f"[{config.host}]" if ":" in config.host else config.host
        log.info("listening on http://%s:%d (Ray Serve); ready", shown_host, config.port)
        while not stop.wait(1.0):
            pass
        log.info("stopping")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if deployed:
            serve.delete("llmcli")
        if started:
            serve.shutdown()
            ray.shutdown()
    log.info("stopped")
