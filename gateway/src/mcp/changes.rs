//! What the upstream servers announce about their lists: a server's
//! `notifications/{tools,prompts,resources}/list_changed` (on a stdio server's stdout, in an
//! HTTP answer's event stream, or on the standalone GET stream Palisade keeps open) bumps the
//! generation of that listing, so the catalog refetches it at its next use, and is passed on to
//! the agents listening on `GET /mcp`.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::broadcast;

/// The kinds of things MCP servers list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listing {
    Tools,
    Prompts,
    Resources,
    /// `resources/templates/list`: changes with the resources.
    Templates,
}

impl Listing {
    pub const ALL: [Listing; 4] = [
        Listing::Tools,
        Listing::Prompts,
        Listing::Resources,
        Listing::Templates,
    ];

    /// The listings with a notification of their own.
    pub const ANNOUNCED: [Listing; 3] = [Listing::Tools, Listing::Prompts, Listing::Resources];

    /// The request that lists them.
    pub fn method(self) -> &'static str {
        match self {
            Listing::Tools => "tools/list",
            Listing::Prompts => "prompts/list",
            Listing::Resources => "resources/list",
            Listing::Templates => "resources/templates/list",
        }
    }

    /// The listing for a list request.
    pub fn of_method(method: &str) -> Option<Listing> {
        Listing::ALL.into_iter().find(|l| l.method() == method)
    }

    /// The array in the result.
    pub fn key(self) -> &'static str {
        match self {
            Listing::Tools => "tools",
            Listing::Prompts => "prompts",
            Listing::Resources => "resources",
            Listing::Templates => "resourceTemplates",
        }
    }

    /// The field that names an item.
    pub fn name_field(self) -> &'static str {
        match self {
            Listing::Tools | Listing::Prompts => "name",
            Listing::Resources => "uri",
            Listing::Templates => "uriTemplate",
        }
    }

    /// The notification a server (and Palisade) sends when this list changed.
    pub fn notification(self) -> &'static str {
        match self {
            Listing::Tools => "notifications/tools/list_changed",
            Listing::Prompts => "notifications/prompts/list_changed",
            Listing::Resources | Listing::Templates => "notifications/resources/list_changed",
        }
    }

    fn slot(self) -> usize {
        match self {
            Listing::Tools => 0,
            Listing::Prompts => 1,
            Listing::Resources | Listing::Templates => 2,
        }
    }
}

/// Generations of the lists, bumped by the servers' notifications; shared by a hub's servers.
pub struct Changes {
    generation: [AtomicU64; 3],
    tx: broadcast::Sender<&'static str>,
}

impl Default for Changes {
    fn default() -> Self {
        Changes {
            generation: Default::default(),
            tx: broadcast::channel(64).0,
        }
    }
}

impl Changes {
    /// The current generation of a listing.
    pub fn generation(&self, l: Listing) -> u64 {
        self.generation[l.slot()].load(Ordering::Acquire)
    }

    /// Note a message from a server; true if it was a list change.
    pub fn notice(&self, msg: &serde_json::Value) -> bool {
        let Some(method) = msg.get("method").and_then(serde_json::Value::as_str) else {
            return false;
        };
        if msg.get("id").is_some() {
            return false;
        }
        match Listing::ALL
            .into_iter()
            .find(|l| l.notification() == method)
        {
            Some(l) => {
                self.changed(l);
                true
            }
            None => false,
        }
    }

    /// A list changed (or may have: a stdio server restarted).
    pub fn changed(&self, l: Listing) {
        self.generation[l.slot()].fetch_add(1, Ordering::AcqRel);
        let _ = self.tx.send(l.notification());
    }

    /// Every list may be out of date, with nothing to tell the agents: refetch at next use.
    pub fn mark_stale(&self) {
        for slot in &self.generation {
            slot.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Everything may have changed.
    pub fn all_changed(&self) {
        for l in Listing::ANNOUNCED {
            self.changed(l);
        }
    }

    /// Notifications to pass on to agents (method names).
    pub fn subscribe(&self) -> broadcast::Receiver<&'static str> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn notifications_bump_their_listing_only() {
        let c = Changes::default();
        let mut rx = c.subscribe();
        assert!(c.notice(&json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})));
        assert_eq!(c.generation(Listing::Tools), 1);
        assert_eq!(c.generation(Listing::Prompts), 0);
        assert_eq!(rx.try_recv().ok(), Some("notifications/tools/list_changed"));
        assert!(c.notice(&json!({"method": "notifications/resources/list_changed"})));
        assert_eq!(c.generation(Listing::Templates), 1);
        // A request with that method, or another notification, is not a change.
        assert!(!c.notice(&json!({"id": 1, "method": "notifications/tools/list_changed"})));
        assert!(!c.notice(&json!({"method": "notifications/progress"})));
        assert_eq!(c.generation(Listing::Tools), 1);
    }
}
