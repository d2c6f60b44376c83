//! The glue between the generated `Guest` trait and a [`Plugin`] value: one plugin value per
//! instance, created by `init`, used by every hook of the call.

use std::cell::RefCell;
use std::marker::PhantomData;

use crate::{Call, Completion, Hooks, Outcome, Plugin, Tool, Usage};

thread_local! {
    // Wasm guests are single-threaded; the value is a `Box<dyn Any>` so one slot serves any type.
    static SLOT: RefCell<Option<Box<dyn std::any::Any>>> = const { RefCell::new(None) };
}

/// Dispatches the component's exports to a [`Plugin`] type.
pub struct Glue<P>(PhantomData<P>);

impl<P: Plugin> Glue<P> {
    /// `init` export: parse the config, build the plugin, remember it for the hooks.
    pub fn init(config_json: String) -> Result<Hooks, String> {
        let config: serde_json::Value = if config_json.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_str(&config_json).map_err(|e| format!("config is not JSON: {e}"))?
        };
        let plugin = P::init(config)?;
        SLOT.with(|s| *s.borrow_mut() = Some(Box::new(plugin)));
        Ok(P::HOOKS)
    }

    fn with<R>(f: impl FnOnce(&mut P) -> R) -> R {
        SLOT.with(|s| {
            let mut slot = s.borrow_mut();
            match slot.as_mut().and_then(|b| b.downcast_mut::<P>()) {
                Some(p) => f(p),
                // The host always calls `init` first; reaching this is a host bug, and a trap
                // is the honest answer.
                None => panic!("palisade plugin hook called before init"),
            }
        })
    }

    /// `on-request` export.
    pub fn on_request(call: Call) -> Outcome {
        Self::with(|p| p.on_request(&call))
    }
    /// `on-response` export.
    pub fn on_response(call: Call, body: String) -> Outcome {
        Self::with(|p| p.on_response(&call, &body))
    }
    /// `on-text` export.
    pub fn on_text(call: Call, delta: String, last: bool) -> String {
        Self::with(|p| p.on_text(&call, &delta, last))
    }
    /// `on-complete` export.
    pub fn on_complete(call: Call, usage: Usage, status: Completion) {
        Self::with(|p| p.on_complete(&call, &usage, &status))
    }
    /// `filter-tools` export.
    pub fn filter_tools(call: Call, tools: Vec<Tool>) -> Vec<String> {
        Self::with(|p| p.filter_tools(&call, &tools))
    }
}
