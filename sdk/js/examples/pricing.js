// A pricing policy: a flat per-million-token price from config, in
// micro-USD, with cached input tokens at a discount.
// config = { input_per_mtok = 0.15, output_per_mtok = 0.60, cached_discount = 0.5 }
// Copy to policies/<name>/policy.js next to the template's package.json
// and set "weir": {"world": "pricing-policy"} there.
import * as weir from '../../sdk/js/weir-policy.js';

export const pricing = weir.pricing((info, phase, provider, model, usage) => {
  const cfg = weir.config();
  const perIn = cfg.input_per_mtok ?? 0.15;
  const perOut = cfg.output_per_mtok ?? 0.6;
  const discount = cfg.cached_discount ?? 0.5;
  const fresh = usage.inputTokens - usage.cachedInputTokens;
  // USD per million tokens x tokens = micro-USD
  return (fresh + usage.cachedInputTokens * (1 - discount)) * perIn + usage.outputTokens * perOut;
});
