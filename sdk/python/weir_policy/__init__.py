"""weir-policy for Python: helpers for writing weir policies with componentize-py.

A weir policy is a WebAssembly component implementing one world of
``wit/policy.wit``. componentize-py generates the bindings (the ``wit_world``
package) from that file when it builds the component; this module wraps the
parts every policy needs:

- ``config()``: the policy's ``config`` table, parsed once per instance;
- ``log`` / ``debug`` / ``info`` / ``warn`` / ``error``: the gateway's log,
  tagged with the policy's name and the request id;
- ``kv``: the policy's private key-value store (bytes, text, JSON, counters);
- verdict constructors: ``allow``, ``deny``, ``rewrite`` for requests;
  ``pass_``, ``replace``, ``hold``, ``partial``, ``block`` for response text;
- ``fail(message)``: return a policy error (handled per the operator's
  ``on_error``) instead of trapping;
- ``text_of(req, roles)``: the text of the messages a policy looks at.

The module that componentize-py builds is named after the world's export:
``guardrail.py`` (classes ``Guardrail`` and ``ResponseGuard``), ``router.py``
(class ``Router``) or ``pricing.py`` (class ``Pricing``). Module-level code
runs at build time (componentize-py snapshots the initialized interpreter),
so precompile regexes and tables there, but call ``config()`` only inside a
hook: the configuration exists only when the gateway runs the policy.
"""

import json
from typing import Any, Iterable, List, Optional

from componentize_py_types import Err
from wit_world.imports import host as _host
from wit_world.imports import kv as _kv
from wit_world.imports.types import ChatRequest, Message, Rejection, RequestInfo, Role

__all__ = [
    "ChatRequest",
    "Message",
    "RequestInfo",
    "Role",
    "allow",
    "block",
    "config",
    "debug",
    "deny",
    "error",
    "fail",
    "hold",
    "info",
    "kv",
    "log",
    "now_ms",
    "partial",
    "pass_",
    "replace",
    "rewrite",
    "roles",
    "text_of",
    "warn",
]

# ---------------------------------------------------------------- config

_config: Optional[dict] = None


def config() -> dict:
    """The policy's ``config`` table as a dict (``{}`` when there is none).

    Parsed on first use and kept for the instance's life: the host returns
    the same text for every instance of one loaded policy, so caching it is
    safe even with ``reuse_instances``. Invalid JSON is a policy error.
    """
    global _config
    if _config is None:
        try:
            value = json.loads(_host.config())
        except ValueError as e:
            fail(f"invalid config JSON: {e}")
        if not isinstance(value, dict):
            fail("config must be a table")
        _config = value
    return _config


def now_ms() -> int:
    """Wall-clock milliseconds since the Unix epoch."""
    return _host.now_ms()


# ---------------------------------------------------------------- logging

_LEVELS = {
    "trace": _host.Level.TRACE,
    "debug": _host.Level.DEBUG,
    "info": _host.Level.INFO,
    "warn": _host.Level.WARN,
    "error": _host.Level.ERROR,
}


def log(level: str, message: str) -> None:
    """Log ``message`` at ``level`` (trace, debug, info, warn, error)."""
    _host.log(_LEVELS.get(level, _host.Level.INFO), message)


def debug(message: str) -> None:
    _host.log(_host.Level.DEBUG, message)


def info(message: str) -> None:
    _host.log(_host.Level.INFO, message)


def warn(message: str) -> None:
    _host.log(_host.Level.WARN, message)


def error(message: str) -> None:
    _host.log(_host.Level.ERROR, message)


# ---------------------------------------------------------------- errors


def fail(message: str):
    """Stop the hook with a policy error (the operator's ``on_error`` decides
    whether the request is refused or the policy skipped). Never returns."""
    raise Err(str(message))


# ---------------------------------------------------------------- kv


class _Kv:
    """The policy's private key-value store. Keys are at most 512 bytes,
    values at most 64 KiB; a hook call may make 256 operations."""

    @staticmethod
    def get(key: str) -> Optional[bytes]:
        return _kv.get(key)

    @staticmethod
    def get_str(key: str) -> Optional[str]:
        value = _kv.get(key)
        return None if value is None else value.decode("utf-8", "replace")

    @staticmethod
    def get_json(key: str) -> Any:
        value = _kv.get(key)
        return None if value is None else json.loads(value)

    @staticmethod
    def set(key: str, value: Any, ttl_ms: Optional[int] = None) -> None:
        """Store bytes, text (UTF-8) or, for anything else, JSON."""
        if isinstance(value, str):
            value = value.encode("utf-8")
        elif not isinstance(value, (bytes, bytearray)):
            value = json.dumps(value, separators=(",", ":")).encode("utf-8")
        _kv.set(key, bytes(value), ttl_ms)

    @staticmethod
    def delete(key: str) -> None:
        _kv.delete(key)

    @staticmethod
    def incr(key: str, delta: int = 1, ttl_ms: Optional[int] = None) -> int:
        """Atomically add ``delta``; ``ttl_ms`` applies when the counter is created."""
        return _kv.increment(key, delta, ttl_ms)


kv = _Kv()

# ---------------------------------------------------------------- verdicts

try:  # only a guardrail world has response verdicts
    from wit_world.exports import guardrail as _g
except ImportError:  # a router or pricing policy
    _g = None


def allow():
    """Send the request on unchanged."""
    return _g.RequestVerdict_Allow()


def deny(message: str, code: str = ""):
    """Refuse the request: the client gets 400 with ``code`` (``content_filter``
    when empty) and ``message``, which should say why without echoing the
    offending text."""
    return _g.RequestVerdict_Deny(Rejection(code=code, message=message))


def rewrite(messages: List[Message]):
    """Send these messages instead (message i replaces message i's text)."""
    return _g.RequestVerdict_Rewrite(list(messages))


def pass_():
    """Release the offered text unchanged."""
    return _g.ChunkVerdict_Pass()


def replace(text: str):
    """Release ``text`` instead of the offered text."""
    return _g.ChunkVerdict_Replace(text)


def hold():
    """Release nothing yet; the text is offered again with the next delta."""
    return _g.ChunkVerdict_Hold()


def partial(release: str, held: str):
    """Release ``release`` now and hold ``held`` (offered again with the next delta)."""
    if not held:
        return _g.ChunkVerdict_Pass()
    if not release:
        return _g.ChunkVerdict_Hold()
    return _g.ChunkVerdict_Partial(_g.Partial(release=release, hold=held))


def block(message: str, code: str = ""):
    """Stop the response: the choice ends with ``content_filter``."""
    return _g.ChunkVerdict_Block(Rejection(code=code, message=message))


# ---------------------------------------------------------------- requests

_ROLE_NAMES = {
    "system": Role.SYSTEM,
    "developer": Role.DEVELOPER,
    "user": Role.USER,
    "assistant": Role.ASSISTANT,
    "tool": Role.TOOL,
}


def roles(names: Iterable[str]) -> frozenset:
    """Role names from config (``["user", "tool"]``) as ``Role`` values;
    unknown names are a policy error."""
    out = set()
    for name in names:
        role = _ROLE_NAMES.get(str(name).lower())
        if role is None:
            fail(f"unknown role {name!r} (expected one of {', '.join(_ROLE_NAMES)})")
        out.add(role)
    return frozenset(out)


def text_of(req: ChatRequest, only: Optional[Iterable[Role]] = None) -> str:
    """The text of the request's messages (those with a role in ``only``,
    if given), one message per line."""
    wanted = None if only is None else set(only)
    return "\n".join(
        m.content for m in req.messages if wanted is None or m.role in wanted
    )
