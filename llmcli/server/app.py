"""The ASGI app: OpenAI's endpoints and llama-server's, thin over the generation layer.

The event loop parses and checks requests, submits them to the engine thread and moves the bytes of
its answers; tokenizing and rendering chat templates run on worker threads; the engine thread does
the model's work. Every error is an OpenAI error object (see errors.py).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from pydantic import ValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import BadInputError, LlmcliError
from ..generation import Request as GenerationRequest
from ..generation import SamplingParams, finish_reason
from ..generation.grammar.tokens import TokenIndex
from ..generation.pooling import l2_normalize
from ..generation.tools import ArgumentsPart, CallHead, ReplyReader
from .errors import ApiError
from .gateway import Gateway
from .responses import (ChatShapes, TextShapes, TokenTexts, arguments_delta, call_head_delta, embedding_list,
                        tool_call_deltas, usage)
from .schemas import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest, EmbeddingRequest,
                      NativeCompletionRequest, TokenizeRequest)
from .state import ServerState
from .stream import SSE_DONE, SSE_PING, EngineStream, error_of, sse

log = logging.getLogger("llmcli.server")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no buffering in proxies
CHAT_PAGE = Path(__file__).with_name("chat.html")  # a person's way to try the model in a browser


def create_app(state: ServerState) -> FastAPI:
    config = state.config
    # no /docs or /openapi.json: the API is OpenAI's, documented there; unknown paths are plain 404s
    app = FastAPI(title="llmcli", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    app.add_middleware(Gateway, api_keys=config.api_keys, max_body_bytes=config.max_body_bytes)
    if config.cors_origins:  # added last: outermost, so preflights and 401s carry CORS headers too
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["*"],
                           allow_headers=["*"])
    _add_error_handlers(app)

    @app.get("/health")
    @app.get("/v1/health")
    async def health():
        state.ready()
        return {"status": "ok"}

    @app.get("/v1/models")
    @app.get("/models")
    async def models():
        llm = state.ready()
        hp = llm.model.hp
        return {"object": "list", "data": [{
            "id": state.model_id, "object": "model", "created": int(state.model_path.stat().st_mtime),
            "owned_by": "llmcli",
            "meta": {"n_vocab": llm.n_vocab, "n_ctx_train": hp.n_ctx_train, "n_embd": hp.n_embd,
                     "n_params": sum(t.n_elements for t in llm.model.reader.tensors),
                     "size": state.model_path.stat().st_size},
        }]}

    @app.get("/props")
    async def props():
        llm = state.ready()
        defaults = SamplingParams()
        template = llm.chat_template
        return {
            "default_generation_settings": {"n_ctx": llm.n_ctx, "params": {
                "n_predict": -1, "temperature": defaults.temp, "top_k": defaults.top_k, "top_p": defaults.top_p,
                "min_p": defaults.min_p, "repeat_penalty": defaults.repeat_penalty,
                "repeat_last_n": defaults.repeat_last_n, "presence_penalty": defaults.presence_penalty,
                "frequency_penalty": defaults.frequency_penalty, "seed": -1, "stop": [], "max_tokens": -1,
                "ignore_eos": False, "n_probs": 0,
                "samplers": ["penalties", "top_k", "top_p", "min_p", "temperature"]}},
            "total_slots": llm.scheduler.n_parallel,
            "model_path": str(state.model_path),
            "model_alias": state.model_id,
            "chat_template": template.source,
            "chat_template_origin": template.origin,
            "modalities": {"vision": False, "audio": False},
            "build_info": f"llmcli {__version__}",
        }

    @app.get("/metrics")
    async def metrics():
        state.ready()
        return PlainTextResponse(state.metrics.render(state.engine), media_type="text/plain; version=0.0.4")

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest = Depends(json_body(TokenizeRequest))):
        llm = state.ready()
        ids = await run_in_threadpool(llm.tokenize, body.content, body.add_special, body.parse_special)
        if not body.with_pieces:
            return {"tokens": ids}
        tokens = []
        for token in ids:
            piece = llm.tokenizer.token_to_piece(token)
            try:
                tokens.append({"id": token, "piece": piece.decode("utf-8")})
            except UnicodeDecodeError:  # part of a character: its bytes, as llama-server gives them
                tokens.append({"id": token, "piece": list(piece)})
        return {"tokens": tokens}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest = Depends(json_body(DetokenizeRequest))):
        llm = state.ready()
        bad = [t for t in body.tokens if not 0 <= t < llm.n_vocab]
        if bad:
            raise ApiError(400, f"token id {bad[0]} is outside the vocabulary of {llm.n_vocab} tokens")
        return {"content": await run_in_threadpool(llm.detokenize, body.tokens)}

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def chat_completions(request: Request,
                               body: ChatCompletionRequest = Depends(json_body(ChatCompletionRequest))):
        llm = state.ready()
        messages = [m.template_message() for m in body.messages]
        chat = await run_in_threadpool(llm.prepare_chat, messages, body.tools, body.tool_choice,
                                       body.parallel_tool_calls)
        fields = _request_fields(body, body.logprobs_count())
        grammar = fields.pop("grammar")
        if grammar is not None:
            if body.tools:  # the tools' call syntax is a grammar of its own (llama-server refuses this too)
                raise BadInputError("tools cannot be combined with response_format, grammar or json_schema")
            chat = replace(chat, grammar=grammar)
        stream = await _submit(state, chat.request(**fields))
        shapes = ChatShapes(state.model_id)
        if body.stream:
            return StreamingResponse(_chat_events(stream, shapes, body, chat.reader(), TokenTexts(llm.tokenizer),
                                                  request, config.sse_ping_interval),
                                     media_type="text/event-stream", headers=SSE_HEADERS)
        text, logprobs, stop_reason = await _collect(stream, request)
        reply = chat.tool_chat.read(text)
        texts = TokenTexts(llm.tokenizer)
        entries = None if logprobs is None else [texts.chat_entry(lp) for lp in logprobs]
        return shapes.completion(reply.content, finish_reason(stop_reason, bool(reply.tool_calls)), entries,
                                 _usage(stream, request), reply.tool_calls)

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest = Depends(json_body(CompletionRequest))):
        llm = state.ready()
        prompt = body.prompt
        if isinstance(prompt, str):  # text gets BOS as the model asks; token ids are taken as they are
            prompt = await run_in_threadpool(llm.tokenize, prompt, True, True)
        stream = await _submit(state, GenerationRequest(prompt, **_request_fields(body, body.logprobs_count())))
        shapes = TextShapes(state.model_id)
        texts = TokenTexts(llm.tokenizer)
        if body.stream:
            return StreamingResponse(_text_events(stream, shapes, body, texts, request, config.sse_ping_interval),
                                     media_type="text/event-stream", headers=SSE_HEADERS)
        text, logprobs, stop_reason = await _collect(stream, request)
        return shapes.completion(text, finish_reason(stop_reason),
                                 None if logprobs is None else texts.completion_logprobs(logprobs),
                                 _usage(stream, request))

    @app.post("/completion")
    async def native_completion(request: Request,
                                body: NativeCompletionRequest = Depends(json_body(NativeCompletionRequest))):
        """llama-server's own completion endpoint: `content` out (streamed: one object per piece,
        the last with `stop: true`), `n_predict`, `grammar`, `json_schema`."""
        llm = state.ready()
        prompt = body.prompt
        if isinstance(prompt, str):
            prompt = await run_in_threadpool(llm.tokenize, prompt, True, True)
        stream = await _submit(state, GenerationRequest(prompt, **_request_fields(body, None)))
        if body.stream:
            return StreamingResponse(_native_events(stream, request, config.sse_ping_interval),
                                     media_type="text/event-stream", headers=SSE_HEADERS)
        text, _, reason = await _collect(stream, request)
        return _native_final(stream, request, text, reason)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request, body: EmbeddingRequest = Depends(json_body(EmbeddingRequest))):
        llm = state.ready()
        pooling = llm.pooling(config.pooling)  # no pooling declared nor --pooling: a 400 saying how
        n_embd = llm.model.hp.n_embd
        if body.dimensions is not None and body.dimensions != n_embd:
            raise ApiError(400, f"'dimensions' must be the model's embedding size ({n_embd}) if given: "
                                f"this server does not shorten embeddings")
        prompts = await run_in_threadpool(lambda: [llm.tokenize(x, True, True) if isinstance(x, str) else x
                                                   for x in body.input])
        vectors = await _embed_all(state, prompts, pooling, request)
        n_tokens = sum(len(p) for p in prompts)
        request.state.tokens = (n_tokens, 0)  # for the access log line
        return embedding_list([l2_normalize(v) for v in vectors], state.model_id, n_tokens, body.encoding_format)

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return HTMLResponse(CHAT_PAGE.read_text(encoding="utf-8"))

    return app


# -- requests ----------------------------------------------------------------------------------


def json_body(schema):
    """A dependency parsing the body as JSON into `schema`, whatever the Content-Type says (as
    llama-server does: `curl -d` sends form encoding), strictly; failures are 400s."""
    async def parse(request: Request):
        try:
            return schema.model_validate_json(await request.body())
        except ValidationError as error:
            raise ApiError(400, _validation_message(error)) from None

    return parse


# -- generation --------------------------------------------------------------------------------


def _request_fields(body, logprobs: int | None) -> dict:
    """The generation Request's fields a request body gives (all but the prompt)."""
    return dict(max_tokens=body.token_limit(), params=body.sampling_params(), stop=body.stop_strings,
                ignore_eos=body.ignore_eos, cache_prompt=body.cache_prompt, logprobs=logprobs,
                grammar=body.output_grammar())


