//! Write Palisade policy plugins in Rust.
//!
//! A plugin is a type implementing [`Plugin`]: `init` takes its config from `palisade.toml`, and
//! the hooks it overrides decide about calls. [`export_plugin!`] turns it into a Wasm component
//! for the `palisade:policy/plugin` world (build with `cargo build --target wasm32-wasip2`).
//!
//! ```ignore
//! use palisade_plugin_sdk::prelude::*;
//!
//! struct NoGpt4;
//! impl Plugin for NoGpt4 {
//!     const HOOKS: Hooks = Hooks::ON_REQUEST;
//!     fn init(_config: Config) -> Result<Self, String> { Ok(NoGpt4) }
//!     fn on_request(&mut self, call: &Call) -> Outcome {
//!         if call.target.starts_with("gpt-4") { Outcome::deny(403, "model_not_allowed", "no") }
//!         else { Outcome::allow() }
//!     }
//! }
//! export_plugin!(NoGpt4);
//! ```
//!
//! Unit-test the same type natively with [`testing::Harness`]: no Wasm, no gateway, plain
//! `cargo test`. Host imports (ledger, key-value, log) go to an in-memory [`testing::TestHost`]
//! there.
//!
//! Trade-offs: the generated WIT types are re-exported as they are (owned `String`s and `Vec`s),
//! so a hook gets exactly what crossed the component boundary with no second copy; the chat
//! request is parsed only when a plugin asks for it ([`Call::chat`]).
#![deny(missing_docs)]

// The generated bindings name this crate by its path, also from inside it.
extern crate self as palisade_plugin_sdk;

mod chat;
mod glue;
pub mod host;
pub mod testing;

#[doc(hidden)]
#[allow(unsafe_code, missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_world_plugin",
        default_bindings_module: "palisade_plugin_sdk::bindings",
        runtime_path: "palisade_plugin_sdk::__wit_bindgen::rt",
        bitflags_path: "palisade_plugin_sdk::__wit_bindgen::rt::bitflags",
    });
}

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

pub use bindings::palisade::policy::types::{
    Agent, Amount, Call, CallKind, Completion, Deny, Exceeded, Hold, Hooks, Level, Outcome,
    ReserveError, Tool, Unit, Usage, Verdict, Window,
};
pub use chat::{ChatMessage, ChatRequest};
#[doc(hidden)]
pub use glue::Glue as __Glue;

/// The plugin's config table from `palisade.toml`, as JSON.
pub type Config = serde_json::Value;

/// Everything a plugin file usually needs.
pub mod prelude {
    pub use crate::host;
    pub use crate::{
        Agent, Amount, Call, CallKind, Completion, Config, Hooks, Outcome, Plugin, Tool, Unit,
        Usage, Verdict, Window, export_plugin,
    };
}

/// A policy plugin. Override the hooks you need and list them in [`Plugin::HOOKS`]; the gateway
/// calls only those. One value of this type lives for one call, or, for a plugin that calls
/// [`host::declare_stateless`] in `init` (or that the operator configured `pooled`), for several
/// calls one after the other: never keep state across calls in it, and reset per-call fields
/// when `call.request_id` changes.
pub trait Plugin: Sized + 'static {
    /// The hooks this plugin implements.
    const HOOKS: Hooks;

    /// Take and validate the config. An `Err` rejects the plugin when the gateway loads it, with
    /// this message shown to the operator.
    fn init(config: Config) -> Result<Self, String>;

    /// Before the call goes upstream. Default: allow.
    fn on_request(&mut self, _call: &Call) -> Outcome {
        Outcome::allow()
    }

    /// After a full answer (`body` is the response JSON). Default: allow unchanged.
    fn on_response(&mut self, _call: &Call, _body: &str) -> Outcome {
        Outcome::allow()
    }

    /// For each streamed text delta; return the text to send. Default: the delta unchanged.
    fn on_text(&mut self, _call: &Call, delta: &str, _last: bool) -> String {
        delta.to_string()
    }

    /// After the call ended. Default: nothing.
    fn on_complete(&mut self, _call: &Call, _usage: &Usage, _status: &Completion) {}

    /// The names of the tools the agent may see. Default: all of them.
    fn filter_tools(&mut self, _call: &Call, tools: &[Tool]) -> Vec<String> {
        tools.iter().map(|t| t.name.clone()).collect()
    }
}

