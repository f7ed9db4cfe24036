//! Reading the event log: the audit trail and the recorded exchanges of a tunnel.
//!
//! - [`filter`]: what a query selects (time range, method, status or class, path glob, request
//!   id);
//! - [`event`]: one entry of a trail, and its JSON-lines form;
//! - [`json`]: recorded exchanges as JSON, bodies and header values kept byte for byte;
//! - [`har`]: export to and import from HAR 1.2;
//! - [`file`]: exchanges read back from an export, either format;
//! - [`compare`]: a replayed response against the recorded one, with a diff;
//! - [`query`]: reading a trail from JetStream, by start time, to its end or live.
//!
//! The session-host serves these to tunnel clients; the `tunnel` CLI uses them with NATS
//! credentials directly, or reads what the host serves.

pub mod compare;
pub mod erase;
pub mod event;
pub mod file;
pub mod filter;
pub mod har;
pub mod json;
pub mod query;
pub mod record;
