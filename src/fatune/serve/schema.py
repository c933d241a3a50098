"""What ``POST /v1/chat/completions`` accepts, and the server's limits on it.

The request is OpenAI's chat-completions body. Honoured: ``model``, ``messages`` (roles system, user,
assistant, plus OpenAI's newer ``developer`` as system; content a string or a list of
``{"type": "text", "text": ...}`` parts, joined), ``temperature`` (0-2; 0 is greedy, absent is 1 as in
OpenAI's API), ``top_p`` (0-1], ``max_tokens`` / ``max_completion_tokens``, ``stop`` (a string or up to 4),
``seed``, ``n`` (1 only), ``stream`` and ``stream_options.include_usage``.

Fields that change nothing when left at their neutral value are accepted (``user``, ``metadata``,
``store: false``, ``parallel_tool_calls``, zero penalties, an empty ``logit_bias``,
``response_format: {"type": "text"}``); set to anything else they are refused with a 400 that names the
field, because silently ignoring them would return something the client did not ask for. Fields this
version does not know are accepted and logged at debug level: clients send new ones all the time.

Limits are never applied by clamping: a request over one gets a 400 (413 for the body size) whose
message names the limit and the ``fatune serve`` flag that raises it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """Per-request limits (defaults in parentheses; each has a ``fatune serve`` flag)."""

    max_request_bytes: int = 65536  # the JSON body (64 KiB)
    max_messages: int = 64
    max_tokens: int = 1024  # the largest max_tokens a request may ask for
    default_max_tokens: int = 256  # when a request gives none
    max_message_chars: int = 16000  # characters of one message's content


FLAGS = {"max_request_bytes": "--max-request-bytes", "max_messages": "--max-messages",
         "max_tokens": "--max-tokens-limit", "max_message_chars": "--max-message-chars"}


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` with an OpenAI-style error body."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 type: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.type, self.code = message, param, status, type, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def over_limit(what: str, value: int, limit_name: str, limit: int, status: int = 400, param: str | None = None):
    return RequestError(f"{what} is {value}, over this server's limit of {limit}; start `fatune serve` with "
                        f"{FLAGS[limit_name]} N to raise it", param, status, code="limit_exceeded")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # "name" and other per-message extras are ignored
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[Message]
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    # torch.manual_seed takes -2**63 .. 2**64-1; a larger seed passed validation and failed in the worker,
    # a 500 after the request was queued (found by the schema fuzz test, tests/fuzz/test_fuzz_serve.py).
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # accepted when neutral, refused otherwise (see ``_refused``)
    user: str | None = None
    metadata: dict | None = None
    store: bool | None = None
    parallel_tool_calls: bool | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict | None = None
    response_format: dict | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list | None = None
    functions: list | None = None
    tool_choice: Any = None
    function_call: Any = None

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, stop):
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError("at most 4 stop strings")
        return stop

    @property
    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def sampling(self) -> tuple[bool, float | None, float | None]:
        """``(do_sample, temperature, top_p)``: temperature 0 is greedy; absent temperature/top_p are 1."""
        temperature = 1.0 if self.temperature is None else self.temperature
        if temperature == 0:
            return False, None, None
        return True, temperature, 1.0 if self.top_p is None else self.top_p

    def conversation(self) -> list[dict]:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


def _refused(request: ChatRequest) -> RequestError | None:
    """The first field set to something this server does not do, as a 400 naming it."""
    def no(param: str, what: str) -> RequestError:
        return RequestError(f"{param}: {what} is not supported by fatune serve", param, code="unsupported_parameter")

    if request.n not in (None, 1):
        return no("n", "more than one choice (n > 1)")
    if request.logprobs:
        return no("logprobs", "log probabilities")
    if request.top_logprobs:
        return no("top_logprobs", "log probabilities")
    for field in ("tools", "functions"):
        if getattr(request, field):
            return no(field, "tool calling")
    for field in ("tool_choice", "function_call"):
        value = getattr(request, field)
        if value not in (None, "none"):
            return no(field, "tool calling")
    for field in ("presence_penalty", "frequency_penalty"):
        if getattr(request, field):
            return no(field, "a non-zero penalty")
    if request.logit_bias:
        return no("logit_bias", "a logit bias")
    if request.store:
        return no("store", "storing completions")
    if request.response_format and request.response_format.get("type", "text") != "text":
        return no("response_format", f"response_format {request.response_format.get('type')!r} (only 'text')")
    return None


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


def _field_path(loc) -> str:
    """``messages[2].role`` from pydantic's ``("messages", 2, "role")``, without the union-member tags pydantic
    inserts (``str``, ``list[TextPart]``, ``function-after[...]``), which name types, not fields."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.isidentifier() and part not in _TYPE_TAGS:
            path += f".{part}" if path else part
    return path


