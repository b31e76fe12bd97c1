//! Writes the token vocabularies `src/tokens.rs` counts with, at build time.
//!
//! `tiktoken-rs` ships OpenAI's `o200k_base` and `cl100k_base` only inside
//! its `CoreBPE`, whose construction allocates ~60 MB that the allocator
//! then keeps resident in the gateway. Reading the ranks out here, once,
//! leaves the gateway a compact file to embed: for each rank from 0, a
//! little-endian `u16` length and the token's bytes (length 0: no ordinary
//! token has that rank, e.g. a special token).

use std::collections::HashSet;
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rerun-if-changed=build.rs");
    let out = std::env::var("OUT_DIR")?;
    write_vocabulary(
        tiktoken_rs::o200k_base()?,
        &Path::new(&out).join("o200k_base.ranks"),
    )?;
    write_vocabulary(
        tiktoken_rs::cl100k_base()?,
        &Path::new(&out).join("cl100k_base.ranks"),
    )?;
    Ok(())
}

fn write_vocabulary(
    bpe: tiktoken_rs::CoreBPE,
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let special: HashSet<&str> = bpe.special_tokens();
    let is_special = |bytes: &[u8]| std::str::from_utf8(bytes).is_ok_and(|s| special.contains(s));
    // Ranks are dense from 0; specials sit past the end with small gaps.
    let mut data = Vec::with_capacity(3 << 20);
    let (mut rank, mut misses, mut last) = (0u32, 0u32, 0usize);
    while misses < 1024 {
        match bpe.decode_bytes(&[rank]) {
            Ok(bytes) if !bytes.is_empty() && !is_special(&bytes) => {
                let len = u16::try_from(bytes.len())?;
                data.extend_from_slice(&len.to_le_bytes());
                data.extend_from_slice(&bytes);
                last = data.len();
                misses = 0;
            }
            _ => {
                data.extend_from_slice(&0u16.to_le_bytes());
                misses += 1;
            }
        }
        rank += 1;
    }
    data.truncate(last);
    std::fs::write(path, data)?;
    Ok(())
}
