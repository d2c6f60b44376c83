//! The only place the host's bindings to the WIT contract (`wit/policy.wit`) are generated.
//! Hooks are async so a host import may wait on the ledger's database without blocking a
//! runtime thread; the guest sees ordinary blocking calls.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    imports: { default: async },
    exports: { default: async },
});

pub use exports::palisade::policy::policy::Guest as PolicyExports;
pub use palisade::policy::types::{
    Agent, Amount, Call, CallKind, Completion, Deny, Exceeded, Hold, Hooks, Level, Outcome,
    ReserveError, Tool, Unit, Usage, Verdict, Window,
};

impl From<Hold> for crate::core::domain::Hold {
    fn from(h: Hold) -> Self {
        crate::core::domain::Hold {
            rule: h.rule,
            approvals: h.approvals,
            group: h.group,
            ttl_secs: h.ttl_secs,
            summary: h.summary,
        }
    }
}
