//! The sessions open on this host, by tunnel name and by session id, so that the host-wide
//! subscriptions ([`crate::dispatch`]) can hand each message to the session it is for.
//!
//! A session registers once it holds its lease and stays registered until its [`Registration`]
//! drops, when the session ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, watch};
use tunnel_schemas::usage::{QuotaState, Scope};

/// Stream frames from ingress queued for one session; beyond it frames are dropped and counted,
/// as NATS itself drops messages for a slow subscriber.
const STREAM_QUEUE: usize = 65_536;

/// The open sessions of this host.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Sessions>>,
}

#[derive(Default)]
struct Sessions {
    /// Session ids by tunnel name: more than one while a takeover on this host drains the old one.
    by_tunnel: HashMap<String, Vec<String>>,
    /// Delivery of stream frames and takeover notices, by session id.
    by_session: HashMap<String, Delivery>,
}

/// Where the messages for one session go.
struct Delivery {
    streams: mpsc::Sender<Box<async_nats::Message>>,
    takeover: watch::Sender<Option<String>>,
    /// The id of the token the session was opened with, if any.
    token: Option<String>,
    revoked: watch::Sender<bool>,
    /// The account the session was admitted for, if any.
    account: Option<String>,
    quota: watch::Sender<Option<QuotaState>>,
}

/// What the host-wide subscriptions deliver to one session; dropping it unregisters the session.
pub struct Registration {
    registry: Registry,
    tunnel: String,
    session: String,
    /// Stream frames from ingress for this session's exchanges, in the order NATS delivered them.
    pub streams: mpsc::Receiver<Box<async_nats::Message>>,
    /// Set to the id of the session that took this one's tunnel over.
    pub takeover: watch::Receiver<Option<String>>,
    /// Set when the token the session was opened with is revoked.
    pub revoked: watch::Receiver<bool>,
    /// The last quota warning or block of the session's tunnel or account.
    pub quota: watch::Receiver<Option<QuotaState>>,
}

/// Why a message could not be delivered to a session.
#[derive(Debug, PartialEq, Eq)]
pub enum Undelivered {
    /// No session with that id is open on this host (it ended, or is on another host).
    NoSession,
    /// The session's stream queue is full.
    QueueFull,
}

impl Registry {
    /// Sessions registered on this host.
    pub fn sessions(&self) -> u64 {
        self.lock().by_session.len() as u64
    }

    /// Registers `session`, holding `tunnel`, opened with the token `token` (its id) for
    /// `account`.
    pub fn register(
        &self,
        tunnel: &str,
        session: &str,
        (token, account): (Option<&str>, Option<&str>),
    ) -> Registration {
        let (streams_tx, streams) = mpsc::channel(STREAM_QUEUE);
        let (takeover_tx, takeover) = watch::channel(None);
        let (revoked_tx, revoked) = watch::channel(false);
        let (quota_tx, quota) = watch::channel(None);
        let delivery = Delivery {
            streams: streams_tx,
            takeover: takeover_tx,
            token: token.map(str::to_owned),
            revoked: revoked_tx,
            account: account.map(str::to_owned),
            quota: quota_tx,
        };
        let mut sessions = self.lock();
        sessions.by_tunnel.entry(tunnel.to_owned()).or_default().push(session.to_owned());
        sessions.by_session.insert(session.to_owned(), delivery);
        Registration {
            registry: self.clone(),
            tunnel: tunnel.to_owned(),
            session: session.to_owned(),
            streams,
            takeover,
            revoked,
            quota,
        }
    }

    /// Tells the sessions of the tunnel or account of `state` about it; returns how many.
    pub fn notify_quota(&self, state: &QuotaState) -> usize {
        let sessions = self.lock();
        let told: Vec<&Delivery> = match &state.scope {
            Scope::Tunnel(name) => sessions
                .by_tunnel
                .get(name)
                .into_iter()
                .flatten()
                .filter_map(|id| sessions.by_session.get(id))
                .collect(),
            Scope::Account(account) => {
                sessions.by_session.values().filter(|d| d.account.as_deref() == Some(account.as_str())).collect()
            }
        };
        for delivery in &told {
            delivery.quota.send_replace(Some(state.clone()));
        }
        told.len()
    }

    /// Tells every session opened with token `id` that it was revoked; returns how many.
    pub fn revoke(&self, id: &str) -> usize {
        let sessions = self.lock();
        let mut told = 0;
        for delivery in sessions.by_session.values().filter(|d| d.token.as_deref() == Some(id)) {
            delivery.revoked.send_replace(true);
            told += 1;
        }
        told
    }

