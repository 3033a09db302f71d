"""A scripted stand-in for the Anthropic Messages API, for end-to-end tests.

Stdlib only (``http.server`` + ``threading``).  It listens on 127.0.0.1 on a
free port, answers ``POST /v1/messages`` (SSE when ``"stream": true``, plain
JSON otherwise) and everything else the Claude Code CLI calls with harmless
minimal JSON, and records every request it receives.

What the "model" says is decided by a *policy*: a callable that receives a
:class:`Request` and returns the next assistant message as

* a ``str`` (one text block), or
* a ``dict`` content block (``text(...)`` / ``tool_use(...)``), or
* a ``list`` of such blocks.

``stop_reason`` is ``"tool_use"`` when the message holds a tool_use block,
otherwise ``"end_turn"``.

:class:`DelegationScript` is the policy for the usual flow::

    main agent  --(Task/Agent tool_use, subagent_type=<agent>)-->  subagent
    subagent    --(Bash tool_use, one per command ... then text)-->  main
    main agent  --(final text)

It is stateless: every decision is derived from the conversation in the
request, so client retries are harmless.

Usage::

    script = DelegationScript(agent="model-expert",
                              agent_marker="<a line of the agent body>",
                              commands=["python scripts/foo.py --help"])
    with FakeAnthropic(script) as api:
        ... run claude with ANTHROPIC_BASE_URL=api.base_url ...
        api.tool_calls("Bash")  # -> [ToolCall(name, input, result, is_error), ...]
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Optional, Union

__all__ = [
    "FakeAnthropic",
    "Request",
    "ToolCall",
    "DelegationScript",
    "is_side_request",
    "default_side_reply",
    "agent_id",
    "text",
    "tool_use",
    "block_text",
    "DELEGATION_TOOL_NAMES",
]

DELEGATION_TOOL_NAMES = ("Agent", "Task")

Block = dict
Reply = Union[str, Block, list]
Policy = Callable[["Request"], Reply]

_ids = itertools.count(1)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):04d}{uuid.uuid4().hex[:20]}"


def text(s: str) -> Block:
    """An assistant text block."""
    return {"type": "text", "text": s}


def tool_use(name: str, input: dict, id: Optional[str] = None) -> Block:
    """An assistant tool_use block (an id is generated when not given)."""
    return {"type": "tool_use", "id": id or _new_id("toolu"), "name": name, "input": input}


def block_text(content: Any) -> str:
    """Flatten a message/tool_result ``content`` (str or list of blocks) to text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    parts = []
    for b in content:
        if isinstance(b, str):
            parts.append(b)
        elif isinstance(b, dict):
            if b.get("type") == "text":
                parts.append(b.get("text", ""))
            elif b.get("type") == "tool_result":
                parts.append(block_text(b.get("content")))
            elif "text" in b:
                parts.append(str(b["text"]))
    return "\n".join(parts)


# --------------------------------------------------------------------------
# Recorded requests
# --------------------------------------------------------------------------


