//! wasi:cli and wasi:io inside the component, so a Rust policy imports only
//! `weir:policy`.
//!
//! Rust's standard library for `wasm32-wasip2` reaches WASI through
//! wasi-libc, and its panic and print machinery pulls in 19 functions of
//! `wasi:cli` (environment, exit, stdin, stdout, stderr, terminals) and
//! `wasi:io` (streams, poll, error) even in a policy that never prints.
//! The gateway instantiates a policy per request, and wasmtime spends
//! ~18k instructions per instantiation on those imports alone (measured
//! with callgrind: one guardrail's request 340.6k → 321.1k), so this
//! module defines the symbols wasi-libc imports them by
//! (`__wasm_import_*`), which the linker then resolves here instead of
//! importing them. What a policy sees is what the gateway's locked-down
//! WASI gave it:
//!
//! - no environment variables, arguments or working directory;
//! - stdout and stderr lines go to the gateway's log through
//!   `weir:policy/host.log` (stdout at info, stderr — where a panic's
//!   message goes — at warn), tagged with the policy and the request;
//! - stdin is empty, `exit` traps, nothing is a terminal, every pollable
//!   is ready (a `sleep` returns at once).
//!
//! Streams and pollables of other WASI interfaces (files, sockets — which
//! the gateway denies anyway) read as closed here. Turn the SDK's
//! `wasi-stdio` feature on to import the real interfaces instead.
//!
//! The signatures are those of the canonical ABI's lowering (a result
//! wider than one value is written through the last, pointer, argument);
//! a mismatch would show as a `signature_mismatch:` function in the linked
//! module, which the gateway's tests would hit as a trap.
//!
//! The functions are also exported from the core module (Rust exports
//! every `no_mangle` function of a `cdylib`); the component does not
//! export them.

#![allow(unsafe_code, missing_docs, clippy::missing_safety_doc)]

use std::cell::RefCell;

use crate::bindings::guardrail::weir::policy::host::{Level, log};

/// Handles this module hands out for the three standard streams.
const STDIN: u32 = 1;
const STDOUT: u32 = 2;
const STDERR: u32 = 3;
/// The handle of every pollable.
const POLLABLE: u32 = 4;

/// A line longer than this is logged in pieces.
const MAX_LINE: usize = 4096;

