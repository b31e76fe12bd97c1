"""A pricing policy: a flat per-million-token price from config, in
micro-USD, with cached input tokens at a discount.
``config = { input_per_mtok = 0.15, output_per_mtok = 0.60, cached_discount = 0.5 }``"""

from weir_policy import config
from wit_world import exports


class Pricing(exports.Pricing):
    def price(self, info, phase, provider, model, usage):
        cfg = config()
        per_in = float(cfg.get("input_per_mtok", 0.15))
        per_out = float(cfg.get("output_per_mtok", 0.60))
        discount = float(cfg.get("cached_discount", 0.5))
        fresh = usage.input_tokens - usage.cached_input_tokens
        usd = (fresh + usage.cached_input_tokens * (1 - discount)) * per_in + usage.output_tokens * per_out
        return round(usd)  # USD per million tokens x tokens = micro-USD