async def _submit(state: ServerState, request: GenerationRequest) -> EngineStream:
    if request.grammar is not None:  # the vocabulary's sorted pieces: built once (a second), off the event loop
        await run_in_threadpool(TokenIndex.of, state.llm.tokenizer)
    return EngineStream(state.engine, request, state.config.timeout,
                        on_done=lambda seq: state.metrics.add(seq.timings))


async def _embed_all(state: ServerState, prompts: list[list[int]], pooling: str, request: Request) -> list:
    """Each prompt's pooled embedding, at most `parallel` of them submitted at a time (the queue
    stays fair to other requests); a client that goes away cancels what is left."""
    slots = asyncio.Semaphore(state.llm.scheduler.n_parallel)
    streams: list[EngineStream] = []
    gone = False

    def stop_all() -> None:
        nonlocal gone
        gone = True
        for stream in streams:
            stream.close()

    async def one(prompt: list[int]):
        async with slots:
            if gone:
                return None
            stream = EngineStream(state.engine, GenerationRequest(prompt, pooling=pooling), state.config.timeout,
                                  on_done=lambda seq: state.metrics.add(seq.timings))
            streams.append(stream)
            reason = None
            async for event in stream.events():
                if event.done and event.error is not None:
                    raise error_of(event)
                reason = event.stop_reason
            if reason == "timeout":
                raise ApiError(503, f"the embedding took longer than --timeout ({state.config.timeout:g} s)")
            return stream.seq.embedding if reason == "embedded" else None

    watcher = _watch_disconnect(request, stop_all)
    try:
        vectors = await asyncio.gather(*(one(p) for p in prompts))
    finally:
        watcher.cancel()
        stop_all()
    if any(v is None for v in vectors):
        raise ApiError(499, "the client went away", type="cancelled")
    return vectors


