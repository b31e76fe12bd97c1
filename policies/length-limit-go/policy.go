// length-limit-go: a guardrail in Go. Refuses requests whose messages add up
// to more than `max_request_bytes` of text, and ends a response choice once
// it passes `max_response_bytes` (0: no limit). The same policy as
// length-limit-c.
//
//	config = { max_request_bytes = 32768, max_response_bytes = 0 }
//
// Built by policies/build-other.sh with Go's own compiler
// (GOOS=wasip1 GOARCH=wasm, -buildmode=c-shared) into a core module, which
// `weir-wasip1-component` (tools/wasip1-component) turns into a component with the
// WASI preview1 reactor adapter. abi.go is the canonical-ABI glue for the
// guardrail-policy world; this file is the policy.
//
// A Go guest cannot use `reuse_instances`: the gateway refuses it, as Go's
// garbage collector can trap in a reused instance.
package main

import "strconv"

var (
	loaded           bool
	maxRequestBytes  uint64 = 32768
	maxResponseBytes uint64
)

// jsonUint is the non-negative integer after `"key":` in a flat JSON
// object, if any.
func jsonUint(json, key string) (uint64, bool) {
	quoted := `"` + key + `"`
	for i := 0; i+len(quoted) <= len(json); i++ {
		if json[i:i+len(quoted)] != quoted {
			continue
		}
		j := i + len(quoted)
		for j < len(json) && (json[j] == ' ' || json[j] == ':') {
			j++
		}
		start := j
		for j < len(json) && json[j] >= '0' && json[j] <= '9' {
			j++
		}
		v, err := strconv.ParseUint(json[start:j], 10, 64)
		return v, err == nil
	}
	return 0, false
}

func loadConfig() {
	if loaded {
		return
	}
	json := hostConfig()
	if v, ok := jsonUint(json, "max_request_bytes"); ok {
		maxRequestBytes = v
	}
	if v, ok := jsonUint(json, "max_response_bytes"); ok {
		maxResponseBytes = v
	}
	loaded = true
}

// onRequest: the request's text is the sum of its messages' content.
func onRequest(contentBytes uint64) *rejection {
	loadConfig()
	if maxRequestBytes > 0 && contentBytes > maxRequestBytes {
		return &rejection{
			code: "request_too_long",
			message: "the request has " + strconv.FormatUint(contentBytes, 10) +
				" bytes of text; the limit is " + strconv.FormatUint(maxRequestBytes, 10),
		}
	}
	return nil
}

// responseGuard counts what each choice of one response has released.
type responseGuard struct {
	sent map[uint32]uint64
}

func newResponseGuard() *responseGuard {
	loadConfig()
	return &responseGuard{sent: map[uint32]uint64{}}
}

func (g *responseGuard) onChunk(index uint32, text []byte) *rejection {
	if maxResponseBytes > 0 && g.sent[index]+uint64(len(text)) > maxResponseBytes {
		return &rejection{code: "response_too_long", message: "the response passed its length limit"}
	}
	g.sent[index] += uint64(len(text))
	return nil
}

func main() {}