@dataclass
class Request:
    """One HTTP request the server received."""

    method: str
    path: str
    headers: dict
    body: Any  # parsed JSON (dict) when possible, else raw str
    time: float = field(default_factory=time.time)
    kind: str = ""  # set by the policy: "main" / "subagent" / "side" / ...
    reply: Any = None  # the content blocks we answered with (messages only)

    # -- convenience accessors for /v1/messages bodies ----------------------
    @property
    def is_messages(self) -> bool:
        return self.method == "POST" and self.path.split("?")[0].rstrip("/") == "/v1/messages"

    @property
    def system_text(self) -> str:
        if not isinstance(self.body, dict):
            return ""
        return block_text(self.body.get("system"))

    @property
    def messages(self) -> list:
        if not isinstance(self.body, dict):
            return []
        return self.body.get("messages") or []

    @property
    def tools(self) -> list:
        if not isinstance(self.body, dict):
            return []
        return self.body.get("tools") or []

    @property
    def tool_names(self) -> list[str]:
        return [t.get("name", "") for t in self.tools if isinstance(t, dict)]

    @property
    def first_user_text(self) -> str:
        for m in self.messages:
            if m.get("role") == "user":
                return block_text(m.get("content"))
        return ""

    @property
    def all_user_text(self) -> str:
        return "\n".join(block_text(m.get("content")) for m in self.messages if m.get("role") == "user")

    def tool_uses(self) -> list[Block]:
        """All tool_use blocks in the assistant turns of the conversation."""
        out = []
        for m in self.messages:
            if m.get("role") == "assistant" and isinstance(m.get("content"), list):
                out += [b for b in m["content"] if isinstance(b, dict) and b.get("type") == "tool_use"]
        return out

    def tool_results(self) -> list[Block]:
        """All tool_result blocks in the user turns of the conversation."""
        out = []
        for m in self.messages:
            if m.get("role") == "user" and isinstance(m.get("content"), list):
                out += [b for b in m["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]
        return out

    def last_tool_results(self) -> list[Block]:
        """tool_result blocks of the last user message (empty if it has none)."""
        if not self.messages:
            return []
        m = self.messages[-1]
        if m.get("role") != "user" or not isinstance(m.get("content"), list):
            return []
        return [b for b in m["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]


# Phrases of Claude Code's refusals.  In -p mode a Bash command that no allow
# rule covers comes back as the error "This command requires approval";
# commands touching paths outside the project are "... was blocked. For
# security, Claude Code may only ...".
_DENIAL_MARKERS = (
    "requires approval", "permission", "denied", "not allowed", "haven't granted",
    "was blocked",
)


@dataclass
class ToolCall:
    """A tool_use paired with the tool_result the client sent back."""

    name: str
    input: dict
    id: str
    result: Optional[str]  # None if no result came back (yet)
    is_error: bool
    kind: str  # kind of the conversation it happened in ("main", "subagent", ...)

    @property
    def denied(self) -> bool:
        """True when the tool_result reads like a permission refusal."""
        r = (self.result or "").lower()
        return self.is_error and any(m in r for m in _DENIAL_MARKERS)


# --------------------------------------------------------------------------
# Policies
# --------------------------------------------------------------------------


def is_side_request(req: Request) -> bool:
    """Requests that are not an agent turn: no tools offered (title
    generation, topic detection, quota probes, summaries, ...)."""
    return not req.tools


def default_side_reply(req: Request) -> str:
    """A harmless answer to a side request.  Session-title generation asks
    for ``{"title": ...}`` JSON; anything else gets a short text."""
    system = req.system_text
    if '"title"' in system or ("title" in system.lower() and "json" in system.lower()):
        return '{"title": "E2E test session"}'
    if "isNewTopic" in system:
        return '{"isNewTopic": false, "title": null}'
    return "OK"


def agent_id(req: Request) -> Optional[str]:
    """The ``x-claude-code-agent-id`` header Claude Code puts on subagent requests."""
    for k, v in req.headers.items():
        if k.lower() == "x-claude-code-agent-id":
            return v
    return None


class DelegationScript:
    """Policy: main agent delegates to ``agent``, which runs ``commands`` with
    the Bash tool one at a time, then both answer with text.

    * ``agent``: the subagent_type to pass to the Task/Agent tool.
    * ``agent_marker``: text that occurs in the subagent's system prompt (a
      line of the agent's markdown body).  A request whose system prompt
      contains it is the subagent's.
    * ``commands``: shell commands the subagent runs, in order.  Each item is
      a string or a dict of Bash tool input (``{"command": ..., "timeout": ...}``).
    * ``delegate_prompt``: prompt passed to the subagent; a callable receiving
      the main agent's first request may be given instead (default: the main
      agent's first user text, i.e. the expanded slash command).
    * ``subagent_final`` / ``main_final``: final texts.  ``subagent_final``
      may be a callable ``(req) -> str`` (e.g. to echo the tool outputs).
    * ``side_reply``: answer to side requests (no tools); str or callable.
    """

    def __init__(
        self,
        agent: str,
        agent_marker: str,
        commands: Iterable[Union[str, dict]],
        *,
        delegate_prompt: Union[str, Callable[[Request], str], None] = None,
        description: str = "Delegate to the specialist agent",
        subagent_final: Union[str, Callable[[Request], str]] = "SUBAGENT DONE",
        main_final: Union[str, Callable[[Request], str]] = "MAIN DONE",
        side_reply: Union[str, Callable[[Request], Reply]] = default_side_reply,
        bash_description: str = "run a command",
    ):
        self.agent = agent
        self.agent_marker = agent_marker
        self.commands = [c if isinstance(c, dict) else {"command": c} for c in commands]
        self.delegate_prompt = delegate_prompt
        self.description = description
        self.subagent_final = subagent_final
        self.main_final = main_final
        self.side_reply = side_reply
        self.bash_description = bash_description

    # -- classification ------------------------------------------------------
    def classify(self, req: Request) -> str:
        """``"side"`` (no tools), ``"subagent"`` (system prompt holds the
        marker), ``"other_agent"`` (another subagent: agent-id header but no
        marker), ``"main"`` (offers the delegation tool) or ``"other"``."""
        if is_side_request(req):
            return "side"
        if self.agent_marker and self.agent_marker in req.system_text:
            return "subagent"
        if agent_id(req) is not None:
            return "other_agent"
        if any(n in req.tool_names for n in DELEGATION_TOOL_NAMES):
            return "main"
        return "other"

    @staticmethod
    def delegation_tool(req: Request) -> Optional[str]:
        for n in DELEGATION_TOOL_NAMES:
            if n in req.tool_names:
                return n
        return None

    # -- decisions -------------------------------------------------------------
    def __call__(self, req: Request) -> Reply:
        kind = self.classify(req)
        req.kind = kind
        if kind == "side":
            return self.side_reply(req) if callable(self.side_reply) else self.side_reply
        if kind == "subagent":
            return self._subagent(req)
        if kind == "main":
            return self._main(req)
        return "I have nothing to do."

    def _main(self, req: Request) -> Reply:
        tool = self.delegation_tool(req)
        delegated = [u for u in req.tool_uses() if u.get("name") in DELEGATION_TOOL_NAMES]
        if not delegated:
            if callable(self.delegate_prompt):
                prompt = self.delegate_prompt(req)
            elif self.delegate_prompt is not None:
                prompt = self.delegate_prompt
            else:
                prompt = req.first_user_text
            return [
                text(f"Delegating to the {self.agent} agent."),
                tool_use(tool, {
                    "description": self.description,
                    "prompt": prompt,
                    "subagent_type": self.agent,
                }),
            ]
        return self.main_final(req) if callable(self.main_final) else self.main_final

    def _subagent(self, req: Request) -> Reply:
        done = [u for u in req.tool_uses() if u.get("name") == "Bash"]
        i = len(done)
        if i < len(self.commands):
            inp = {"description": self.bash_description, **self.commands[i]}
            return tool_use("Bash", inp)
        return self.subagent_final(req) if callable(self.subagent_final) else self.subagent_final


# --------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------


def _usage(in_tokens: int = 10, out_tokens: int = 10) -> dict:
    return {
        "input_tokens": in_tokens,
        "output_tokens": out_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _normalize(reply: Reply) -> list[Block]:
    if reply is None:
        return [text("")]
    if isinstance(reply, str):
        return [text(reply)]
    if isinstance(reply, dict):
        return [reply]
    return list(reply)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format, *args):  # silence stderr logging
        pass

    # -- helpers -------------------------------------------------------------
    def _read_body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")

    def _send_json(self, obj: Any, status: int = 200) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", _new_id("req"))
        self.end_headers()
        self.wfile.write(data)

    def _record(self, body: Any) -> Request:
        req = Request(self.command, self.path, dict(self.headers.items()), body)
        with self.server.fake.lock:
            self.server.fake.requests.append(req)
        return req

    # -- verbs -----------------------------------------------------------------
    def do_HEAD(self):
        self._record(None)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        self._record(None)
        path = self.path.split("?")[0]
        if path.startswith("/v1/models"):
            self._send_json({"data": [], "has_more": False, "first_id": None, "last_id": None})
        else:
            self._send_json({})

    def do_POST(self):
        body = self._read_body()
        req = self._record(body)
        path = self.path.split("?")[0].rstrip("/")
        if path == "/v1/messages":
            self._messages(req)
        elif path == "/v1/messages/count_tokens":
            self._send_json({"input_tokens": 100})
        else:
            self._send_json({})

    do_PUT = do_POST
    do_PATCH = do_POST

    def do_DELETE(self):
        self._record(None)
        self._send_json({})

    # -- /v1/messages ------------------------------------------------------------
    def _messages(self, req: Request) -> None:
        fake = self.server.fake
        body = req.body if isinstance(req.body, dict) else {}
        try:
            blocks = _normalize(fake.policy(req))
        except Exception as e:  # a broken policy must not hang the client
            fake.errors.append(traceback.format_exc())
            blocks = [text(f"fake_anthropic policy error: {e!r}")]
        # a policy that hands out the same tool_use block twice gets a fresh id
        with fake.lock:
            for k, b in enumerate(blocks):
                if b.get("type") == "tool_use":
                    if b.get("id") in fake.issued_ids or not b.get("id"):
                        blocks[k] = b = {**b, "id": _new_id("toolu")}
                    fake.issued_ids.add(b["id"])
        req.reply = blocks
        model = body.get("model") or "claude-fake"
        stop = "tool_use" if any(b.get("type") == "tool_use" for b in blocks) else "end_turn"
        msg_id = _new_id("msg")
        if body.get("stream"):
            self._stream(msg_id, model, blocks, stop)
        else:
            self._send_json({
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": blocks,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": _usage(),
            })

    def _stream(self, msg_id: str, model: str, blocks: list, stop: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.send_header("request-id", _new_id("req"))
        self.end_headers()
        self.close_connection = True

        def ev(name: str, data: dict) -> None:
            self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

        ev("message_start", {"type": "message_start", "message": {
            "id": msg_id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": _usage(out_tokens=1),
        }})
        for i, b in enumerate(blocks):
            if b.get("type") == "tool_use":
                ev("content_block_start", {"type": "content_block_start", "index": i, "content_block": {
                    "type": "tool_use", "id": b["id"], "name": b["name"], "input": {}}})
                js = json.dumps(b.get("input") or {})
                # two chunks, to exercise the client's partial-JSON accumulation
                half = len(js) // 2
                for part in (js[:half], js[half:]):
                    ev("content_block_delta", {"type": "content_block_delta", "index": i,
                                               "delta": {"type": "input_json_delta", "partial_json": part}})
            elif b.get("type") == "text":
                ev("content_block_start", {"type": "content_block_start", "index": i,
                                           "content_block": {"type": "text", "text": ""}})
                ev("content_block_delta", {"type": "content_block_delta", "index": i,
                                           "delta": {"type": "text_delta", "text": b.get("text", "")}})
            else:
                raise ValueError(f"unsupported block type {b.get('type')!r}")
            ev("content_block_stop", {"type": "content_block_stop", "index": i})
        ev("message_delta", {"type": "message_delta",
                             "delta": {"stop_reason": stop, "stop_sequence": None},
                             "usage": {"output_tokens": 10}})
        ev("message_stop", {"type": "message_stop"})
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: "FakeAnthropic"


class FakeAnthropic:
    """The fake API server.  Use as a context manager, or ``start()``/``stop()``.

    ``max_lifetime`` (seconds): the server shuts itself down after this long
    even if nobody calls ``stop()``.
    """

    def __init__(self, policy: Policy, *, host: str = "127.0.0.1", port: int = 0,
                 max_lifetime: float = 600.0):
        self.policy = policy
        self.host = host
        self.port = port
        self.max_lifetime = max_lifetime
        self.requests: list[Request] = []
        self.errors: list[str] = []  # tracebacks of policy exceptions
        self.issued_ids: set[str] = set()
        self.lock = threading.Lock()
        self._httpd: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self._timer: Optional[threading.Timer] = None

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> "FakeAnthropic":
        self._httpd = _Server((self.host, self.port), _Handler)
        self._httpd.fake = self
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="fake-anthropic", daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.max_lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    def __enter__(self) -> "FakeAnthropic":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- inspection ------------------------------------------------------------
    def snapshot(self) -> list[Request]:
        with self.lock:
            return list(self.requests)

    def message_requests(self, kind: Optional[str] = None) -> list[Request]:
        """Recorded ``POST /v1/messages`` requests (optionally of one kind)."""
        return [r for r in self.snapshot() if r.is_messages and (kind is None or r.kind == kind)]

    def other_requests(self) -> list[Request]:
        """Everything that was not ``POST /v1/messages``."""
        return [r for r in self.snapshot() if not r.is_messages]

    def paths(self) -> list[str]:
        return [f"{r.method} {r.path}" for r in self.snapshot()]

    def tool_calls(self, name: Optional[str] = None) -> list[ToolCall]:
        """Every tool_use we issued, paired with its tool_result (if any came back)."""
        uses: dict[str, tuple[Block, str]] = {}
        results: dict[str, Block] = {}
        order: list[str] = []
        for r in self.message_requests():
            for b in r.reply or []:
                if b.get("type") == "tool_use" and b["id"] not in uses:
                    uses[b["id"]] = (b, r.kind)
                    order.append(b["id"])
            for tr in r.tool_results():
                results.setdefault(tr.get("tool_use_id"), tr)
        out = []
        for tid in order:
            b, kind = uses[tid]
            if name is not None and b["name"] != name:
                continue
            tr = results.get(tid)
            out.append(ToolCall(
                name=b["name"], input=b.get("input") or {}, id=tid,
                result=None if tr is None else block_text(tr.get("content")),
                is_error=bool(tr and tr.get("is_error")), kind=kind,
            ))
        return out

    def dump(self, with_bodies: bool = False) -> str:
        """Human-readable log of the traffic, for assertion messages."""
        lines = []
        for r in self.snapshot():
            line = f"{r.method} {r.path}"
            if r.is_messages:
                line += (f" [{r.kind}] model={r.body.get('model') if isinstance(r.body, dict) else '?'}"
                         f" tools={len(r.tools)} msgs={len(r.messages)}"
                         f" reply={json.dumps(r.reply)[:300]}")
                for tr in r.last_tool_results():
                    line += f"\n    tool_result{' (ERROR)' if tr.get('is_error') else ''}: " \
                            f"{block_text(tr.get('content'))[:300]!r}"
            elif with_bodies and r.body is not None:
                line += " " + json.dumps(r.body)[:300]
            lines.append(line)
        if self.errors:
            lines.append("POLICY ERRORS: " + "; ".join(self.errors))
        return "\n".join(lines)
