// weir-policy for JavaScript: helpers for writing weir policies with
// componentize-js (StarlingMonkey) or componentize-qjs (QuickJS).
//
// A weir policy is a WebAssembly component implementing one world of
// wit/policy.wit. The toolchain generates the bindings from that file at
// build time: a policy imports the host's functions from
// 'weir:policy/host@0.1.0' and 'weir:policy/kv@0.1.0' and exports an
// object named after the world's interface (`guardrail`, `router`,
// `pricing`). This module wraps what every policy needs:
//
// - config(): the policy's `config` table, parsed once per instance;
// - log.{trace,debug,info,warn,error}: the gateway's log, tagged with the
//   policy's name and the request id;
// - kv: the policy's private key-value store (bytes, text, JSON, counters);
// - verdicts: allow / deny / rewrite for requests; pass / replace / hold /
//   partial / block for response text;
// - PolicyError and guardrail() / router() / pricing(): wrap the exports so
//   a thrown error becomes a policy error with its message (handled per the
//   operator's `on_error`) instead of an opaque trap;
// - textOf(req, roles): the text of the messages a policy looks at.
//
// Top-level code runs at build time (the toolchain snapshots the
// initialized engine with Wizer), so compile regexes and tables there, but
// call config() only inside a hook: the configuration exists only when the
// gateway runs the policy.

import { config as hostConfig, log as hostLog, nowMs as hostNowMs } from 'weir:policy/host@0.1.0';
import * as store from 'weir:policy/kv@0.1.0';

/** A policy failure: thrown from a hook, it becomes the hook's policy error. */
export class PolicyError extends Error {}

/** Throw a PolicyError. */
export function fail(message) {
  throw new PolicyError(String(message));
}

let parsedConfig;

/** The policy's `config` table as an object ({} when there is none). */
export function config() {
  if (parsedConfig === undefined) {
    let value;
    try {
      value = JSON.parse(hostConfig());
    } catch (e) {
      fail(`invalid config JSON: ${e.message}`);
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      fail('config must be a table');
    }
    parsedConfig = value;
  }
  return parsedConfig;
}

/** Wall-clock milliseconds since the Unix epoch. */
export function nowMs() {
  return Number(hostNowMs());
}

/** The gateway's log. */
export const log = {
  trace: (message) => hostLog('trace', String(message)),
  debug: (message) => hostLog('debug', String(message)),
  info: (message) => hostLog('info', String(message)),
  warn: (message) => hostLog('warn', String(message)),
  error: (message) => hostLog('error', String(message)),
};

// UTF-8 without TextEncoder/TextDecoder, which QuickJS does not have.
function encode(text) {
  const out = [];
  for (const ch of text) {
    const c = ch.codePointAt(0);
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }
  return Uint8Array.from(out);
}

function decode(bytes) {
  let out = '';
  for (let i = 0; i < bytes.length; ) {
    const b = bytes[i];
    const n = b < 0x80 ? 1 : b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
    let c = n === 1 ? (b < 0x80 ? b : 0xfffd) : b & (0xff >> (n + 1));
    for (let k = 1; k < n; k++) c = (c << 6) | ((bytes[i + k] ?? 0) & 63);
    out += String.fromCodePoint(c > 0x10ffff ? 0xfffd : c);
    i += n;
  }
  return out;
}
// 64-bit integers cross the boundary as BigInt with StarlingMonkey and as
// Number with QuickJS: ask the host once which one this engine uses.
let bigInts;
function int64(n) {
  if (bigInts === undefined) bigInts = typeof hostNowMs() === 'bigint';
  return bigInts ? BigInt(n) : Number(n);
}
const ttl = (ms) => (ms === undefined || ms === null ? undefined : int64(ms));

/** The policy's private key-value store (keys ≤ 512 bytes, values ≤ 64 KiB,
 *  256 operations per hook call). */
export const kv = {
  /** The value as bytes, or undefined. */
  get: (key) => store.get(key) ?? undefined,
  getString(key) {
    const v = store.get(key);
    return v === undefined || v === null ? undefined : decode(v);
  },
  getJson(key) {
    const v = store.get(key);
    return v === undefined || v === null ? undefined : JSON.parse(decode(v));
  },
  /** Store bytes, a string (UTF-8) or, for anything else, JSON. */
  set(key, value, ttlMs) {
    let bytes;
    if (value instanceof Uint8Array) bytes = value;
    else if (typeof value === 'string') bytes = encode(value);
    else bytes = encode(JSON.stringify(value));
    store.set(key, bytes, ttl(ttlMs));
  },
  delete: (key) => store.delete(key),
  /** Atomically add `delta` (default 1); returns the new value as a Number. */
  increment: (key, delta = 1, ttlMs) => Number(store.increment(key, int64(delta), ttl(ttlMs))),
};

