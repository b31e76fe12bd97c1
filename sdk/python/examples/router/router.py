"""A router: healthy targets first, then the lowest time to first token;
``config = { avoid = ["provider-name"] }`` leaves providers out."""

from weir_policy import config
from wit_world import exports


class Router(exports.Router):
    def route(self, info, req, candidates):
        avoid = set(config().get("avoid", []))
        usable = [i for i, c in enumerate(candidates) if c.provider not in avoid]
        return sorted(usable, key=lambda i: (not candidates[i].healthy, candidates[i].ttft_ewma_us))