    /// Queues a stream frame for `session`, without waiting.
    ///
    /// # Errors
    /// [`Undelivered`] when the session is not here or cannot keep up.
    pub fn deliver_stream(&self, session: &str, message: async_nats::Message) -> Result<(), Undelivered> {
        let sessions = self.lock();
        let delivery = sessions.by_session.get(session).ok_or(Undelivered::NoSession)?;
        delivery.streams.try_send(Box::new(message)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Undelivered::QueueFull,
            mpsc::error::TrySendError::Closed(_) => Undelivered::NoSession,
        })
    }

    /// Tells every session of `tunnel` on this host but `by` that session `by` took it over;
    /// returns how many were told.
    pub fn take_over(&self, tunnel: &str, by: &str) -> usize {
        let sessions = self.lock();
        let Some(ids) = sessions.by_tunnel.get(tunnel) else { return 0 };
        let mut told = 0;
        for id in ids.iter().filter(|id| *id != by) {
            if let Some(delivery) = sessions.by_session.get(id) {
                delivery.takeover.send_replace(Some(by.to_owned()));
                told += 1;
            }
        }
        told
    }

    fn unregister(&self, tunnel: &str, session: &str) {
        let mut sessions = self.lock();
        sessions.by_session.remove(session);
        if let Some(ids) = sessions.by_tunnel.get_mut(tunnel) {
            ids.retain(|id| id != session);
            if ids.is_empty() {
                sessions.by_tunnel.remove(tunnel);
            }
        }
    }

    /// The maps stay consistent whatever a panicking holder did: every change is one insert or
    /// remove.
    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.unregister(&self.tunnel, &self.session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(subject: &str) -> async_nats::Message {
        async_nats::Message {
            subject: subject.into(),
            reply: None,
            payload: bytes::Bytes::new(),
            headers: None,
            status: None,
            description: None,
            length: 0,
        }
    }

    #[test]
    fn a_takeover_reaches_every_other_session_of_the_tunnel_only() {
        let registry = Registry::default();
        let old = registry.register("demo", "s1", (None, None));
        let new = registry.register("demo", "s2", (None, None));
        let other = registry.register("other", "s3", (None, None));
        assert_eq!(registry.take_over("demo", "s2"), 1);
        assert_eq!(old.takeover.borrow().as_deref(), Some("s2"));
        assert_eq!(*new.takeover.borrow(), None);
        assert_eq!(*other.takeover.borrow(), None);
        assert_eq!(registry.take_over("elsewhere", "s9"), 0, "tunnels of other hosts are ignored");
    }

    #[test]
    fn stream_frames_reach_their_session_in_order_until_it_ends() {
        let registry = Registry::default();
        let mut session = registry.register("demo", "s1", (None, None));
        registry.deliver_stream("s1", message("a")).expect("delivered");
        registry.deliver_stream("s1", message("b")).expect("delivered");
        assert_eq!(registry.deliver_stream("s2", message("c")), Err(Undelivered::NoSession));
        assert_eq!(session.streams.try_recv().expect("first").subject.as_str(), "a");
        assert_eq!(session.streams.try_recv().expect("second").subject.as_str(), "b");
        drop(session);
        assert_eq!(registry.deliver_stream("s1", message("d")), Err(Undelivered::NoSession));
        assert_eq!(registry.take_over("demo", "s2"), 0);
    }

    #[test]
    fn a_revocation_reaches_the_sessions_of_that_token_only() {
        let registry = Registry::default();
        let a = registry.register("demo", "s1", (Some("t1"), Some("acme")));
        let b = registry.register("other", "s2", (Some("t2"), Some("acme")));
        let anonymous = registry.register("open", "s3", (None, None));
        assert_eq!(registry.revoke("t1"), 1);
        assert!(*a.revoked.borrow());
        assert!(!*b.revoked.borrow() && !*anonymous.revoked.borrow());
    }

    #[test]
    fn quota_notices_reach_the_sessions_of_their_tunnel_or_account() {
        use tunnel_schemas::usage::{Quota, QuotaLevel};
        let registry = Registry::default();
        let a = registry.register("demo", "s1", (Some("t1"), Some("acme")));
        let b = registry.register("other", "s2", (Some("t2"), Some("acme")));
        let c = registry.register("third", "s3", (Some("t3"), Some("globex")));
        let state = |scope| QuotaState {
            scope,
            quota: Quota::RequestsPerDay,
            level: QuotaLevel::Warning,
            used: 80,
            limit: 100,
            until_ms: 1,
        };
        assert_eq!(registry.notify_quota(&state(Scope::Tunnel("demo".into()))), 1);
        assert!(a.quota.borrow().is_some() && b.quota.borrow().is_none());
        assert_eq!(registry.notify_quota(&state(Scope::Account("acme".into()))), 2);
        assert!(b.quota.borrow().is_some() && c.quota.borrow().is_none());
    }
}
