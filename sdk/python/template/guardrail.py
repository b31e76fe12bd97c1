"""A guardrail template: refuses requests that contain a configured word and
masks it in responses. Copy this folder to ``policies/<name>/`` and edit.

Build (from the repository root): ``policies/build-other.sh <name>``, which
writes ``target/policies/<name>.wasm``. Test: ``weir policy test
target/policies/<name>.wasm --cases policies/<name>/cases.jsonl``.
"""

from weir_policy import allow, config, deny, info, pass_, replace, text_of
from wit_world import exports
from wit_world.exports import guardrail as wit
from wit_world.imports.types import ChatRequest, RequestInfo


def words() -> list:
    """The configured words, lowercased (``config = { words = ["..."] }``)."""
    return [str(w).lower() for w in config().get("words", ["forbidden"])]


class Guardrail(exports.Guardrail):
    """``on-request``: called once per request, before routing."""

    def on_request(self, info_: RequestInfo, req: ChatRequest) -> wit.RequestVerdict:
        text = text_of(req).lower()
        for word in words():
            if word in text:
                info(f"denied request {info_.request_id}")
                return deny("the request mentions a word this gateway does not allow")
        return allow()


class ResponseGuard(wit.ResponseGuard):
    """One per response: ``on_chunk`` sees each delta (after anything held),
    ``on_end`` the end of each choice. Keep per-response state on ``self``."""

    def __init__(self, info_: RequestInfo) -> None:
        self.words = words()

    def on_chunk(self, index: int, text: str) -> wit.ChunkVerdict:
        lowered = text.lower()
        if not any(w in lowered for w in self.words):
            return pass_()
        out = text
        for w in self.words:
            at = out.lower().find(w)
            while at >= 0:
                out = out[:at] + "*" * len(w) + out[at + len(w):]
                at = out.lower().find(w, at + len(w))
        return replace(out)

    def on_end(self, index: int, held: str, full: str) -> wit.ChunkVerdict:
        return pass_()
