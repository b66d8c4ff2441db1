"""What a running server holds: its settings, the model (loaded on a thread of its own while the
server already answers /health with 503), the engine, and the metrics."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.kv_cache import DEFAULT_KV_TYPE
from ..engine.prompt_activations import DEFAULT_PROMPT_ACTIVATIONS
from .errors import ApiError
from .metrics import Metrics


@dataclass
class ServerConfig:
    model: Path | None = None  # None: the demo model
    host: str = "127.0.0.1"
    port: int = 8080  # 0: any free port (the one taken is logged)
    parallel: int = 1
    ctx_size: int | None = None
    threads: int | None = None
    batch_size: int = 512
    use_mmap: bool = True  # False: --no-mmap
    mlock: bool = False
    cache_type_k: str = DEFAULT_KV_TYPE
    cache_type_v: str = DEFAULT_KV_TYPE
    prompt_activations: str = DEFAULT_PROMPT_ACTIVATIONS  # Transformer.set_prompt_activations
    alias: str | None = None
    api_keys: frozenset[str] = frozenset()  # empty: no key needed
    cors_origins: tuple[str, ...] = ()
    timeout: float = 600.0  # seconds a generation may run (llama-server's --timeout default)
    max_queue: int | None = None
    pooling: str | None = None  # embeddings' pooling (mean, cls, last); None: the model's own
    max_body_bytes: int = 8 * 1024 * 1024
    sse_ping_interval: float = 10.0  # seconds of silence before a keep-alive comment


@dataclass
class ServerState:
    config: ServerConfig
    metrics: Metrics = field(default_factory=Metrics)
    llm: object | None = None  # an llmcli.api.LLM once loaded
    engine: object | None = None  # its Engine
    model_path: Path | None = None
    load_error: BaseException | None = None
    loaded: threading.Event = field(default_factory=threading.Event)  # set when loading ended, either way

    def load(self) -> None:
        """Load the model and start its engine (on a thread: the server answers meanwhile)."""
        from ..api import load

        try:
            c = self.config
            if c.model is None:
                from ..demo import demo_model_path

                self.model_path = Path(demo_model_path())
            else:
                self.model_path = c.model
            llm = load(self.model_path, threads=c.threads, ctx_size=c.ctx_size, batch_size=c.batch_size,
                       parallel=c.parallel, max_queue=c.max_queue, use_mmap=c.use_mmap, mlock=c.mlock,
                       cache_type_k=c.cache_type_k, cache_type_v=c.cache_type_v,
                       prompt_activations=c.prompt_activations)
            self.engine = llm.engine()
            self.llm = llm  # last: from here on the server is ready
        except BaseException as error:  # reported by the serve command, which then stops the server
            self.load_error = error
        finally:
            self.loaded.set()

    def ready(self):
        """The loaded LLM, or a 503 while it loads."""
        if self.llm is None:
            raise ApiError(503, "Loading model", type="unavailable_error")
        return self.llm

    @property
    def model_id(self) -> str:
        """The name clients see: --alias, else the model's file name."""
        if self.config.alias:
            return self.config.alias
        return self.model_path.name if self.model_path is not None else "loading"

    def stop_engine(self) -> None:
        """Ask the engine to stop after its current step: running requests end with an error event."""
        if self.engine is not None:
            self.engine.close(timeout=0)
