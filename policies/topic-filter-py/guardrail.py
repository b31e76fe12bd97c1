"""topic-filter-py: a topic classifier with weighted keyword scores.

Each topic is a table of keywords (single words or phrases) with weights; a
text's score for a topic is the sum of the weights of the distinct keywords
it contains, matched on whole words, case-insensitively. A request whose
score for some topic reaches the threshold is denied, naming the topic.
With ``responses = true`` the model's answer is scored as it streams and the
response is blocked before the word that crosses the threshold is released:
the guard holds the trailing, possibly unfinished word of each delta (so
"stock" + "s" is scored as "stocks") and remembers the last few words, so a
phrase split across deltas still matches.

Config::

    threshold = 2.0                 # default for every topic
    roles = ["user"]                # which request messages are scored
    responses = false               # also score (and block) responses
    [topics.investment-advice]      # keyword = weight ...
    "stock tips" = 2.0
    portfolio = 1.0
    [topics.medical]                # ... or keywords + its own threshold
    threshold = 1.5
    keywords = { diagnosis = 1.0, prescription = 1.0 }
"""

import re

from weir_policy import (
    allow,
    block,
    config,
    deny,
    fail,
    info,
    kv,
    partial,
    pass_,
    roles,
)
from wit_world import exports
from wit_world.exports import guardrail as wit
from wit_world.exports.guardrail_hooks import Hooks
from wit_world.imports.types import ChatRequest, RequestInfo

# Compiled at build time: componentize-py snapshots the initialized module.
WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
# The longest unfinished word a guard holds back; longer runs are released.
MAX_HELD_WORD = 64


def tokens(text: str) -> list:
    return WORD.findall(text.lower())


class Topic:
    def __init__(self, name: str, keywords: dict, threshold: float) -> None:
        self.name = name
        self.threshold = threshold
        # phrase (tuple of words) -> weight
        self.keywords = {}
        for phrase, weight in keywords.items():
            words = tuple(tokens(str(phrase)))
            if not words:
                fail(f"topic {name!r}: keyword {phrase!r} has no words")
            try:
                self.keywords[words] = float(weight)
            except (TypeError, ValueError):
                fail(f"topic {name!r}: weight of {phrase!r} is not a number")


class Rules:
    """The parsed config; built once per instance."""

    def __init__(self, cfg: dict) -> None:
        try:
            default = float(cfg.get("threshold", 2.0))
        except (TypeError, ValueError):
            fail("threshold is not a number")
        self.roles = roles(cfg.get("roles", ["user"]))
        self.responses = bool(cfg.get("responses", False))
        self.topics = []
        for name, spec in (cfg.get("topics") or {}).items():
            if not isinstance(spec, dict):
                fail(f"topic {name!r} must be a table of keyword weights")
            if "keywords" in spec:
                keywords = spec["keywords"]
                threshold = float(spec.get("threshold", default))
            else:
                keywords, threshold = spec, default
            self.topics.append(Topic(str(name), keywords, threshold))
        # first word -> [(phrase, topic)], so scoring touches only candidates
        self.by_first = {}
        for topic in self.topics:
            for phrase in topic.keywords:
                self.by_first.setdefault(phrase[0], []).append((phrase, topic))
        self.longest = max((len(p) for t in self.topics for p in t.keywords), default=1)

    def find(self, words: list, found: set, start: int = 0) -> None:
        """Add (topic name, phrase) for every keyword starting at or after
        ``start`` in ``words`` to ``found``."""
        for i in range(start, len(words)):
            for phrase, topic in self.by_first.get(words[i], ()):
                if tuple(words[i : i + len(phrase)]) == phrase:
                    found.add((topic.name, phrase))

    def verdict(self, found: set):
        """The topic over its threshold with the highest score, as
        (name, score, threshold), or None."""
        worst = None
        for topic in self.topics:
            score = sum(topic.keywords[p] for (name, p) in found if name == topic.name)
            if score >= topic.threshold and (worst is None or score > worst[1]):
                worst = (topic.name, score, topic.threshold)
        return worst


_rules = None


def rules() -> Rules:
    global _rules
    if _rules is None:
        _rules = Rules(config())
    return _rules


def refuse(hit, what: str) -> str:
    name, score, threshold = hit
    kv.incr(f"denied:{name}")
    info(f"{what} on off-limits topic {name} (score {score:g} >= {threshold:g})")
    return f"this gateway does not discuss {name} (topic score {score:g}, threshold {threshold:g})"


class GuardrailHooks(exports.GuardrailHooks):
    """Which hooks the gateway calls, asked once per load: responses only
    with ``responses = true``, so by default a stream does not pass through
    this policy at all (one Python call per delta saved). A bad config keeps
    every hook, so the hooks report it."""

    def needs(self) -> Hooks:
        try:
            r = rules()
        except Exception:  # noqa: BLE001 - reported by the hooks themselves
            return Hooks.REQUESTS | Hooks.RESPONSES
        if not r.topics:
            return Hooks(0)
        return Hooks.REQUESTS | Hooks.RESPONSES if r.responses else Hooks.REQUESTS

    def stateless(self) -> bool:
        """Nothing of a request outlives its response (the module keeps
        only the parsed config), so one instance may serve many requests:
        weir then skips the interpreter's start-up, ~2 ms per request."""
        return True


class Guardrail(exports.Guardrail):
    def on_request(self, info_: RequestInfo, req: ChatRequest) -> wit.RequestVerdict:
        r = rules()
        found = set()
        for m in req.messages:
            if m.role in r.roles:
                r.find(tokens(m.content), found)
        hit = r.verdict(found)
        if hit is None:
            return allow()
        return deny(refuse(hit, "request"), "off_topic")


class Choice:
    """Per choice: the keywords seen so far and the last words released
    (a phrase may start in an earlier delta)."""

    def __init__(self) -> None:
        self.found = set()
        self.tail = []


class ResponseGuard(wit.ResponseGuard):
    def __init__(self, info_: RequestInfo) -> None:
        self.rules = rules()
        self.choices = {}

    def scan(self, index: int, text: str):
        """Score ``text`` after what this choice already released; a
        rejection message if it crosses a threshold."""
        choice = self.choices.setdefault(index, Choice())
        words = choice.tail + tokens(text)
        self.rules.find(words, choice.found, start=0)
        choice.tail = words[-(self.rules.longest - 1) :] if self.rules.longest > 1 else []
        hit = self.rules.verdict(choice.found)
        return None if hit is None else refuse(hit, "response")

    def on_chunk(self, index: int, text: str) -> wit.ChunkVerdict:
        if not self.rules.responses or not self.rules.topics:
            return pass_()
        # Hold the trailing word while it may still grow ("stock" -> "stocks").
        cut = len(text)
        last = None
        for last in WORD.finditer(text):
            pass
        if last is not None and last.end() == len(text) and last.end() - last.start() <= MAX_HELD_WORD:
            cut = last.start()
        release, held = text[:cut], text[cut:]
        message = self.scan(index, release)
        if message is not None:
            return block(message, "off_topic")
        return partial(release, held)

    def on_end(self, index: int, held: str, full: str) -> wit.ChunkVerdict:
        if not self.rules.responses or not self.rules.topics or not held:
            return pass_()
        message = self.scan(index, held)
        if message is not None:
            return block(message, "off_topic")
        return pass_()
