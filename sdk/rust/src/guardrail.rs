//! Guardrails: the [`Guardrail`] trait, its verdicts and the glue behind
//! [`export_guardrail!`](crate::export_guardrail).
//!
//! The WIT splits a guardrail in two: a free `on-request` function and a
//! `response-guard` resource, one per response, that gets every text delta.
//! Here both are one trait: the implementing type *is* the per-response state
//! (created by [`Guardrail::new_response`], `Default` unless overridden),
//! `on_request` is an associated function, and every hook has a default that
//! allows or passes, so a policy writes only the hooks it needs.

use core::cell::RefCell;
use core::marker::PhantomData;

use crate::bindings::guardrail::exports::weir::policy::guardrail as wit;
use crate::bindings::guardrail::exports::weir::policy::guardrail_hooks as hooks_wit;
use crate::{ChatRequest, Message, Rejection, RequestInfo, Result, Role};

pub use hooks_wit::Hooks;
pub use wit::{ChunkVerdict, Partial, RequestVerdict};

/// A guardrail policy: implement the hooks you need, then export the type
/// with [`export_guardrail!`](crate::export_guardrail).
///
/// A value of the implementing type lives as long as one response and holds
/// its state: create it in [`new_response`](Guardrail::new_response) (by
/// default `Self::default()`), update it in [`on_chunk`](Guardrail::on_chunk)
/// and [`on_end`](Guardrail::on_end). A response with several choices shares
/// one value; `index` tells the choices apart.
///
/// The gateway gives every request a fresh instance of the component, so
/// nothing a policy keeps in statics crosses requests — unless the policy
/// declares itself [`stateless`](Guardrail::stateless) or the operator opts
/// into instance reuse, so don't rely on either.
pub trait Guardrail: Default + 'static {
    /// Which hooks the gateway calls: asked once when the policy is loaded
    /// (so it may read [`config`](crate::config)), not per request. The
    /// default is both, [`Hooks::all()`].
    ///
    /// A guardrail that only judges requests returns [`Hooks::REQUESTS`]:
    /// the gateway then frees its instance as soon as the request is
    /// allowed and streams the response past it — one call per request
    /// instead of one per streamed delta. [`Hooks::RESPONSES`] alone skips
    /// [`on_request`](Guardrail::on_request).
    fn hooks() -> Hooks {
        Hooks::all()
    }

    /// Whether this guardrail is stateless: `true` promises that nothing of
    /// a request stays in the instance's memory once its response is over
    /// (no request text or per-request counters in statics; a cache of
    /// what it read from [`config`](crate::config) is fine). Asked once
    /// when the policy is loaded. The default is `false`.
    ///
    /// A stateless guardrail skips most of the cost of a fresh instance per
    /// request: the gateway lets one instance serve up to 1000 requests of
    /// one virtual key (never another key's, never after a failure), unless
    /// the operator's `reuse_instances` says otherwise. The per-response
    /// value of the implementing type is still made anew for every
    /// response, so it may hold anything.
    fn stateless() -> bool {
        false
    }

    /// Inspect a request before it is routed: allow it, deny it, or rewrite
    /// its messages. The default allows everything.
    fn on_request(info: RequestInfo, req: ChatRequest) -> Result<RequestVerdict> {
        let _ = (info, req);
        Ok(RequestVerdict::Allow)
    }

    /// Create the state for one response, once `on_request` allowed its
    /// request. The default is `Self::default()`.
    fn new_response(info: RequestInfo) -> Self {
        let _ = info;
        Self::default()
    }

    /// Judge streamed text for choice `index`.
    ///
    /// `text` is what this guard held for the choice (after a
    /// [`ChunkVerdict::Hold`] or the hold part of a [`ChunkVerdict::Partial`])
    /// followed by the newest delta. A non-streamed response is one call with
    /// its whole text. The default passes everything.
    fn on_chunk(&mut self, index: u32, text: String) -> Result<ChunkVerdict> {
        let _ = (index, text);
        Ok(ChunkVerdict::Pass)
    }

    /// The choice `index` ended: `held` is what this guard still holds (empty
    /// if nothing), `full` everything it was offered for the choice.
    /// [`ChunkVerdict::Pass`] releases `held`; `Hold` counts as `Pass`,
    /// `Partial` releases both parts. The default passes.
    fn on_end(&mut self, index: u32, held: String, full: String) -> Result<ChunkVerdict> {
        let _ = (index, held, full);
        Ok(ChunkVerdict::Pass)
    }
}

