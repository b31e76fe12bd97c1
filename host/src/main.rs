//! The `weir` binary: see `weir --help`.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    weir::cli::main()
}
