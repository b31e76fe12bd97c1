//! The four `weir:policy/guardrail` exports, called without bindgen's
//! per-instance type checks.
//!
//! bindgen's `GuardrailPolicyPre::instantiate_async` type-checks every
//! export of every new instance (~5k instructions each for these records
//! and variants: 15k per request with three guardrails, ~5 % of what they
//! cost). The types depend only on the component, so this checks them on
//! the first instance of a loaded component (the load's smoke call) and
//! trusts them for every later instance of the same [`InstancePre`].

use std::sync::atomic::{AtomicBool, Ordering};

use wasmtime::component::{
    ComponentExportIndex, Func, Instance, InstancePre, ResourceAny, TypedFunc,
};
use wasmtime::{AsContextMut, Result, format_err};

use super::bindings::guardrail::exports::weir::policy::guardrail::{ChunkVerdict, RequestVerdict};
use super::bindings::guardrail::weir::policy::types::{ChatRequest, PolicyError, RequestInfo};

/// The interface's name, as the component exports it.
const INTERFACE: &str = "weir:policy/guardrail@0.1.0";

// Each export's parameters and results, as bindgen types them.
type OnRequest<'a> = (&'a RequestInfo, &'a ChatRequest);
type Constructor<'a> = (&'a RequestInfo,);
type OnChunk<'a> = (ResourceAny, u32, &'a str);
type OnEnd<'a> = (ResourceAny, u32, &'a str, &'a str);
type RequestResult = (Result<RequestVerdict, PolicyError>,);
type ChunkResult = (Result<ChunkVerdict, PolicyError>,);

/// A guardrail export whose type is not the one `weir:policy/guardrail`
/// gives it: the component implements some other world.
#[derive(Debug, thiserror::Error)]
#[error("`{name}` has the wrong type: {reason}")]
pub struct Mistyped {
    name: &'static str,
    reason: String,
}

/// A guardrail component ready to instantiate, its exports found by
/// name once.
pub struct GuardrailPre<T: 'static> {
    pre: InstancePre<T>,
    /// `on-request`, `[constructor]response-guard`,
    /// `[method]response-guard.on-chunk`, `[method]response-guard.on-end`.
    exports: [ComponentExportIndex; 4],
    /// Set once an instance's exports passed the type checks.
    checked: AtomicBool,
}

/// One instance's guardrail exports.
#[derive(Clone, Copy)]
pub struct Guardrail {
    instance: Instance,
    on_request: Func,
    constructor: Func,
    on_chunk: Func,
    on_end: Func,
}

impl<T: Send + 'static> GuardrailPre<T> {
    /// Find the exports; an error names the one missing.
    pub fn new(pre: InstancePre<T>) -> Result<Self> {
        let component = pre.component();
        let interface = component
            .get_export_index(None, INTERFACE)
            .ok_or_else(|| format_err!("no exported instance named `{INTERFACE}`"))?;
        let find = |name: &str| {
            component
                .get_export_index(Some(&interface), name)
                .ok_or_else(|| format_err!("`{INTERFACE}` does not export `{name}`"))
        };
        Ok(GuardrailPre {
            exports: [
                find("on-request")?,
                find("[constructor]response-guard")?,
                find("[method]response-guard.on-chunk")?,
                find("[method]response-guard.on-end")?,
            ],
            pre,
            checked: AtomicBool::new(false),
        })
    }

    /// A new instance in `store`. The first one's exports are
    /// type-checked against the signatures below; later ones rely on
    /// that.
    pub async fn instantiate_async(
        &self,
        mut store: impl AsContextMut<Data = T>,
    ) -> Result<Guardrail> {
        let mut store = store.as_context_mut();
        let instance = self.pre.instantiate_async(&mut store).await?;
        let [on_request, constructor, on_chunk, on_end] = self.exports.map(|index| {
            instance
                .get_func(&mut store, index)
                .ok_or_else(|| format_err!("a guardrail export is not a function"))
        });
        let exports = Guardrail {
            instance,
            on_request: on_request?,
            constructor: constructor?,
            on_chunk: on_chunk?,
            on_end: on_end?,
        };
        if !self.checked.load(Ordering::Acquire) {
            let mistyped = |name: &'static str| {
                move |e: wasmtime::Error| Mistyped {
                    name,
                    reason: format!("{e:#}"),
                }
            };
            let e = &exports;
            e.on_request
                .typed::<OnRequest<'_>, RequestResult>(&store)
                .map_err(mistyped("on-request"))?;
            e.constructor
                .typed::<Constructor<'_>, (ResourceAny,)>(&store)
                .map_err(mistyped("[constructor]response-guard"))?;
            e.on_chunk
                .typed::<OnChunk<'_>, ChunkResult>(&store)
                .map_err(mistyped("[method]response-guard.on-chunk"))?;
            e.on_end
                .typed::<OnEnd<'_>, ChunkResult>(&store)
                .map_err(mistyped("[method]response-guard.on-end"))?;
            self.checked.store(true, Ordering::Release);
        }
        Ok(exports)
    }
}

// SAFETY (every `new_unchecked` below): a `Guardrail` is only made by
// `GuardrailPre::instantiate_async`, which returns one only once
// `checked` is set, i.e. after `Func::typed` accepted these exact
// signatures for an instance of the same `InstancePre`. An export's
// type is a property of the component, the same in every instance.
#[allow(unsafe_code)]
impl Guardrail {
    /// The instance these exports belong to.
    pub fn instance(&self) -> Instance {
        self.instance
    }

    /// `on-request`.
    pub async fn call_on_request<S: AsContextMut<Data: Send>>(
        &self,
        mut store: S,
        info: &RequestInfo,
        req: &ChatRequest,
    ) -> Result<Result<RequestVerdict, PolicyError>> {
        let f: TypedFunc<OnRequest<'_>, RequestResult> =
            unsafe { TypedFunc::new_unchecked(self.on_request) };
        Ok(f.call_async(store.as_context_mut(), (info, req)).await?.0)
    }

    /// `[constructor]response-guard`.
    pub async fn call_constructor<S: AsContextMut<Data: Send>>(
        &self,
        mut store: S,
        info: &RequestInfo,
    ) -> Result<ResourceAny> {
        let f: TypedFunc<Constructor<'_>, (ResourceAny,)> =
            unsafe { TypedFunc::new_unchecked(self.constructor) };
        Ok(f.call_async(store.as_context_mut(), (info,)).await?.0)
    }

    /// `[method]response-guard.on-chunk`.
    pub async fn call_on_chunk<S: AsContextMut<Data: Send>>(
        &self,
        mut store: S,
        guard: ResourceAny,
        index: u32,
        text: &str,
    ) -> Result<Result<ChunkVerdict, PolicyError>> {
        let f: TypedFunc<OnChunk<'_>, ChunkResult> =
            unsafe { TypedFunc::new_unchecked(self.on_chunk) };
        Ok(f.call_async(store.as_context_mut(), (guard, index, text))
            .await?
            .0)
    }

    /// `[method]response-guard.on-end`.
    pub async fn call_on_end<S: AsContextMut<Data: Send>>(
        &self,
        mut store: S,
        guard: ResourceAny,
        index: u32,
        held: &str,
        full: &str,
    ) -> Result<Result<ChunkVerdict, PolicyError>> {
        let f: TypedFunc<OnEnd<'_>, ChunkResult> = unsafe { TypedFunc::new_unchecked(self.on_end) };
        Ok(
            f.call_async(store.as_context_mut(), (guard, index, held, full))
                .await?
                .0,
        )
    }
}
