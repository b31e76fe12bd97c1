//! Version 2 of the stamp test guardrail (see `../stamp.rs`).

const VERSION: &str = "v2";

include!("../../stamp.rs");
