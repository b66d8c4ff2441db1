"""`llmcli serve`: an OpenAI-compatible HTTP service over the generation layer.

    from llmcli.server import ServerConfig, serve
    serve(ServerConfig(model=Path("model.gguf"), port=8080, parallel=4))

`app` builds the ASGI app (endpoints, errors), `gateway` checks keys and body sizes and logs each
request, `schemas` checks request bodies, `responses` writes OpenAI's shapes, `stream` bridges the
engine thread's events into the event loop, `metrics` counts for /metrics, `run` binds and serves
with uvicorn. The server computes nothing: the engine thread of `llmcli.generation` does the work.
"""

from .run import serve
from .state import ServerConfig, ServerState

__all__ = ["ServerConfig", "ServerState", "serve"]
