// length-limit-c: a guardrail in C. Refuses requests whose messages add up
// to more than `max_request_bytes` of text, and ends a response choice once
// it passes `max_response_bytes` (0: no limit).
//
//   config = { max_request_bytes = 32768, max_response_bytes = 0 }
//
// Built by policies/build-other.sh with clang (wasm32-wasi, wasi-libc) and
// linked into a component by wasm-component-ld (shipped with Rust's
// wasm32-wasip2 target). bindings/ is generated from wit/ by
// `wit-bindgen c ../../wit --world guardrail-policy --out-dir bindings`
// (wit-bindgen-cli 0.63); bindings/wit.sha256 records the WIT it was made from.

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bindings/guardrail_policy.h"

typedef guardrail_policy_string_t string_t;

#define MAX_CHOICES 16

struct exports_weir_policy_guardrail_response_guard_t {
  uint64_t bytes[MAX_CHOICES];
};

static int loaded;
static uint64_t max_request_bytes = 32768;
static uint64_t max_response_bytes;

// The non-negative integer after `"key":` in a flat JSON object, if any.
static int json_uint(const string_t *json, const char *key, uint64_t *out) {
  char quoted[64];
  int n = snprintf(quoted, sizeof quoted, "\"%s\"", key);
  if (n <= 0 || (size_t)n >= sizeof quoted) return 0;
  for (size_t i = 0; i + (size_t)n <= json->len; i++) {
    if (memcmp(json->ptr + i, quoted, (size_t)n) != 0) continue;
    size_t j = i + (size_t)n;
    while (j < json->len && (json->ptr[j] == ' ' || json->ptr[j] == ':')) j++;
    if (j >= json->len || json->ptr[j] < '0' || json->ptr[j] > '9') return 0;
    uint64_t v = 0;
    while (j < json->len && json->ptr[j] >= '0' && json->ptr[j] <= '9') v = v * 10 + (json->ptr[j++] - '0');
    *out = v;
    return 1;
  }
  return 0;
}

static void load_config(void) {
  if (loaded) return;
  string_t json;
  weir_policy_host_config(&json);
  json_uint(&json, "max_request_bytes", &max_request_bytes);
  json_uint(&json, "max_response_bytes", &max_response_bytes);
  guardrail_policy_string_free(&json);
  loaded = 1;
}

static void rejection(exports_weir_policy_guardrail_rejection_t *r, const char *code, const char *message) {
  guardrail_policy_string_dup(&r->code, code);
  guardrail_policy_string_dup(&r->message, message);
}

bool exports_weir_policy_guardrail_on_request(exports_weir_policy_guardrail_request_info_t *info,
                                              exports_weir_policy_guardrail_chat_request_t *req,
                                              exports_weir_policy_guardrail_request_verdict_t *ret,
                                              exports_weir_policy_guardrail_policy_error_t *err) {
  (void)err;
  load_config();
  uint64_t total = 0;
  for (size_t i = 0; i < req->messages.len; i++) total += req->messages.ptr[i].content.len;
  exports_weir_policy_guardrail_request_info_free(info);
  exports_weir_policy_guardrail_chat_request_free(req);
  if (max_request_bytes > 0 && total > max_request_bytes) {
    char message[128];
    snprintf(message, sizeof message, "the request has %llu bytes of text; the limit is %llu",
             (unsigned long long)total, (unsigned long long)max_request_bytes);
    ret->tag = EXPORTS_WEIR_POLICY_GUARDRAIL_REQUEST_VERDICT_DENY;
    rejection(&ret->val.deny, "request_too_long", message);
  } else {
    ret->tag = EXPORTS_WEIR_POLICY_GUARDRAIL_REQUEST_VERDICT_ALLOW;
  }
  return true;
}

exports_weir_policy_guardrail_own_response_guard_t exports_weir_policy_guardrail_constructor_response_guard(
    exports_weir_policy_guardrail_request_info_t *info) {
  exports_weir_policy_guardrail_request_info_free(info);
  load_config();
  exports_weir_policy_guardrail_response_guard_t *guard = calloc(1, sizeof *guard);
  if (!guard) abort();
  return exports_weir_policy_guardrail_response_guard_new(guard);
}

void exports_weir_policy_guardrail_response_guard_destructor(exports_weir_policy_guardrail_response_guard_t *guard) {
  free(guard);
}

bool exports_weir_policy_guardrail_method_response_guard_on_chunk(
    exports_weir_policy_guardrail_borrow_response_guard_t guard, uint32_t index, string_t *text,
    exports_weir_policy_guardrail_chunk_verdict_t *ret, exports_weir_policy_guardrail_policy_error_t *err) {
  (void)err;
  size_t len = text->len;
  guardrail_policy_string_free(text);
  uint64_t *sent = &guard->bytes[index < MAX_CHOICES ? index : MAX_CHOICES - 1];
  if (max_response_bytes > 0 && *sent + len > max_response_bytes) {
    ret->tag = EXPORTS_WEIR_POLICY_GUARDRAIL_CHUNK_VERDICT_BLOCK;
    rejection(&ret->val.block, "response_too_long", "the response passed its length limit");
    return true;
  }
  *sent += len;
  ret->tag = EXPORTS_WEIR_POLICY_GUARDRAIL_CHUNK_VERDICT_PASS;
  return true;
}

bool exports_weir_policy_guardrail_method_response_guard_on_end(
    exports_weir_policy_guardrail_borrow_response_guard_t guard, uint32_t index, string_t *held, string_t *full,
    exports_weir_policy_guardrail_chunk_verdict_t *ret, exports_weir_policy_guardrail_policy_error_t *err) {
  (void)guard;
  (void)index;
  (void)err;
  guardrail_policy_string_free(held);
  guardrail_policy_string_free(full);
  ret->tag = EXPORTS_WEIR_POLICY_GUARDRAIL_CHUNK_VERDICT_PASS;
  return true;
}