// ------------------------------------------------------------ verdicts

/** Send the request on unchanged. */
export const allow = () => ({ tag: 'allow' });
/** Refuse the request: 400 with `code` (content_filter when empty) and
 *  `message`, which should say why without echoing the offending text. */
export const deny = (message, code = '') => ({ tag: 'deny', val: { code, message } });
/** Send these messages instead (message i replaces message i's text). */
export const rewrite = (messages) => ({ tag: 'rewrite', val: messages });

/** Release the offered text unchanged. */
export const pass = () => ({ tag: 'pass' });
/** Release `text` instead of the offered text. */
export const replace = (text) => ({ tag: 'replace', val: text });
/** Release nothing yet; the text is offered again with the next delta. */
export const hold = () => ({ tag: 'hold' });
/** Release `release` now, hold `held`. */
export function partial(release, held) {
  if (!held) return pass();
  if (!release) return hold();
  return { tag: 'partial', val: { release, hold: held } };
}
/** Stop the response: the choice ends with content_filter. */
export const block = (message, code = '') => ({ tag: 'block', val: { code, message } });

// ------------------------------------------------------------ requests

const ROLES = ['system', 'developer', 'user', 'assistant', 'tool'];

/** Role names from config, checked. */
export function roles(names) {
  const out = new Set();
  for (const name of names) {
    const role = String(name).toLowerCase();
    if (!ROLES.includes(role)) fail(`unknown role ${JSON.stringify(name)} (expected one of ${ROLES.join(', ')})`);
    out.add(role);
  }
  return out;
}

/** The text of the request's messages (with a role in `only`, if given),
 *  one message per line. */
export function textOf(req, only) {
  return req.messages
    .filter((m) => !only || only.has(m.role))
    .map((m) => m.content)
    .join('\n');
}

// ------------------------------------------------------------ exports

/** Run `f`, turning any thrown error into the hook's policy error. */
function guarded(f) {
  try {
    return f();
  } catch (e) {
    if (typeof e === 'string') throw e;
    throw e instanceof Error ? e.message || String(e) : String(e);
  }
}

/**
 * The `guardrail` export from a request hook and a response guard class:
 *
 *     export const guardrail = weir.guardrail({ onRequest(info, req) { … }, ResponseGuard });
 *
 * Either may be left out (requests are allowed, text passes). A guard class
 * is constructed per response with the request info and may define
 * onChunk(index, text) and onEnd(index, held, full).
 */
export function guardrail({ onRequest, ResponseGuard: Guard } = {}) {
  class ResponseGuard {
    constructor(info) {
      this.inner = Guard ? guarded(() => new Guard(info)) : undefined;
    }
    onChunk(index, text) {
      if (!this.inner || !this.inner.onChunk) return pass();
      return guarded(() => this.inner.onChunk(index, text));
    }
    onEnd(index, held, full) {
      if (!this.inner || !this.inner.onEnd) return pass();
      return guarded(() => this.inner.onEnd(index, held, full));
    }
  }
  return {
    onRequest: (info, req) => (onRequest ? guarded(() => onRequest(info, req)) : allow()),
    ResponseGuard,
  };
}

/** The `router` export: `route(info, req, candidates)` returns indexes into
 *  `candidates` in the order to try them. */
export function router(route) {
  return { route: (info, req, candidates) => guarded(() => Uint32Array.from(route(info, req, candidates))) };
}

/** The `pricing` export: `price(info, phase, provider, model, usage)`
 *  returns micro-USD (a Number or BigInt); token counts arrive as Numbers. */
export function pricing(price) {
  return {
    price: (info, phase, provider, model, usage) =>
      guarded(() => {
        const u = {
          inputTokens: Number(usage.inputTokens),
          outputTokens: Number(usage.outputTokens),
          cachedInputTokens: Number(usage.cachedInputTokens),
          reasoningTokens: Number(usage.reasoningTokens),
        };
        return int64(Math.round(Number(price(info, phase, provider, model, u))));
      }),
  };
}
