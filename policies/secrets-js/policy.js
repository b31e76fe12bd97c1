// secrets-js: finds credentials in prompts and in streamed model output.
//
// Detects AWS access keys, GitHub tokens, OpenAI / Anthropic / Stripe /
// Slack / Google API keys, JWTs and PEM private keys. Requests: a secret is
// redacted (`action = "redact"`, a rewrite) or the request is denied
// (`action = "block"`), naming the kind of secret, never the secret.
// Responses: each delta is released up to where a secret might still be
// forming and the rest is held (`partial`): a token that starts like a key
// ("sk-", "AKI", "-----BEGIN") is held until a character that cannot belong
// to it arrives, so a key split across deltas is redacted whole and never
// leaks in pieces; ordinary text is released in the same step it arrives.
//
// Config: action = "redact" | "block" (default redact); requests = true;
// responses = true; disable = ["jwt", ...] (kinds to skip);
// max_hold = 8192 (characters; a private key still open beyond that is
// blocked rather than released).

import * as weir from '../../sdk/js/weir-policy.js';

// Compiled at build time (the toolchain snapshots the initialized engine).
const WORD = String.raw`[A-Za-z0-9_]`;
// Token detectors: a literal prefix, then body characters. `min`/`max`
// bound the body's length.
const TOKENS = [
  { kind: 'aws-access-key', prefixes: ['AKIA', 'ASIA'], body: /^[0-9A-Z]*$/, min: 16, max: 16 },
  { kind: 'github-token', prefixes: ['ghp_', 'gho_', 'ghu_', 'ghs_', 'ghr_'], body: /^[A-Za-z0-9]*$/, min: 36, max: 255 },
  { kind: 'github-token', prefixes: ['github_pat_'], body: /^[A-Za-z0-9_]*$/, min: 22, max: 255 },
  { kind: 'anthropic-key', prefixes: ['sk-ant-'], body: /^[A-Za-z0-9_-]*$/, min: 32, max: 255 },
  { kind: 'openai-key', prefixes: ['sk-'], body: /^[A-Za-z0-9_-]*$/, min: 20, max: 255 },
  { kind: 'stripe-key', prefixes: ['sk_live_', 'rk_live_', 'sk_test_'], body: /^[A-Za-z0-9]*$/, min: 16, max: 255 },
  { kind: 'slack-token', prefixes: ['xoxb-', 'xoxp-', 'xoxa-', 'xoxr-', 'xoxs-'], body: /^[A-Za-z0-9-]*$/, min: 10, max: 255 },
  { kind: 'google-api-key', prefixes: ['AIza'], body: /^[A-Za-z0-9_-]*$/, min: 35, max: 35 },
  { kind: 'jwt', prefixes: ['eyJ'], body: /^[A-Za-z0-9_.-]*$/, min: 30, max: 4096 },
];
// Whole matches, for redaction. Longer prefixes first ("sk-ant-" before "sk-").
const PATTERNS = [
  ['private-key', /-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----/g],
  ['aws-access-key', new RegExp(String.raw`(?<!${WORD})(?:AKIA|ASIA)[0-9A-Z]{16}(?!${WORD})`, 'g')],
  ['github-token', new RegExp(String.raw`(?<!${WORD})(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})(?!${WORD})`, 'g')],
  ['anthropic-key', new RegExp(String.raw`(?<!${WORD})sk-ant-[A-Za-z0-9_-]{32,255}(?![A-Za-z0-9_-])`, 'g')],
  ['openai-key', new RegExp(String.raw`(?<!${WORD})sk-(?!ant-)[A-Za-z0-9_-]{20,255}(?![A-Za-z0-9_-])`, 'g')],
  ['stripe-key', new RegExp(String.raw`(?<!${WORD})(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,255}(?!${WORD})`, 'g')],
  ['slack-token', new RegExp(String.raw`(?<!${WORD})xox[bpars]-[A-Za-z0-9-]{10,255}(?![A-Za-z0-9-])`, 'g')],
  ['google-api-key', new RegExp(String.raw`(?<!${WORD})AIza[A-Za-z0-9_-]{35}(?![A-Za-z0-9_-])`, 'g')],
  ['jwt', new RegExp(String.raw`(?<!${WORD})eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}(?![A-Za-z0-9_.-])`, 'g')],
];
const PEM_BEGIN = '-----BEGIN';
const PEM_HEADER = /^-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----/;
const PEM_HEADER_SO_FAR = /^-----BEGIN(?: [A-Z0-9 ]*)?-{0,5}$/;
const PEM_END = /-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----/;
const IS_WORD = /[A-Za-z0-9_]/;
const IS_SPACE = /\s/;
// The longest trailing token considered as a secret in progress.
const MAX_TOKEN = 4096 + 16;

let settings;

