//! Every NATS subject and queue group of the system.
//!
//! Request subjects (`tun.>`), audit subjects (`audit.>`) and recording subjects (`rec.>`) are
//! disjoint on purpose: a stream that captured a request subject would answer requests with a
//! PubAck.

use crate::names::TunnelName;

/// Subject of request heads for `name`; session-hosts holding the tunnel subscribe in
/// [`tunnel_queue_group`].
pub fn tunnel_requests(name: &TunnelName) -> String {
    format!("tun.{name}.req")
}

/// Queue group of the hosts serving `name`, so a request is answered once even while a session
/// moves between hosts.
pub fn tunnel_queue_group(name: &TunnelName) -> String {
    format!("tun.{name}")
}

/// Session-control subject of `name` (takeover notices).
pub fn tunnel_control(name: &TunnelName) -> String {
    format!("tun.{name}.ctl")
}

/// Wildcard covering every tunnel's [`tunnel_control`] subject: each session-host subscribes
/// once and hands a notice to its session of that tunnel, if any.
pub const TUNNEL_CONTROLS: &str = "tun.*.ctl";

/// Subjects captured by the `AUDIT` stream.
pub const AUDIT_SUBJECTS: &str = "audit.>";

/// Name of the JetStream stream holding audit events.
pub const AUDIT_STREAM: &str = "AUDIT";

/// Subjects captured by the `RECORDINGS` stream.
pub const RECORDING_SUBJECTS: &str = "rec.>";

/// Name of the JetStream stream holding recorded exchanges.
pub const RECORDING_STREAM: &str = "RECORDINGS";

/// Subject of a recording of `kind` for `name` (`rec.<name>.<kind>`).
pub fn recording(name: &str, kind: &str) -> String {
    format!("rec.{name}.{kind}")
}

/// Subject of an audit event of `kind` for `name`, for publishers holding the name as text.
pub fn audit_of(name: &str, kind: &str) -> String {
    format!("audit.{name}.{kind}")
}

/// Wildcard of every audit subject of `name` (`audit.<name>.*`: records and gaps), for readers
/// holding the name as text.
pub fn audit_all(name: &str) -> String {
    format!("audit.{name}.*")
}

/// Name of the KV bucket holding tunnel leases.
pub const LEASES_BUCKET: &str = "tunnel_leases";

/// Subject of an audit event of `kind` for `name`.
pub fn audit(name: &TunnelName, kind: &str) -> String {
    format!("audit.{name}.{kind}")
}

/// KV key of the lease on `name`.
pub fn lease_key(name: &TunnelName) -> String {
    format!("t.{name}")
}

/// Inbox prefix of one component instance, so subject permissions can be narrow
/// (`_INBOX.<component>.<node>.>`).
pub fn inbox_prefix(component: &str, node: &str) -> String {
    format!("_INBOX.{component}.{node}")
}

/// Stream-subject prefix of `session` on the session-host with inbox `prefix`
/// (`_INBOX.host.<node>.<session>`); `*` gives the host-wide wildcard's prefix.
pub fn session_prefix(prefix: &str, session: &str) -> String {
    format!("{prefix}.{session}")
}

/// Subject on which the component with inbox `prefix` receives the frames of stream `id`.
pub fn stream_subject(prefix: &str, id: impl std::fmt::Display) -> String {
    format!("{prefix}.st.{id}")
}

/// Last token of a session's probe subject: `<session prefix>.st.probe` (no stream id is a word).
pub const PROBE_TOKEN: &str = "probe";

/// Subject on which the session with stream-subject `prefix` answers liveness probes: a NATS
/// request there gets an empty reply while the session is open, a `Reset` once it is not, no
/// responders once its host is gone, and nothing while its host is frozen.
pub fn probe_subject(prefix: &str) -> String {
    stream_subject(prefix, PROBE_TOKEN)
}

/// Wildcard covering every [`stream_subject`] of `prefix`.
pub fn stream_subjects(prefix: &str) -> String {
    format!("{prefix}.st.*")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_audit_subjects_are_disjoint() {
        let name = TunnelName::parse("demo").expect("valid");
        assert_eq!(tunnel_requests(&name), "tun.demo.req");
        assert_eq!(audit(&name, "req"), "audit.demo.req");
        assert!(!tunnel_requests(&name).starts_with("audit."));
        assert_eq!(tunnel_control(&name), "tun.demo.ctl");
        assert_eq!(tunnel_control(&name).replace("demo", "*"), TUNNEL_CONTROLS);
        assert_eq!(tunnel_queue_group(&name), "tun.demo");
        assert_eq!(lease_key(&name), "t.demo");
        assert_eq!(stream_subject("_INBOX.ing.n1", 42), "_INBOX.ing.n1.st.42");
        assert_eq!(stream_subjects("_INBOX.ing.n1"), "_INBOX.ing.n1.st.*");
        assert_eq!(recording("demo", "ex"), "rec.demo.ex");
        assert_eq!(audit_of("demo", "req"), audit(&name, "req"));
        assert_eq!(audit_all("demo"), audit_of("demo", "*"));
    }
}
