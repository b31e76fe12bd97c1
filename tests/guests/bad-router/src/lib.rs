//! A router that misbehaves when the prompt says `ROUTER:bad` (an
//! out-of-range index) or `ROUTER:trap` (a trap), and otherwise reverses the
//! configured order, so a test can tell the router's order from the
//! gateway's fallback.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "router-policy",
});

use exports::weir::policy::router::{Candidate, Guest};
use weir::policy::types::{ChatRequest, RequestInfo};

struct BadRouter;

impl Guest for BadRouter {
    fn route(
        _info: RequestInfo,
        req: ChatRequest,
        candidates: Vec<Candidate>,
    ) -> Result<Vec<u32>, String> {
        let text: String = req.messages.iter().map(|m| m.content.as_str()).collect();
        if text.contains("ROUTER:bad") {
            return Ok(vec![99]);
        }
        if text.contains("ROUTER:trap") {
            panic!("the router traps");
        }
        Ok((0..candidates.len() as u32).rev().collect())
    }
}

export!(BadRouter);
