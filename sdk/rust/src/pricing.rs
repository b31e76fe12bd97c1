//! Pricing: the [`Pricing`] trait and the glue behind
//! [`export_pricing!`](crate::export_pricing).

use core::marker::PhantomData;

use crate::bindings::pricing::exports::weir::policy::pricing as wit;
use crate::{RequestInfo, Result, Usage};

pub use wit::Phase;

/// A pricing policy: what a request costs. Export the type with
/// [`export_pricing!`](crate::export_pricing).
pub trait Pricing: 'static {
    /// The cost in micro-USD (1 USD = 1,000,000) of `usage` on
    /// `provider`/`model` (the provider's model name). In
    /// [`Phase::Estimate`] `usage` is the gateway's guess before sending, for
    /// budget checks; in [`Phase::Actual`] it is what the provider reported,
    /// and the result is what is charged.
    fn price(
        info: RequestInfo,
        phase: Phase,
        provider: String,
        model: String,
        usage: Usage,
    ) -> Result<u64>;
}

/// Implements the generated `Guest` trait for any [`Pricing`].
#[doc(hidden)]
pub struct PricingExport<T>(PhantomData<T>);

impl<T: Pricing> wit::Guest for PricingExport<T> {
    fn price(
        info: RequestInfo,
        phase: Phase,
        provider: String,
        model: String,
        usage: Usage,
    ) -> Result<u64> {
        T::price(info, phase, provider, model, usage)
    }
}

/// Export a [`Pricing`] policy as this component's `weir:policy/pricing`.
///
/// ```no_run
/// use weir_policy::prelude::*;
///
/// /// $1 per million input tokens, $3 per million output tokens; cached
/// /// input at a tenth of the price.
/// struct Flat;
///
/// impl Pricing for Flat {
///     fn price(_: RequestInfo, _: Phase, _: String, _: String, usage: Usage) -> Result<u64> {
///         let cached = usage.cached_input_tokens.min(usage.input_tokens);
///         let fresh = usage.input_tokens - cached;
///         // micro-USD per token: $1/Mtok = 1 µUSD per token.
///         Ok(fresh + cached / 10 + 3 * usage.output_tokens)
///     }
/// }
///
/// weir_policy::export_pricing!(Flat);
/// ```
#[macro_export]
macro_rules! export_pricing {
    ($ty:ty) => {
        // The component's entry points, named `weir:policy/pricing@0.1.0#…`.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __WeirPricing = $crate::__private::PricingExport<$ty>;
            $crate::__private::bindings::pricing::export!(
                __WeirPricing with_types_in $crate::__private::bindings::pricing
            );
        };
        // Natively (unit tests, docs) there is no component to export to;
        // only check that the type is a `Pricing`.
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            const fn is_pricing<T: $crate::Pricing>() {}
            is_pricing::<$ty>();
        };
    };
}
