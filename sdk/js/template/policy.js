// A guardrail template: refuses requests that contain a configured word and
// masks it in responses. Copy this folder to policies/<name>/ (the import
// below is relative to that place) and edit.
//
// Build (from the repository root): policies/build-other.sh <name>, which
// writes target/policies/<name>.wasm. Test: weir policy test
// target/policies/<name>.wasm --cases policies/<name>/cases.jsonl

import * as weir from '../../sdk/js/weir-policy.js';

/** The configured words, lowercased (config = { words = ["..."] }). */
function words() {
  return (weir.config().words ?? ['forbidden']).map((w) => String(w).toLowerCase());
}

/** on-request: called once per request, before routing. */
function onRequest(info, req) {
  const text = weir.textOf(req).toLowerCase();
  if (words().some((w) => text.includes(w))) {
    weir.log.info(`denied request ${info.requestId}`);
    return weir.deny('the request mentions a word this gateway does not allow');
  }
  return weir.allow();
}

/** One per response: onChunk sees each delta (after anything held), onEnd
 *  the end of each choice. Keep per-response state on `this`. */
class ResponseGuard {
  constructor(info) {
    this.words = words();
  }

  onChunk(index, text) {
    let out = text;
    for (const w of this.words) {
      let at = out.toLowerCase().indexOf(w);
      while (at >= 0) {
        out = out.slice(0, at) + '*'.repeat(w.length) + out.slice(at + w.length);
        at = out.toLowerCase().indexOf(w, at + w.length);
      }
    }
    return out === text ? weir.pass() : weir.replace(out);
  }

  onEnd(index, held, full) {
    return weir.pass();
  }
}

export const guardrail = weir.guardrail({ onRequest, ResponseGuard });
