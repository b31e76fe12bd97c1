//! Routers: the [`Router`] trait and the glue behind
//! [`export_router!`](crate::export_router).

use core::marker::PhantomData;

use crate::bindings::router::exports::weir::policy::router as wit;
use crate::{ChatRequest, RequestInfo, Result};

pub use wit::Candidate;

/// A router policy: orders a model's targets for one request. Export the
/// type with [`export_router!`](crate::export_router).
pub trait Router: 'static {
    /// Indexes into `candidates`, in the order to try them. Candidates left
    /// out are not tried; an out-of-range or repeated index is a policy
    /// error, after which the gateway uses the configured order.
    fn route(info: RequestInfo, req: ChatRequest, candidates: Vec<Candidate>) -> Result<Vec<u32>>;
}

/// Implements the generated `Guest` trait for any [`Router`].
#[doc(hidden)]
pub struct RouterExport<T>(PhantomData<T>);

impl<T: Router> wit::Guest for RouterExport<T> {
    fn route(info: RequestInfo, req: ChatRequest, candidates: Vec<Candidate>) -> Result<Vec<u32>> {
        T::route(info, req, candidates)
    }
}

/// Export a [`Router`] as this component's `weir:policy/router`.
///
/// ```no_run
/// use weir_policy::prelude::*;
///
/// /// Healthy targets first, cheapest first; unhealthy ones last.
/// struct CheapestHealthy;
///
/// impl Router for CheapestHealthy {
///     fn route(_: RequestInfo, _: ChatRequest, candidates: Vec<Candidate>) -> Result<Vec<u32>> {
///         let mut order: Vec<u32> = (0..candidates.len() as u32).collect();
///         order.sort_by_key(|&i| {
///             let c = &candidates[i as usize];
///             (!c.healthy, c.input_micro_usd_per_mtok + c.output_micro_usd_per_mtok)
///         });
///         Ok(order)
///     }
/// }
///
/// weir_policy::export_router!(CheapestHealthy);
/// ```
#[macro_export]
macro_rules! export_router {
    ($ty:ty) => {
        // The component's entry points, named `weir:policy/router@0.1.0#…`.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __WeirRouter = $crate::__private::RouterExport<$ty>;
            $crate::__private::bindings::router::export!(
                __WeirRouter with_types_in $crate::__private::bindings::router
            );
        };
        // Natively (unit tests, docs) there is no component to export to;
        // only check that the type is a `Router`.
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            const fn is_router<T: $crate::Router>() {}
            is_router::<$ty>();
        };
    };
}
