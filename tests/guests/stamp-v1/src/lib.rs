//! Version 1 of the stamp test guardrail (see `../stamp.rs`).

const VERSION: &str = "v1";

include!("../../stamp.rs");