def _usage(stream: EngineStream, request: Request) -> dict:
    completion = stream.completion_tokens()
    request.state.tokens = (stream.prompt_tokens, completion)  # for the access log line
    return usage(stream.prompt_tokens, completion, stream.cached_tokens())


async def _collect(stream: EngineStream, request: Request):
    """Run a generation to its end: (text, logprobs or None, stop reason). A client that goes
    away meanwhile cancels it."""
    watcher = _watch_disconnect(request, stream.close)
    pieces, logprobs = [], []
    try:
        async for event in stream.events():
            if event.done and event.error is not None:
                raise error_of(event)
            pieces.append(event.text)
            if event.logprob is not None:
                logprobs.append(event.logprob)
            if event.done:
                stop_reason = event.stop_reason
    finally:
        watcher.cancel()
        stream.close()
    asked = stream.handle.seq.request.logprobs is not None
    return "".join(pieces), logprobs if asked else None, stop_reason


# llama-server's stop_type for our stop reasons
NATIVE_STOP_TYPES = {"eos": "eos", "stop": "word", "length": "limit", "context": "limit", "timeout": "limit"}


def _native_final(stream: EngineStream, request: Request, text: str, reason: str) -> dict:
    """llama-server's last /completion object: the text and how the generation went."""
    seq = stream.seq
    _usage(stream, request)
    return {"content": text, "tokens": [], "stop": True, "stop_type": NATIVE_STOP_TYPES.get(reason, "none"),
            "tokens_predicted": len(seq.tokens), "tokens_evaluated": stream.prompt_tokens,
            "tokens_cached": stream.cached_tokens(), "truncated": False, "timings": seq.timings.to_dict()}