function rules() {
  if (settings === undefined) {
    const cfg = weir.config();
    const action = cfg.action ?? 'redact';
    if (action !== 'redact' && action !== 'block') weir.fail(`action must be "redact" or "block", not ${JSON.stringify(action)}`);
    const disabled = new Set(cfg.disable ?? []);
    const known = new Set(PATTERNS.map(([kind]) => kind));
    for (const kind of disabled) if (!known.has(kind)) weir.fail(`unknown kind in disable: ${JSON.stringify(kind)}`);
    settings = {
      action,
      requests: cfg.requests ?? true,
      responses: cfg.responses ?? true,
      maxHold: Number(cfg.max_hold ?? 8192),
      patterns: PATTERNS.filter(([kind]) => !disabled.has(kind)),
      tokens: TOKENS.filter((t) => !disabled.has(t.kind)),
      pem: !disabled.has('private-key'),
    };
  }
  return settings;
}

/** `text` with every complete secret replaced; the kinds found. */
function redact(text, r) {
  const kinds = new Set();
  let out = text;
  for (const [kind, re] of r.patterns) {
    re.lastIndex = 0;
    if (!re.test(out)) continue;
    re.lastIndex = 0;
    out = out.replace(re, () => {
      kinds.add(kind);
      return `[REDACTED_${kind.toUpperCase().replaceAll('-', '_')}]`;
    });
  }
  return { text: out, kinds };
}

/** Could `rest` (which starts a token) still grow into a secret? */
function mayBecomeSecret(rest, r) {
  for (const t of r.tokens) {
    for (const prefix of t.prefixes) {
      if (rest.length <= prefix.length) {
        if (prefix.startsWith(rest)) return true;
      } else if (rest.startsWith(prefix)) {
        const body = rest.slice(prefix.length);
        if (body.length <= t.max && t.body.test(body)) return true;
      }
    }
  }
  if (r.pem && rest.length <= PEM_BEGIN.length && PEM_BEGIN.startsWith(rest)) return true;
  return false;
}

/** Where the text that must be held starts: an open private key, or the
 *  trailing token if it may still become a secret. `text.length` if none. */
function holdFrom(text, r) {
  if (r.pem) {
    const begin = text.lastIndexOf(PEM_BEGIN);
    if (begin >= 0) {
      const rest = text.slice(begin);
      const open = PEM_HEADER.test(rest) ? !PEM_END.test(rest) : PEM_HEADER_SO_FAR.test(rest.split('\n')[0]) && !rest.includes('\n');
      if (open) return begin;
    }
  }
  let start = text.length;
  while (start > 0 && !IS_SPACE.test(text[start - 1])) start--;
  if (text.length - start > MAX_TOKEN) return text.length;
  for (let s = start; s < text.length; s++) {
    if (s > start && IS_WORD.test(text[s - 1])) continue;
    if (mayBecomeSecret(text.slice(s), r)) return s;
  }
  return text.length;
}

function found(kinds, where) {
  const list = [...kinds].sort().join(', ');
  weir.log.warn(`${where} contains ${list}`);
  for (const kind of kinds) weir.kv.increment(`found:${kind}`);
  return list;
}

class ResponseGuard {
  constructor() {
    this.r = rules();
  }

  onChunk(index, text) {
    const r = this.r;
    if (!r.responses) return weir.pass();
    const cut = holdFrom(text, r);
    if (text.length - cut > r.maxHold) {
      return weir.block(`the response contains what looks like a private key longer than ${r.maxHold} characters`, 'secret_detected');
    }
    return this.release(text.slice(0, cut), text.slice(cut));
  }

  onEnd(index, held) {
    if (!this.r.responses || !held) return weir.pass();
    // Close an unterminated private key so it is redacted to the end.
    const begin = this.r.pem ? held.lastIndexOf(PEM_BEGIN) : -1;
    if (begin >= 0 && PEM_HEADER.test(held.slice(begin)) && !PEM_END.test(held.slice(begin))) {
      held += '\n-----END PRIVATE KEY-----';
    }
    return this.release(held, '');
  }

  release(text, held) {
    const { text: clean, kinds } = redact(text, this.r);
    if (kinds.size === 0) return weir.partial(text, held);
    const list = found(kinds, 'the response');
    if (this.r.action === 'block') return weir.block(`the response contained a secret (${list})`, 'secret_detected');
    if (!held) return weir.replace(clean);
    return weir.partial(clean, held);
  }
}

function onRequest(info, req) {
  const r = rules();
  if (!r.requests) return weir.allow();
  const kinds = new Set();
  const messages = req.messages.map((m) => {
    const content = redact(m.content, r);
    const toolCalls = m.toolCalls.map((c) => {
      const args = redact(c.arguments, r);
      args.kinds.forEach((k) => kinds.add(k));
      return { ...c, arguments: args.text };
    });
    content.kinds.forEach((k) => kinds.add(k));
    return { ...m, content: content.text, toolCalls };
  });
  if (kinds.size === 0) return weir.allow();
  const list = found(kinds, 'the request');
  if (r.action === 'block') return weir.deny(`the request contains a secret (${list}); remove it and try again`, 'secret_detected');
  return weir.rewrite(messages);
}

export const guardrail = weir.guardrail({ onRequest, ResponseGuard });
