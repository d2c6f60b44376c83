//! What goes over the wire: the response body type and the error shapes of each ingress format.
//! Shared by the server (routing errors) and the call (plugin and upstream errors).

pub mod anthropic;
pub mod body;
pub mod errors;

pub use body::GatewayBody;
