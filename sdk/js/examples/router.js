// A router: healthy targets first, then the lowest time to first token;
// config = { avoid = ["provider-name"] } leaves providers out.
// Copy to policies/<name>/policy.js next to the template's package.json
// and set "weir": {"world": "router-policy"} there.
import * as weir from '../../sdk/js/weir-policy.js';

export const router = weir.router((info, req, candidates) => {
  const avoid = new Set(weir.config().avoid ?? []);
  return candidates
    .map((c, i) => ({ c, i }))
    .filter(({ c }) => !avoid.has(c.provider))
    .sort((a, b) => Number(b.c.healthy) - Number(a.c.healthy) || Number(a.c.ttftEwmaUs) - Number(b.c.ttftEwmaUs))
    .map(({ i }) => i);
});