thread_local! {
    /// The unfinished lines of stdout and stderr.
    static LINES: RefCell<[Vec<u8>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
}

unsafe extern "C" {
    /// wasi-libc's allocator, which frees what these functions return.
    fn malloc(size: usize) -> *mut u8;
}

/// Write `(ptr, len)` of an empty list or string at `ret`. The pointer is a
/// real allocation, as wasi-libc may free it.
unsafe fn empty_list(ret: *mut u32) {
    unsafe {
        ret.write(malloc(1) as u32);
        ret.add(1).write(0);
    }
}

/// `result<_, stream-error>` (or an `option`) with tag `tag`.
unsafe fn tag(ret: *mut u8, tag: u8) {
    unsafe { ret.write(tag) }
}

/// `err(stream-error::closed)` of a result whose payload is at `payload`.
unsafe fn closed(ret: *mut u8, payload: usize) {
    unsafe {
        ret.write(1);
        ret.add(payload).write(1);
    }
}

/// Append `bytes` to the stream's line; log each completed line.
fn write_out(stream: u32, bytes: &[u8]) {
    let (index, level) = match stream {
        STDOUT => (0, Level::Info),
        STDERR => (1, Level::Warn),
        _ => return,
    };
    LINES.with_borrow_mut(|lines| {
        let line = &mut lines[index];
        for &byte in bytes {
            if byte != b'\n' {
                line.push(byte);
            }
            if byte == b'\n' || line.len() >= MAX_LINE {
                log(level, String::from_utf8_lossy(line).trim_end());
                line.clear();
            }
        }
    });
}

/// The stand-ins, one per line: the symbol wasi-libc imports, its
/// core-ABI arguments (`ret` last where the result goes through memory),
/// its result where it returns one, and what it does.
macro_rules! stand_ins {
    ($($name:ident($($arg:ident: $ty:ty),*) $(-> $out:ty)? => $body:expr;)*) => {
        $(
            #[unsafe(no_mangle)]
            unsafe extern "C" fn $name($($arg: $ty),*) $(-> $out)? {
                #[allow(unused_unsafe)]
                unsafe { $body }
            }
        )*
    };
}

stand_ins! {
    // wasi:cli/environment and exit
    __wasm_import_environment_get_environment(ret: *mut u32) => empty_list(ret);
    __wasm_import_environment_get_arguments(ret: *mut u32) => empty_list(ret);
    __wasm_import_environment_initial_cwd(ret: *mut u8) => tag(ret, 0);
    __wasm_import_exit_exit(_status: u32) => core::arch::wasm32::unreachable();

    // wasi:cli/stdin, stdout, stderr and the terminals (none)
    __wasm_import_stdin_get_stdin() -> u32 => STDIN;
    __wasm_import_stdout_get_stdout() -> u32 => STDOUT;
    __wasm_import_stderr_get_stderr() -> u32 => STDERR;
    __wasm_import_terminal_stdin_get_terminal_stdin(ret: *mut u8) => tag(ret, 0);
    __wasm_import_terminal_stdout_get_terminal_stdout(ret: *mut u8) => tag(ret, 0);
    __wasm_import_terminal_stderr_get_terminal_stderr(ret: *mut u8) => tag(ret, 0);
    __wasm_import_terminal_input_terminal_input_drop(_handle: u32) => ();
    __wasm_import_terminal_output_terminal_output_drop(_handle: u32) => ();

    // wasi:io/error
    __wasm_import_io_error_error_drop(_handle: u32) => ();
    __wasm_import_io_error_method_error_to_debug_string(_error: u32, ret: *mut u32) =>
        empty_list(ret);

    // wasi:io/poll: every pollable is ready.
    __wasm_import_poll_pollable_drop(_handle: u32) => ();
    __wasm_import_poll_method_pollable_ready(_pollable: u32) -> bool => true;
    __wasm_import_poll_method_pollable_block(_pollable: u32) => ();
    __wasm_import_poll_poll(_pollables: *const u32, len: usize, ret: *mut u32) => all_ready(len, ret);

    // wasi:io/streams: input streams (stdin, and any other) are closed.
    __wasm_import_streams_input_stream_drop(_handle: u32) => ();
    __wasm_import_streams_method_input_stream_read(_stream: u32, _len: u64, ret: *mut u8) =>
        closed(ret, 4);
    __wasm_import_streams_method_input_stream_blocking_read(_stream: u32, _len: u64, ret: *mut u8) =>
        closed(ret, 4);
    __wasm_import_streams_method_input_stream_skip(_stream: u32, _len: u64, ret: *mut u8) =>
        closed(ret, 8);
    __wasm_import_streams_method_input_stream_blocking_skip(_stream: u32, _len: u64, ret: *mut u8) =>
        closed(ret, 8);
    __wasm_import_streams_method_input_stream_subscribe(_stream: u32) -> u32 => POLLABLE;

    // wasi:io/streams: output streams. stdout and stderr go to the log; any
    // other stream takes everything and keeps nothing; nothing can be
    // spliced from a closed input stream.
    __wasm_import_streams_output_stream_drop(_handle: u32) => ();
    __wasm_import_streams_method_output_stream_check_write(_stream: u32, ret: *mut u8) => {
        tag(ret, 0);
        ret.add(8).cast::<u64>().write(64 << 10);
    };
    __wasm_import_streams_method_output_stream_write(
        stream: u32, ptr: *const u8, len: usize, ret: *mut u8
    ) => write(stream, ptr, len, ret);
    __wasm_import_streams_method_output_stream_blocking_write_and_flush(
        stream: u32, ptr: *const u8, len: usize, ret: *mut u8
    ) => write(stream, ptr, len, ret);
    __wasm_import_streams_method_output_stream_flush(_stream: u32, ret: *mut u8) => tag(ret, 0);
    __wasm_import_streams_method_output_stream_blocking_flush(_stream: u32, ret: *mut u8) =>
        tag(ret, 0);
    __wasm_import_streams_method_output_stream_write_zeroes(_stream: u32, _len: u64, ret: *mut u8) =>
        tag(ret, 0);
    __wasm_import_streams_method_output_stream_blocking_write_zeroes_and_flush(
        _stream: u32, _len: u64, ret: *mut u8
    ) => tag(ret, 0);
    __wasm_import_streams_method_output_stream_splice(
        _stream: u32, _source: u32, _len: u64, ret: *mut u8
    ) => closed(ret, 8);
    __wasm_import_streams_method_output_stream_blocking_splice(
        _stream: u32, _source: u32, _len: u64, ret: *mut u8
    ) => closed(ret, 8);
    __wasm_import_streams_method_output_stream_subscribe(_stream: u32) -> u32 => POLLABLE;
}

/// `poll`'s answer: every one of the `len` pollables is ready.
unsafe fn all_ready(len: usize, ret: *mut u32) {
    unsafe {
        let ready = malloc(len.max(1) * 4).cast::<u32>();
        for i in 0..len {
            ready.add(i).write(i as u32);
        }
        ret.write(ready as u32);
        ret.add(1).write(len as u32);
    }
}

/// `write` and `blocking-write-and-flush`: log what goes to stdout or
/// stderr, then `ok`.
unsafe fn write(stream: u32, ptr: *const u8, len: usize, ret: *mut u8) {
    unsafe {
        write_out(stream, core::slice::from_raw_parts(ptr, len));
        tag(ret, 0);
    }
}