impl RequestVerdict {
    /// Refuse the request; the client gets 400 `content_filter` with
    /// `message`. Say why without echoing the offending text.
    pub fn deny(message: impl Into<String>) -> Self {
        Self::Deny(Rejection::new(message))
    }
}

impl ChunkVerdict {
    /// Release `release` now and hold `hold`, which comes back in front of
    /// the next delta.
    pub fn partial(release: impl Into<String>, hold: impl Into<String>) -> Self {
        Self::Partial(Partial {
            release: release.into(),
            hold: hold.into(),
        })
    }

    /// Stop the response: the choice ends with `finish_reason:
    /// "content_filter"` and nothing held or offered is sent.
    pub fn block(message: impl Into<String>) -> Self {
        Self::Block(Rejection::new(message))
    }
}

impl Rejection {
    /// A rejection with the gateway's default code (`content_filter`).
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            code: String::new(),
            message: message.into(),
        }
    }

    /// A rejection with its own `error.code` for the client.
    pub fn with_code(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl Message {
    /// A plain text message with no tool calls.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

impl Role {
    /// The role's name as the OpenAI API spells it: `"system"`,
    /// `"developer"`, `"user"`, `"assistant"` or `"tool"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }

    /// The role named `name` (as [`Role::as_str`] spells it).
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Role::System,
            Role::Developer,
            Role::User,
            Role::Assistant,
            Role::Tool,
        ]
        .into_iter()
        .find(|role| role.as_str() == name)
    }
}

impl RequestInfo {
    /// The metadata value named `name`, if the request carried one.
    pub fn metadata(&self, name: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Implements the generated `Guest` trait for any [`Guardrail`].
#[doc(hidden)]
pub struct GuardrailExport<T>(PhantomData<T>);

/// The `response-guard` resource for any [`Guardrail`].
#[doc(hidden)]
pub struct ResponseGuardExport<T>(RefCell<T>);

impl<T: Guardrail> wit::Guest for GuardrailExport<T> {
    type ResponseGuard = ResponseGuardExport<T>;

    fn on_request(info: RequestInfo, req: ChatRequest) -> Result<RequestVerdict> {
        T::on_request(info, req)
    }
}

impl<T: Guardrail> hooks_wit::Guest for GuardrailExport<T> {
    fn needs() -> Hooks {
        T::hooks()
    }

    fn stateless() -> bool {
        T::stateless()
    }
}

impl<T: Guardrail> wit::GuestResponseGuard for ResponseGuardExport<T> {
    fn new(info: RequestInfo) -> Self {
        Self(RefCell::new(T::new_response(info)))
    }

    fn on_chunk(&self, index: u32, text: String) -> Result<ChunkVerdict> {
        self.0.borrow_mut().on_chunk(index, text)
    }

    fn on_end(&self, index: u32, held: String, full: String) -> Result<ChunkVerdict> {
        self.0.borrow_mut().on_end(index, held, full)
    }
}

/// Export a [`Guardrail`] as this component's `weir:policy/guardrail`.
///
/// Invoke it once, at the top level of a `cdylib` crate built for
/// `wasm32-wasip2`. Natively it only checks that the type is a
/// [`Guardrail`], so the crate's unit tests build anywhere.
///
/// ```no_run
/// #[derive(Default)]
/// struct MyPolicy;
///
/// impl weir_policy::Guardrail for MyPolicy {}
///
/// weir_policy::export_guardrail!(MyPolicy);
/// ```
#[macro_export]
macro_rules! export_guardrail {
    ($ty:ty) => {
        // The component's entry points, named `weir:policy/guardrail@0.1.0#…`.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __WeirGuardrail = $crate::__private::GuardrailExport<$ty>;
            $crate::__private::bindings::guardrail::export!(
                __WeirGuardrail with_types_in $crate::__private::bindings::guardrail
            );
        };
        // Natively (unit tests, docs) there is no component to export to;
        // only check that the type is a `Guardrail`.
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            const fn is_guardrail<T: $crate::Guardrail>() {}
            is_guardrail::<$ty>();
        };
    };
}
