//! The `weir` binary: see `weir --help`.

#![forbid(unsafe_code)]

/// mimalloc (`weir::alloc`): the request path allocates many small
/// short-lived buffers (JSON values, chunks, headers); measured ~10% less
/// proxy CPU than glibc's allocator on the load benchmark.
#[global_allocator]
static ALLOCATOR: weir::alloc::Allocator = weir::alloc::Allocator;

fn main() -> std::process::ExitCode {
    weir::cli::main()
}
