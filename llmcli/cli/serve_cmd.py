"""`llmcli serve`: an OpenAI-compatible HTTP server (see llmcli.server)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import BadInputError, LlmcliError
from .app import app
from .batch_cmd import RAY, RAY_ADDRESS, RAY_HELP
from .run_cmd import ACTIVATIONS, LOAD_OPTIONS, MODEL, check_load_options, option_groups


def _api_keys(key: str | None, key_file: Path | None) -> frozenset[str]:
    if key is not None and key_file is not None:
        raise BadInputError("give the API key with --api-key or --api-key-file, not both")
    if key is not None:
        if not key.strip():
            raise BadInputError("--api-key is empty")
        return frozenset([key.strip()])
    if key_file is None:
        return frozenset()
    try:
        lines = key_file.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise BadInputError(f"{key_file}: cannot read the API key file: {e.strerror}") from None
    except UnicodeDecodeError:
        raise BadInputError(f"{key_file}: the API key file is not UTF-8 text") from None
    keys = frozenset(line.strip() for line in lines if line.strip())
    if not keys:
        raise BadInputError(f"{key_file}: no API key in the file (one key per line)")
    return keys


@app.command()
@option_groups
def serve(
    model: Path = MODEL,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8080, "--port", help="Port to listen on (0: any free one, logged)."),
    parallel: int = typer.Option(1, "-np", "--parallel", help="Requests generated at once (slots)."),
    load: dict = LOAD_OPTIONS,
    activations: str = ACTIVATIONS,
    alias: str = typer.Option(None, "--alias", help="Model name clients see (default: the file name)."),
    api_key: str = typer.Option(None, "--api-key", help="Require this key (Authorization: Bearer KEY)."),
    api_key_file: Path = typer.Option(None, "--api-key-file",
                                      help="Require one of the keys in this file (one a line)."),
    cors_origins: list[str] = typer.Option([], "--cors-origins",
                                           help="Browser origins allowed to call the API (repeatable; * = any)."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds a generation may run before it is ended."),
    max_queue: int = typer.Option(None, "--max-queue",
                                  help="Requests that may wait for a slot; more get 503 (default: no limit)."),
    pooling: str = typer.Option(None, "--pooling",
                                help="Pooling for /v1/embeddings: mean, cls or last (default: the one the GGUF "
                                     "declares; a decoder model declares none: use mean)."),
    ray: bool = RAY,
    ray_address: str = RAY_ADDRESS,
    replicas: int = typer.Option(None, "--replicas", help="Replicas, each a server with its own model and slots "
                                                          "(default 1).", rich_help_panel=RAY_HELP),
    autoscale: str = typer.Option(None, "--autoscale", metavar="MIN,MAX",
                                  help="Scale between MIN and MAX replicas on ongoing requests (target: --parallel "
                                       "per replica).", rich_help_panel=RAY_HELP),
) -> None:
    """Serve the model over HTTP with OpenAI's API (chat, completions) and llama-server's endpoints."""
    from ..generation.pooling import check_pooling
    from ..server import ServerConfig, serve as run_server

    if not 0 <= port <= 65535:
        raise BadInputError(f"--port must be in 0..65535, got {port}")
    if parallel < 1:
        raise BadInputError(f"--parallel must be at least 1, got {parallel}")
    check_load_options(load["threads"], load["batch_size"], activations)
    if load["ctx_size"] is not None and load["ctx_size"] <= 0:
        raise BadInputError(f"--ctx-size must be positive, got {load['ctx_size']}")
    if not timeout > 0:
        raise BadInputError(f"--timeout must be positive, got {timeout}")
    if max_queue is not None and max_queue < 0:
        raise BadInputError(f"--max-queue must be >= 0, got {max_queue}")
    if pooling is not None:
        try:
            check_pooling(pooling)
        except LlmcliError as e:
            raise type(e)(f"--pooling: {e}") from None
    if model is not None and not model.is_file():
        raise BadInputError(f"{model}: no such model file")
    if not ray and (ray_address is not None or replicas is not None or autoscale is not None):
        raise BadInputError("--ray-address, --replicas and --autoscale apply to --ray")
    origins = tuple(o.strip() for item in cors_origins for o in item.split(",") if o.strip())
    config = ServerConfig(model=model, host=host, port=port, parallel=parallel, ctx_size=load["ctx_size"],
                          threads=load["threads"], batch_size=load["batch_size"], use_mmap=not load["no_mmap"],
                          mlock=load["mlock"], cache_type_k=load["cache_type_k"], cache_type_v=load["cache_type_v"],
                          prompt_activations=activations, alias=alias,
                          api_keys=_api_keys(api_key, api_key_file), cors_origins=origins, timeout=timeout,
                          max_queue=max_queue, pooling=pooling)
    if ray:
        from ..server.ray_serve import parse_autoscale, serve_on_ray

        serve_on_ray(config, ray_address, replicas, parse_autoscale(autoscale))
    else:
        run_server(config)
