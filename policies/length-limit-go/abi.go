// Canonical-ABI glue for the guardrail-policy world (wit/policy.wit), by
// hand: the few imports and exports this policy uses, with the core names
// and memory layouts `wit-bindgen` would give them. If wit/policy.wit
// changes these functions or types, change them here too (build-other.sh
// warns when wit.sha256 no longer matches wit/policy.wit).
//
// Memory the gateway writes into (arguments, strings returned by imports)
// comes from cabi_realloc; it is kept reachable in `pinned` until the call
// that received it is done, so Go's garbage collector cannot reuse it
// while the gateway or this code still reads it. Results returned to the
// gateway stay pinned until its post-return call.
package main

import (
	"runtime"
	"runtime/debug"
	"unsafe"
)

// The gateway calls cabi_realloc (to pass arguments in) and post-return
// functions at times when the component may not call out of itself; a Go
// garbage collection (or heap profile sample) started by an allocation there
// would read the clock through WASI and trap. So the collector only runs
// where calling out is allowed: when an exported function starts, once
// cabi_realloc and results have allocated gcEvery bytes since the last
// collection.
const gcEvery = 4 << 20

var allocated uint64

func init() {
	debug.SetGCPercent(-1)
	runtime.MemProfileRate = 0
}

func collectIfDue() {
	if allocated >= gcEvery {
		allocated = 0
		runtime.GC()
	}
}

var (
	pinned [][]uint64
	empty  uint64 // where zero-length allocations point
)

func pin(b []uint64) { pinned = append(pinned, b) }

// unpin forgets everything pinned during the current call.
func unpin() {
	clear(pinned)
	pinned = pinned[:0]
}

//go:wasmexport cabi_realloc
func cabiRealloc(oldPtr unsafe.Pointer, oldSize, align, newSize uint32) unsafe.Pointer {
	if newSize == 0 {
		return unsafe.Pointer(&empty)
	}
	// 8-byte words: aligned for every canonical-ABI type.
	b := make([]uint64, (newSize+7)/8)
	allocated += uint64(newSize)
	pin(b)
	p := unsafe.Pointer(unsafe.SliceData(b))
	if oldPtr != nil && oldSize > 0 {
		copy(unsafe.Slice((*byte)(p), min(oldSize, newSize)), unsafe.Slice((*byte)(oldPtr), oldSize))
	}
	return p
}

// adapterArena is memory for the WASI preview1 adapter (its stack and
// state), which allocates during Go's runtime initialisation, before any Go
// function can be called. weir-wasip1-component finds it by its marker and
// gives the adapter a small allocator over it (`cabi_realloc_adapter`).
// Only the marker is stored in the module: Go's linker leaves out zeroes.
var adapterArena = struct {
	marker [16]byte
	size   uint32
	_      [4]byte
	memory [4 << 16]byte
}{
	marker: [16]byte{'w', 'e', 'i', 'r', '-', 'a', 'd', 'a', 'p', 't', 'e', 'r', '-', 'm', 'e', 'm'},
	size:   4 << 16,
}

// Keeps adapterArena in the module (the linker drops unreferenced data).
var adapterArenaAddr uintptr

func init() { adapterArenaAddr = uintptr(unsafe.Pointer(&adapterArena)) }

// Linear-memory addresses the gateway passes as u32s (`go vet` flags the
// conversion; the memory behind them is pinned).
func ptr(addr uint32) unsafe.Pointer { return unsafe.Pointer(uintptr(addr)) }

func u32At(addr uint32) uint32 { return *(*uint32)(ptr(addr)) }

func bytesAt(addr, n uint32) []byte {
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(ptr(addr)), n)
}

// A string the gateway will read after the call returns; stays pinned
// until post-return.
func lowerString(s string, at unsafe.Pointer) {
	words := make([]uint64, (len(s)+7)/8)
	allocated += uint64(len(s))
	pin(words)
	copy(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(words))), len(s)), s)
	out := (*[2]uint32)(at)
	out[0] = uint32(uintptr(unsafe.Pointer(unsafe.SliceData(words))))
	out[1] = uint32(len(s))
}

// weir:policy/types.rejection
type rejection struct{ code, message string }

// --- imports ---

//go:wasmimport weir:policy/host@0.1.0 config
func hostConfigImport(ret unsafe.Pointer)

// host.config: the policy's config as JSON text.
func hostConfig() string {
	var ret [2]uint32
	hostConfigImport(unsafe.Pointer(&ret))
	return string(bytesAt(ret[0], ret[1]))
}

//go:wasmimport [export]weir:policy/guardrail@0.1.0 [resource-new]response-guard
func resourceNewResponseGuard(rep uint32) uint32

// --- exports: weir:policy/guardrail ---

// result<request-verdict, policy-error>: tag u8 @0, request-verdict @4
// (tag u8 @4; deny's rejection @8: code ptr, len, message ptr, len).
// result<chunk-verdict, policy-error>: the same, with block (tag 4) @8.
var retArea [6]uint32

func setRet(okVariant uint32, r *rejection) uint32 {
	retArea = [6]uint32{}
	if r != nil {
		retArea[1] = okVariant
		lowerString(r.code, unsafe.Pointer(&retArea[2]))
		lowerString(r.message, unsafe.Pointer(&retArea[4]))
	}
	return uint32(uintptr(unsafe.Pointer(&retArea)))
}

// on-request(info: request-info, req: chat-request): 16 flat parameters,
// request-info's ten then chat-request's six. A message is 32 bytes, its
// content string at offset 4.
//
//go:wasmexport weir:policy/guardrail@0.1.0#on-request
func exportOnRequest(_, _, _, _, _, _, _, _, _, _ uint32, messages, nMessages, _, _, _, _ uint32) uint32 {
	collectIfDue()
	var total uint64
	for i := range nMessages {
		total += uint64(u32At(messages + 32*i + 8))
	}
	return setRet(1, onRequest(total)) // deny
}

//go:wasmexport cabi_post_weir:policy/guardrail@0.1.0#on-request
func postOnRequest(uint32) { unpin() }

var (
	guards  = map[uint32]*responseGuard{}
	nextRep uint32
)

//go:wasmexport weir:policy/guardrail@0.1.0#[constructor]response-guard
func exportNewResponseGuard(_, _, _, _, _, _, _, _, _, _ uint32) uint32 {
	defer unpin()
	collectIfDue()
	nextRep++
	guards[nextRep] = newResponseGuard()
	return resourceNewResponseGuard(nextRep)
}

//go:wasmexport weir:policy/guardrail@0.1.0#[dtor]response-guard
func exportDropResponseGuard(rep uint32) { delete(guards, rep) }

//go:wasmexport weir:policy/guardrail@0.1.0#[method]response-guard.on-chunk
func exportOnChunk(rep, index, text, textLen uint32) uint32 {
	collectIfDue()
	return setRet(4, guards[rep].onChunk(index, bytesAt(text, textLen))) // block
}

//go:wasmexport cabi_post_weir:policy/guardrail@0.1.0#[method]response-guard.on-chunk
func postOnChunk(uint32) { unpin() }

// on-end(index, held, full): pass, releasing what is held.
//
//go:wasmexport weir:policy/guardrail@0.1.0#[method]response-guard.on-end
func exportOnEnd(_, _, _, _, _, _ uint32) uint32 {
	collectIfDue()
	return setRet(0, nil)
}

//go:wasmexport cabi_post_weir:policy/guardrail@0.1.0#[method]response-guard.on-end
func postOnEnd(uint32) { unpin() }
