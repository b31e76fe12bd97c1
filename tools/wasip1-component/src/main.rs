//! Turns a WASI preview1 reactor core module into a policy component:
//! embeds the WIT world's type information and wraps the module with the
//! preview1 reactor adapter (what `wasm-tools component embed` + `component
//! new --adapt` do). Used by policies/build-other.sh for Go policies, which
//! builds it into target/toolchains/wasip1-component.
//!
//!   weir-wasip1-component CORE.wasm WIT-DIR WORLD OUT.wasm
//!
//! The adapter allocates its stack and state on its first WASI call, which
//! Go's runtime makes while it initialises, before any Go function (such as
//! `cabi_realloc`) may be called; and memory it took with `memory.grow`
//! would overlap Go's heap, which assumes it owns all memory past its data.
//! So a module may reserve memory for the adapter in its data: a region
//! starting with the marker below followed by its size (u32, little endian)
//! and a u32 used as the allocator's offset. This tool then adds a small
//! bump allocator over that region, exported as `cabi_realloc_adapter`,
//! which the adapter uses instead of the module's `cabi_realloc`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{
    CodeSection, ExportKind, ExportSection, Function, FunctionSection, Instruction, MemArg,
    RawSection, TypeSection, ValType,
};
use wasmparser::{DataKind, Operator, Parser, Payload};
use wit_component::{ComponentEncoder, StringEncoding, embed_component_metadata};
use wit_parser::Resolve;

const MARKER: &[u8; 16] = b"weir-adapter-mem";
/// Marker, size, offset: the region's memory follows.
const HEADER: u32 = 24;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [core, wit, world, out] = args.as_slice() else {
        bail!("usage: weir-wasip1-component CORE.wasm WIT-DIR WORLD OUT.wasm");
    };
    let mut module = std::fs::read(core).with_context(|| format!("reading {core}"))?;
    if let Some((at, size)) = adapter_region(&module)? {
        module = add_adapter_realloc(&module, at, size)?;
    }
    let mut resolve = Resolve::new();
    let (package, _) = resolve.push_dir(Path::new(wit))?;
    let world = resolve.select_world(&[package], Some(world))?;
    embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)?;
    let component = ComponentEncoder::default()
        .validate(true)
        .module(&module)?
        .adapter(
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )?
        .encode()?;
    std::fs::write(out, component).with_context(|| format!("writing {out}"))?;
    Ok(())
}

/// The address and size of the region reserved for the adapter, if any: an
/// active data segment holding the marker (at a constant address).
fn adapter_region(module: &[u8]) -> Result<Option<(u32, u32)>> {
    for payload in Parser::new(0).parse_all(module) {
        let Payload::DataSection(reader) = payload? else {
            continue;
        };
        for data in reader {
            let data = data?;
            let DataKind::Active { offset_expr, .. } = data.kind else {
                continue;
            };
            let Some(found) = data
                .data
                .windows(MARKER.len())
                .position(|w| w == MARKER.as_slice())
            else {
                continue;
            };
            let Some(Ok(Operator::I32Const { value: base })) =
                offset_expr.get_operators_reader().into_iter().next()
            else {
                bail!("the adapter region's data segment has no constant address");
            };
            // Go's linker leaves out zero bytes, the size's high ones too.
            let mut size = [0; 4];
            for (to, from) in size.iter_mut().zip(data.data.iter().skip(found + 16)) {
                *to = *from;
            }
            let size = u32::from_le_bytes(size);
            if size == 0 {
                bail!("the adapter region has no size");
            }
            return Ok(Some((base as u32 + found as u32, size)));
        }
    }
    Ok(None)
}

/// The module with `cabi_realloc_adapter(old, old_size, align, size)`: a
/// bump allocator over the region at `at` (never frees; traps when full).
fn add_adapter_realloc(module: &[u8], at: u32, size: u32) -> Result<Vec<u8>> {
    let mut out = wasm_encoder::Module::new();
    let mut reencoder = RoundtripReencoder;
    let (mut imported_funcs, mut defined_funcs, mut realloc_type) = (0, 0, 0);
    let mut code: Option<CodeSection> = None;
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload?;
        match &payload {
            Payload::Version { .. } | Payload::End(_) => continue,
            Payload::TypeSection(reader) => {
                let mut types = TypeSection::new();
                reencoder.parse_type_section(&mut types, reader.clone())?;
                realloc_type = types.len();
                types.ty().function([ValType::I32; 4], [ValType::I32]);
                out.section(&types);
                continue;
            }
            Payload::ImportSection(reader) => {
                for import in reader.clone().into_imports() {
                    if matches!(import?.ty, wasmparser::TypeRef::Func(_)) {
                        imported_funcs += 1;
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                let mut funcs = FunctionSection::new();
                reencoder.parse_function_section(&mut funcs, reader.clone())?;
                defined_funcs = funcs.len();
                funcs.function(realloc_type);
                out.section(&funcs);
                continue;
            }
            Payload::ExportSection(reader) => {
                let mut exports = ExportSection::new();
                reencoder.parse_export_section(&mut exports, reader.clone())?;
                exports.export(
                    "cabi_realloc_adapter",
                    ExportKind::Func,
                    imported_funcs + defined_funcs,
                );
                out.section(&exports);
                continue;
            }
            Payload::CodeSectionStart { .. } => {
                code = Some(CodeSection::new());
                continue;
            }
            Payload::CodeSectionEntry(body) => {
                if let Some(code) = code.as_mut() {
                    code.raw(&module[body.range()]);
                }
                continue;
            }
            _ => {}
        }
        if let Some(mut section) = code.take() {
            section.function(&bump_allocator(at, size));
            out.section(&section);
        }
        if let Some((id, range)) = payload.as_section() {
            out.section(&RawSection {
                id,
                data: &module[range],
            });
        }
    }
    if code.is_some() {
        bail!("the module ended inside its code section");
    }
    Ok(out.finish())
}

fn bump_allocator(at: u32, size: u32) -> Function {
    use Instruction as I;
    let word = MemArg {
        offset: 0,
        align: 2,
        memory_index: 0,
    };
    let start = (at + HEADER) as i32;
    let end = (at + HEADER + size) as i32;
    let offset = (at + 20) as i32;
    // Locals: old (0), old_size (1), align (2), size (3), p (4).
    let mut f = Function::new([(1, ValType::I32)]);
    for i in [
        // The adapter never reallocates.
        I::LocalGet(0),
        I::If(wasm_encoder::BlockType::Empty),
        I::Unreachable,
        I::End,
        // p = (start + offset + align - 1) & -align
        I::I32Const(offset),
        I::I32Load(word),
        I::I32Const(start),
        I::I32Add,
        I::LocalGet(2),
        I::I32Add,
        I::I32Const(1),
        I::I32Sub,
        I::I32Const(0),
        I::LocalGet(2),
        I::I32Sub,
        I::I32And,
        I::LocalTee(4),
        // Trap unless p + size <= end.
        I::LocalGet(3),
        I::I32Add,
        I::I32Const(end),
        I::I32GtU,
        I::If(wasm_encoder::BlockType::Empty),
        I::Unreachable,
        I::End,
        // offset = p + size - start
        I::I32Const(offset),
        I::LocalGet(4),
        I::LocalGet(3),
        I::I32Add,
        I::I32Const(start),
        I::I32Sub,
        I::I32Store(word),
        I::LocalGet(4),
        I::End,
    ] {
        f.instruction(&i);
    }
    f
}