def _native_events(stream: EngineStream, request: Request, ping_interval: float):
    """SSE for /completion: {"content": piece, "stop": false} per piece, then the final object."""
    pieces = []

    def on_event(event) -> list[bytes]:
        out = []
        if event.text:
            pieces.append(event.text)
            out.append(sse({"content": event.text, "tokens": [], "stop": False}))
        if event.done:
            out.append(sse(_native_final(stream, request, "".join(pieces), event.stop_reason) | {"content": ""}))
        return out

    return _sse_events(stream, ping_interval, on_event)


async def _sse_events(stream: EngineStream, ping_interval: float, on_event, first=()):
    """The one SSE loop of every streaming endpoint: `first`, then per engine event the bytes
    on_event(event) gives, a ping when the engine is quiet for ping_interval, a failed generation
    as its error object (the last event); the stream is closed however it ends (a client that goes
    away ends the generation)."""
    try:
        for chunk in first:
            yield chunk
        async for event in stream.events(ping_interval):
            if event is None:
                yield SSE_PING
            elif event.done and event.error is not None:
                yield sse(error_of(event).body())
                return
            else:
                for chunk in on_event(event):
                    yield chunk
    except Exception as error:  # the headers are out: the failure can only be told as an event
        yield _stream_failure(error)
    finally:
        stream.close()


def _openai_end(stream: EngineStream, shapes, request: Request, with_usage: bool) -> list[bytes]:
    """What ends an OpenAI stream after the finish-reason chunk: the usage chunk if asked, [DONE]."""
    counts = _usage(stream, request)  # also the access log's token counts, asked or not
    return ([sse(shapes.usage_chunk(counts))] if with_usage else []) + [SSE_DONE]


def _watch_disconnect(request: Request, on_gone) -> asyncio.Task:
    """A task that calls on_gone() if the client disconnects (cancel it once the answer is ready)."""
    async def watch():
        while (await request.receive())["type"] != "http.disconnect":
            pass
        on_gone()

    return asyncio.create_task(watch())


