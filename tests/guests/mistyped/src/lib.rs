//! A component that exports `weir:policy/guardrail@0.1.0` under the right
//! names with the wrong types. weir calls a guardrail's exports without
//! type-checking each new instance (they are checked once per load), so a
//! load must refuse this one before any hook is called.

wit_bindgen::generate!({
    inline: "
        package weir:policy@0.1.0;

        interface guardrail {
            on-request: func(prompt: string) -> bool;

            resource response-guard {
                constructor();
                on-chunk: func(text: string) -> bool;
                on-end: func(text: string) -> bool;
            }
        }

        world mistyped {
            export guardrail;
        }
    ",
});

use exports::weir::policy::guardrail::{Guest, GuestResponseGuard};

struct Mistyped;

impl Guest for Mistyped {
    type ResponseGuard = Mistyped;

    fn on_request(prompt: String) -> bool {
        prompt.is_empty()
    }
}

impl GuestResponseGuard for Mistyped {
    fn new() -> Self {
        Mistyped
    }

    fn on_chunk(&self, text: String) -> bool {
        text.is_empty()
    }

    fn on_end(&self, text: String) -> bool {
        text.is_empty()
    }
}

export!(Mistyped);