def parse_chat_request(payload: Any, limits: Limits = Limits()) -> tuple[ChatRequest, int]:
    """Validate a decoded JSON body: ``(request, max_tokens)`` or a ``RequestError`` naming the field or limit."""
    if not isinstance(payload, dict):
        raise RequestError("the request body must be a JSON object")
    try:
        request = ChatRequest.model_validate(payload)
    except ValidationError as error:
        first = error.errors()[0]
        field = _field_path(first["loc"]) or None
        message = first["msg"].removeprefix("Value error, ")
        raise RequestError(f"{field}: {message}" if field else message, field) from None
    unknown = sorted(request.model_extra or {})
    if unknown:
        log.debug("chat request: ignoring unknown fields %s", ", ".join(unknown))
    refused = _refused(request)
    if refused:
        raise refused
    if not request.messages:
        raise RequestError("messages: at least one message is needed", "messages")
    if len(request.messages) > limits.max_messages:
        raise over_limit("the number of messages", len(request.messages), "max_messages", limits.max_messages,
                         param="messages")
    for i, message in enumerate(request.messages):
        if len(message.text()) > limits.max_message_chars:
            raise over_limit(f"messages[{i}].content's length in characters", len(message.text()),
                             "max_message_chars", limits.max_message_chars, param=f"messages[{i}].content")
    validate_conversation(request.conversation())
    if request.max_tokens is not None and request.max_completion_tokens is not None \
            and request.max_tokens != request.max_completion_tokens:
        raise RequestError("max_tokens and max_completion_tokens differ; give one", "max_tokens")
    asked = request.max_completion_tokens or request.max_tokens
    field = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
    if asked is not None and asked > limits.max_tokens:
        raise over_limit(field, asked, "max_tokens", limits.max_tokens, param=field)
    return request, asked or min(limits.default_max_tokens, limits.max_tokens)


def validate_conversation(messages: list[dict]) -> None:
    """fatune's own rules for a prompt (``data.validate``): an optional system message first, then turns
    alternating user/assistant, ending with the user's; no empty content."""
    from fatune.data.validate import parse_record
    from fatune.errors import DataError

    try:
        parse_record({"messages": messages}, "request", None, purpose="prompt")
    except DataError as error:
        raise RequestError(f"{error.field}: {error.message}" if error.field else error.message,
                           error.field) from None


async def read_json_body(request, limits: Limits = Limits()):
    """The decoded JSON body of a Starlette ``request``: refused (413) before reading when its declared size
    is over the limit, and while reading when a chunked one grows over it."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_request_bytes:
        raise over_limit("the request body's size in bytes", int(declared), "max_request_bytes",
                         limits.max_request_bytes, status=413)
    body = b""
    async for chunk in request.stream():  # a chunked body has no declared size: count as it comes
        body += chunk
        if len(body) > limits.max_request_bytes:
            raise over_limit("the request body's size in bytes", len(body), "max_request_bytes",
                             limits.max_request_bytes, status=413)
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise RequestError("the request body is not valid JSON") from None
    except RecursionError:  # "[[[[..." ~1000 deep fits in 64 KiB and was a 500 (found by fuzzing)
        raise RequestError("the request body is not valid JSON: arrays or objects nested too deeply") from None