def _chat_events(stream: EngineStream, shapes: ChatShapes, body: ChatCompletionRequest, reader: ReplyReader,
                 texts: TokenTexts, request: Request, ping_interval: float):
    """SSE for a chat completion: the role first, then content and tool call deltas as the reader
    hands them over (each chunk with the logprobs of the tokens since the last one), the finish
    reason, the usage chunk if asked, [DONE]. A call the reader announces (an enforced reply) goes
    out as its head, then its arguments fragment by fragment as they come; a call handed over whole
    as its head and all its arguments at once."""
    with_usage = body.include_usage
    pending: list[dict] = []
    n_heads = n_calls = 0  # calls whose head went out; calls finished

    def chunks(items) -> list[bytes]:
        nonlocal pending, n_heads, n_calls
        out = []
        for item in items:
            if isinstance(item, str):
                deltas = [{"content": item}]
            elif isinstance(item, CallHead):
                deltas = [call_head_delta(item.index, item.id, item.name)]
                n_heads += 1
            elif isinstance(item, ArgumentsPart):
                deltas = [arguments_delta(item.index, item.text)]
            else:  # a finished call: whole now if it was not announced (else it has all gone out)
                deltas = tool_call_deltas(n_calls, item) if n_heads == n_calls else []
                n_heads = n_calls = n_calls + 1
            for delta in deltas:
                out.append(sse(shapes.chunk(delta, None, pending or None, with_usage_field=with_usage)))
                pending = []
        return out

    def on_event(event) -> list[bytes]:
        if event.logprob is not None:
            pending.append(texts.chat_entry(event.logprob))
        out = chunks(reader.feed(event.text) if event.text else [])
        if event.done:
            out += chunks(reader.finish())
            finish = finish_reason(event.stop_reason, bool(reader.tool_calls))
            out.append(sse(shapes.chunk({}, finish, pending or None, with_usage_field=with_usage)))
            out += _openai_end(stream, shapes, request, with_usage)
        return out

    role = sse(shapes.chunk({"role": "assistant", "content": ""}, with_usage_field=with_usage))
    return _sse_events(stream, ping_interval, on_event, first=[role])


def _text_events(stream: EngineStream, shapes: TextShapes, body: CompletionRequest, texts: TokenTexts,
                 request: Request, ping_interval: float):
    """SSE for a text completion: text deltas (with their tokens' logprobs), the finish reason,
    the usage chunk if asked, [DONE]."""
    with_usage = body.include_usage
    offset = 0  # characters of completion text sent, for logprobs' text_offset
    pending = []

    def logprobs_of(lps):
        nonlocal offset
        if not lps:
            return None
        out = texts.completion_logprobs(lps, offset)
        offset += sum(len(t) for t in out["tokens"])
        return out

    def on_event(event) -> list[bytes]:
        nonlocal pending
        if event.logprob is not None:
            pending.append(event.logprob)
        if event.done:
            finish = finish_reason(event.stop_reason)
            return ([sse(shapes.chunk(event.text, finish, logprobs_of(pending), with_usage_field=with_usage))]
                    + _openai_end(stream, shapes, request, with_usage))
        if not event.text:
            return []
        chunk = sse(shapes.chunk(event.text, None, logprobs_of(pending), with_usage_field=with_usage))
        pending = []
        return [chunk]

    return _sse_events(stream, ping_interval, on_event)


def _stream_failure(error: Exception) -> bytes:
    log.exception("a stream failed")
    return sse(ApiError(500, f"internal error: {type(error).__name__}: {error}").body())


# -- errors ------------------------------------------------------------------------------------


def _validation_message(error: ValidationError) -> str:
    first = error.errors()[0]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}"
    if not first.get("loc") and first.get("type") == "model_type":
        return "the request body must be a JSON object"
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    message = first["msg"].removeprefix("Value error, ")
    return f"{'.'.join(loc)}: {message}" if loc else message


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(LlmcliError)
    async def bad_input(request: Request, error: LlmcliError):
        return JSONResponse(ApiError(400, str(error)).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        if error.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif error.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(error.detail)
        return JSONResponse(ApiError(error.status_code, message).body(), status_code=error.status_code,
                            headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(ApiError(500, f"internal error: {type(error).__name__}: {error}").body(), status_code=500)
