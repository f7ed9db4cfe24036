//! Gaps: events that were dropped before they reached the log (the publisher's queue was full,
//! or the stream stayed unreachable through every retry), counted per tunnel and published on
//! `audit.<name>.gap` or `rec.<name>.gap` once the log takes messages again, so that a reader of
//! the trail is told where it has a hole instead of missing it silently.

use serde::{Deserialize, Serialize};

/// Subject kind of a [`Gap`] (`audit.<name>.gap`, `rec.<name>.gap`).
pub const KIND_GAP: &str = "gap";

/// Events of one tunnel that never reached the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// Protocol version of the publisher.
    pub v: u16,
    /// Tunnel name.
    pub tunnel: String,
    /// Events dropped (audit records, or recorded exchanges).
    pub dropped: u64,
    /// Unix time of the first drop, in milliseconds.
    pub from_ms: u64,
    /// Unix time of the last drop, in milliseconds.
    pub to_ms: u64,
}