impl Outcome {
    /// Go on unchanged.
    pub fn allow() -> Self {
        Outcome {
            verdict: Verdict::Allow,
            annotations: Vec::new(),
        }
    }

    /// Stop the call with an error the agent sees.
    pub fn deny(status: u16, code: &str, message: impl Into<String>) -> Self {
        Outcome {
            verdict: Verdict::Deny(Deny {
                status,
                code: code.to_string(),
                message: message.into(),
            }),
            annotations: Vec::new(),
        }
    }

    /// Go on with this body instead.
    pub fn rewrite(body: impl Into<String>) -> Self {
        Outcome {
            verdict: Verdict::Rewrite(body.into()),
            annotations: Vec::new(),
        }
    }

    /// Stop until humans approve.
    pub fn hold(hold: Hold) -> Self {
        Outcome {
            verdict: Verdict::Hold(hold),
            annotations: Vec::new(),
        }
    }

    /// Go on, trying these `provider/model` targets in order.
    pub fn route<S: Into<String>>(targets: impl IntoIterator<Item = S>) -> Self {
        Outcome {
            verdict: Verdict::Route(targets.into_iter().map(Into::into).collect()),
            annotations: Vec::new(),
        }
    }

    /// Add a note for the audit log.
    pub fn note(mut self, key: &str, value: impl Into<String>) -> Self {
        self.annotations.push((key.to_string(), value.into()));
        self
    }

    /// True if this outcome lets the call go on.
    pub fn is_allow(&self) -> bool {
        matches!(
            self.verdict,
            Verdict::Allow | Verdict::Rewrite(_) | Verdict::Route(_)
        )
    }
}

impl Call {
    /// Parse the body as an OpenAI chat request (LLM calls only).
    pub fn chat(&self) -> Result<ChatRequest, String> {
        serde_json::from_str(&self.body).map_err(|e| format!("body is not a chat request: {e}"))
    }

    /// Parse the body as JSON (tool arguments for tool calls).
    pub fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_str(&self.body).map_err(|e| format!("body is not JSON: {e}"))
    }

    /// The value of one of the agent's labels.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.agent
            .labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Export a [`Plugin`] type as the component's `palisade:policy/policy` implementation.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        // Only Wasm builds export the component's functions: their names (`palisade:policy/...`)
        // are not valid symbols for a native linker, and native builds are for unit tests.
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        mod __palisade_export {
            use super::*;
            use $crate::bindings::exports::palisade::policy::policy::Guest;
            struct Export;
            impl Guest for Export {
                fn init(config_json: String) -> Result<$crate::Hooks, String> {
                    $crate::__Glue::<$plugin>::init(config_json)
                }
                fn on_request(call: $crate::Call) -> $crate::Outcome {
                    $crate::__Glue::<$plugin>::on_request(call)
                }
                fn on_response(call: $crate::Call, body: String) -> $crate::Outcome {
                    $crate::__Glue::<$plugin>::on_response(call, body)
                }
                fn on_text(call: $crate::Call, delta: String, last: bool) -> String {
                    $crate::__Glue::<$plugin>::on_text(call, delta, last)
                }
                fn on_complete(
                    call: $crate::Call,
                    usage: $crate::Usage,
                    status: $crate::Completion,
                ) {
                    $crate::__Glue::<$plugin>::on_complete(call, usage, status)
                }
                fn filter_tools(call: $crate::Call, tools: Vec<$crate::Tool>) -> Vec<String> {
                    $crate::__Glue::<$plugin>::filter_tools(call, tools)
                }
            }
            $crate::bindings::__export_world_plugin!(Export with_types_in $crate::bindings);
        }
    };
}

/// The name patterns plugins match with: `*` matches any run of characters (none included);
/// everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(mut tail) = text.strip_prefix(head) else {
                return false;
            };
            if rest.is_empty() {
                return true;
            }
            loop {
                if glob(rest, tail) {
                    return true;
                }
                let mut chars = tail.chars();
                if chars.next().is_none() {
                    return false;
                }
                tail = chars.as_str();
            }
        }
    }
}
