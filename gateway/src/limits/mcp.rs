//! Per-agent caps on `/mcp`: live sessions (`[limits] mcp_sessions_per_agent`) and open
//! `GET /mcp` event streams (`mcp_streams_per_agent`), so one agent cannot pile up sessions
//! (each may hold upstream sessions) or event streams (each holds a connection and a task).
//!
//! Both are counted by this replica. An event stream is a connection to this process, so
//! that is exact. A session id is sealed and any replica serves it, so a session counts on
//! the replicas that saw it: it is counted from its `initialize` (or its first request here),
//! until `DELETE` ends it or it goes unused for `mcp_session_idle_secs`. Behind a load
//! balancer an agent may therefore hold up to the cap on each replica; the cap bounds what
//! one agent costs a replica, which is what it is for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::core::error::{CallError, Limit};

/// The live sessions and open event streams of every agent on this replica.
#[derive(Default)]
pub struct McpCaps {
    /// By agent: session nonce -> last use.
    sessions: Mutex<HashMap<String, HashMap<String, Instant>>>,
    /// By agent: event streams open.
    streams: Mutex<HashMap<String, u32>>,
}

/// An open event stream's place; dropping it (the stream ends) frees it.
pub struct StreamSlot {
    caps: Arc<McpCaps>,
    agent: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self.caps.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = streams.get_mut(&self.agent) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                streams.remove(&self.agent);
            }
        }
    }
}

fn refused(limit: Limit, agent: &str, max: u32, retry_after: u64) -> CallError {
    CallError::Limited {
        limit,
        scope: format!("agent {agent}"),
        max: u64::from(max),
        retry_after: retry_after.max(1),
    }
}

impl McpCaps {
    /// A new session for `agent`, refused when it already has `max` live ones (unused for
    /// less than `idle`).
    pub fn open_session(
        &self,
        agent: &str,
        nonce: &str,
        max: u32,
        idle: Duration,
    ) -> Result<(), CallError> {
        let mut all = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let live = all.entry(agent.to_string()).or_default();
        live.retain(|_, seen| seen.elapsed() < idle);
        if live.len() >= max as usize {
            // The oldest unused session stops counting first.
            let oldest = live
                .values()
                .map(Instant::elapsed)
                .max()
                .unwrap_or_default();
            let wait = idle.saturating_sub(oldest).as_secs();
            return Err(refused(Limit::McpSessions, agent, max, wait));
        }
        live.insert(nonce.to_string(), Instant::now());
        Ok(())
    }

    /// A request on a session: it is live (counted here from now if another replica opened
    /// it, within `max`).
    pub fn touch_session(&self, agent: &str, nonce: &str, max: u32) {
        let mut all = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let live = all.entry(agent.to_string()).or_default();
        let room = live.len() < max as usize;
        match live.get_mut(nonce) {
            Some(seen) => *seen = Instant::now(),
            None if room => {
                live.insert(nonce.to_string(), Instant::now());
            }
            None => {}
        }
    }

    /// `DELETE /mcp` ended a session.
    pub fn end_session(&self, agent: &str, nonce: &str) {
        let mut all = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(live) = all.get_mut(agent) {
            live.remove(nonce);
            if live.is_empty() {
                all.remove(agent);
            }
        }
    }

    /// Live sessions of `agent` counted here.
    pub fn sessions_of(&self, agent: &str) -> usize {
        let all = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        all.get(agent).map_or(0, HashMap::len)
    }

    /// A place for one more event stream of `agent`, refused past `max`.
    pub fn open_stream(self: &Arc<Self>, agent: &str, max: u32) -> Result<StreamSlot, CallError> {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let n = streams.entry(agent.to_string()).or_default();
        if *n >= max {
            return Err(refused(Limit::McpStreams, agent, max, 1));
        }
        *n += 1;
        Ok(StreamSlot {
            caps: self.clone(),
            agent: agent.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_and_streams_are_capped_per_agent_and_freed() {
        let caps = Arc::new(McpCaps::default());
        let idle = Duration::from_secs(60);
        caps.open_session("a", "n1", 2, idle).unwrap();
        caps.open_session("a", "n2", 2, idle).unwrap();
        let e = caps.open_session("a", "n3", 2, idle).unwrap_err();
        assert_eq!(e.code(), "mcp_session_limit");
        // Another agent is not affected; an ended session frees its place.
        caps.open_session("b", "n1", 2, idle).unwrap();
        caps.end_session("a", "n1");
        caps.open_session("a", "n3", 2, idle).unwrap();
        // Sessions unused for the idle time no longer count.
        caps.open_session("c", "x", 1, Duration::ZERO).unwrap();
        caps.open_session("c", "y", 1, Duration::ZERO).unwrap();

        let s1 = caps.open_stream("a", 1).unwrap();
        assert_eq!(
            caps.open_stream("a", 1).err().unwrap().code(),
            "mcp_stream_limit"
        );
        drop(s1);
        let _s2 = caps.open_stream("a", 1).unwrap();
    }
}
