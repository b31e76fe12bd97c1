//! Host bindings generated from `wit/`, one module per world. The router
//! and pricing worlds reuse the guardrail world's `types`, `host` and `kv`
//! bindings, so there is one Rust type per WIT type.

#![allow(missing_docs, clippy::all, unsafe_code)]

pub mod guardrail {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "guardrail-policy",
        imports: {
            "weir:policy/kv": async | trappable,
            default: trappable,
        },
        exports: { default: async },
    });
}

pub mod router {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "router-policy",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "weir:policy/types": super::guardrail::weir::policy::types,
            "weir:policy/host": super::guardrail::weir::policy::host,
            "weir:policy/kv": super::guardrail::weir::policy::kv,
        },
    });
}

pub mod pricing {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "pricing-policy",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "weir:policy/types": super::guardrail::weir::policy::types,
            "weir:policy/host": super::guardrail::weir::policy::host,
            "weir:policy/kv": super::guardrail::weir::policy::kv,
        },
    });
}

/// `weir:policy/guardrail-hooks`: the optional export of the
/// `guardrail-policy-with-hooks` world, read once per load.
pub mod hooks {
    /// The interface's name, as the component exports it.
    pub const INTERFACE: &str = "weir:policy/guardrail-hooks@0.1.0";

    wasmtime::component::flags! {
        Hooks {
            #[component(name = "requests")]
            const REQUESTS;
            #[component(name = "responses")]
            const RESPONSES;
        }
    }
}
