//! The code `wit-bindgen` generates from `wit/policy.wit`, one module per world.
//!
//! The three worlds import the same `types`, `host` and `kv` interfaces. They
//! are generated once, with the guardrail world, and the router and pricing
//! worlds point at them through `with`, so every policy author sees one
//! `Message`, one `RequestInfo` and so on, whatever world they export.
//!
//! `pub_export_macro` makes wit-bindgen split each world's component-type
//! section in two: the imports go into this crate (unused imports are dropped
//! when the component is made), the exports only into the crate that invokes
//! the world's export macro. That is what lets a guardrail link this crate
//! without also claiming to export a router and a pricing function.

#![allow(missing_docs, unsafe_code, clippy::all, clippy::pedantic)]

/// The `guardrail-policy-with-hooks` world (`guardrail-policy` and the
/// `guardrail-hooks` declaration), and the shared `types`, `host` and `kv`.
pub mod guardrail {
    wit_bindgen::generate!({
        world: "guardrail-policy-with-hooks",
        path: "../../wit",
        generate_all,
        additional_derives: [PartialEq, Eq],
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "::weir_policy::__private::bindings::guardrail",
    });
}

/// The `router-policy` world.
pub mod router {
    wit_bindgen::generate!({
        world: "router-policy",
        path: "../../wit",
        with: {
            "weir:policy/types@0.1.0": crate::bindings::guardrail::weir::policy::types,
            "weir:policy/host@0.1.0": crate::bindings::guardrail::weir::policy::host,
            "weir:policy/kv@0.1.0": crate::bindings::guardrail::weir::policy::kv,
        },
        additional_derives: [PartialEq, Eq],
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "::weir_policy::__private::bindings::router",
    });
}

/// The `pricing-policy` world.
pub mod pricing {
    wit_bindgen::generate!({
        world: "pricing-policy",
        path: "../../wit",
        with: {
            "weir:policy/types@0.1.0": crate::bindings::guardrail::weir::policy::types,
            "weir:policy/host@0.1.0": crate::bindings::guardrail::weir::policy::host,
            "weir:policy/kv@0.1.0": crate::bindings::guardrail::weir::policy::kv,
        },
        additional_derives: [PartialEq, Eq],
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "::weir_policy::__private::bindings::pricing",
    });
}
