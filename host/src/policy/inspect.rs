//! `weir policy inspect`: which worlds a component implements and what it
//! imports, read from the component's type after compiling it.

use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use super::PolicyEngine;

/// What a component offers and needs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inspection {
    /// `weir:policy` worlds whose exports it has.
    pub worlds: Vec<&'static str>,
    pub exports: Vec<String>,
    pub imports: Vec<String>,
    /// Imports outside `weir:policy` and WASI (the gateway cannot satisfy them).
    pub unsatisfiable: Vec<String>,
    pub size_bytes: usize,
    pub digest: String,
}

/// Inspect a compiled component.
pub fn inspect(engine: &PolicyEngine, component: &Component, bytes: &[u8]) -> Inspection {
    let ty = component.component_type();
    let engine_ref = engine.engine();
    let imports: Vec<String> = ty
        .imports(engine_ref)
        .map(|(name, item)| format!("{name}{}", kind(&item.ty)))
        .collect();
    let exports: Vec<String> = ty
        .exports(engine_ref)
        .map(|(name, item)| format!("{name}{}", kind(&item.ty)))
        .collect();
    let has = |prefix: &str| exports.iter().any(|e| e.starts_with(prefix));
    let mut worlds = Vec::new();
    if has("weir:policy/guardrail@") {
        worlds.push(if has("weir:policy/guardrail-hooks@") {
            "weir:policy/guardrail-policy-with-hooks"
        } else {
            "weir:policy/guardrail-policy"
        });
    }
    if has("weir:policy/router@") {
        worlds.push("weir:policy/router-policy");
    }
    if has("weir:policy/pricing@") {
        worlds.push("weir:policy/pricing-policy");
    }
    let unsatisfiable = ty
        .imports(engine_ref)
        .map(|(name, _)| name.to_string())
        .filter(|name| !name.starts_with("weir:policy/") && !name.starts_with("wasi:"))
        .collect();
    Inspection {
        worlds,
        exports,
        imports,
        unsatisfiable,
        size_bytes: bytes.len(),
        digest: super::digest(bytes),
    }
}

fn kind(item: &ComponentItem) -> &'static str {
    match item {
        ComponentItem::ComponentInstance(_) => " (interface)",
        ComponentItem::ComponentFunc(_) => " (function)",
        ComponentItem::Resource(_) => " (resource)",
        ComponentItem::Type(_) => " (type)",
        ComponentItem::Component(_) => " (component)",
        ComponentItem::Module(_) => " (module)",
        ComponentItem::CoreFunc(_) => " (core function)",
    }
}
