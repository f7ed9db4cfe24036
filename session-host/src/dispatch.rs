//! The host-wide subscriptions: one on every tunnel's control subject and one on the stream
//! subjects of every session of this host, each message handed to its session through the
//! [`Registry`]. Ingress liveness probes of a session arrive on the stream subscription too, and
//! the session answers them.
//!
//! One subscription each, not one per session, keeps an idle session cheap: a NATS subscription
//! costs a queue in the client and an entry in the server. Only the request subscription stays
//! per session, since its queue group is how NATS routes a tunnel's requests to the hosts that
//! hold it. Takeover notices for tunnels held elsewhere are ignored.

use async_nats::Subscriber;
use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tunnel_schemas::events::Control;
use tunnel_schemas::{MAX_FRAME_BYTES, subjects};

use crate::registry::{Registry, Undelivered};

/// The running host-wide subscriptions.
pub struct Dispatch {
    stop: CancellationToken,
    tasks: [JoinHandle<()>; 2],
}

impl Dispatch {
    /// Subscribes to the control subjects and to the stream subjects under `inbox_prefix`, and
    /// routes what arrives to the sessions of `registry`.
    ///
    /// # Errors
    /// When NATS refuses a subscription.
    pub async fn start(
        nats: &async_nats::Client,
        inbox_prefix: &str,
        registry: &Registry,
    ) -> Result<Self, async_nats::SubscribeError> {
        let control = nats.subscribe(subjects::TUNNEL_CONTROLS).await?;
        let streams = nats.subscribe(subjects::stream_subjects(&subjects::session_prefix(inbox_prefix, "*"))).await?;
        let stop = CancellationToken::new();
        let tasks = [
            tokio::spawn(route_control(control, registry.clone(), stop.clone())),
            tokio::spawn(route_streams(streams, inbox_prefix.to_owned(), registry.clone(), stop.clone())),
        ];
        Ok(Self { stop, tasks })
    }

    /// Unsubscribes; call once every session has ended.
    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn route_control(mut control: Subscriber, registry: Registry, stop: CancellationToken) {
    while let Some(Some(message)) = stop.run_until_cancelled(control.next()).await {
        let Some(tunnel) = tunnel_of(&message.subject) else { continue };
        match tunnel_schemas::decode::<Control>(&message.payload, MAX_FRAME_BYTES) {
            Ok(Control::Takeover { session }) => {
                let told = registry.take_over(tunnel, &session);
                tracing::debug!(tunnel, by = %session, told, "takeover notice");
            }
            Err(e) => tracing::warn!(tunnel, error = %e, "undecodable control message"),
        }
    }
    let _ = control.unsubscribe().await;
}

async fn route_streams(mut streams: Subscriber, inbox_prefix: String, registry: Registry, stop: CancellationToken) {
    while let Some(Some(message)) = stop.run_until_cancelled(streams.next()).await {
        let subject = message.subject.clone();
        let Some(session) = session_of(&inbox_prefix, &subject) else { continue };
        // A probe of a session not open here gets no answer: another host with the same node id
        // may hold it, and a session that ended failed its exchanges itself.
        match registry.deliver_stream(session, message) {
            Ok(()) => {}
            Err(Undelivered::NoSession) => tracing::debug!(session, "stream frame for a session not open here"),
            Err(Undelivered::QueueFull) => {
                metrics::counter!("host_stream_frames_dropped_total").increment(1);
                tracing::debug!(session, "stream frame dropped: the session is not keeping up");
            }
        }
    }
    let _ = streams.unsubscribe().await;
}

/// The tunnel name in a control subject.
fn tunnel_of(subject: &str) -> Option<&str> {
    subject.strip_prefix("tun.")?.strip_suffix(".ctl").filter(|name| !name.contains('.'))
}

/// The session id in a stream subject under `inbox_prefix`.
pub fn session_of<'a>(inbox_prefix: &str, subject: &'a str) -> Option<&'a str> {
    let (session, rest) = subject.strip_prefix(inbox_prefix)?.strip_prefix('.')?.split_once('.')?;
    rest.strip_prefix("st.")?;
    Some(session)
}

#[cfg(test)]
mod tests {
    use tunnel_schemas::names::TunnelName;

    use super::*;

    #[test]
    fn control_subjects_name_their_tunnel() {
        let name = TunnelName::parse("demo-1").expect("valid");
        let subject = subjects::tunnel_control(&name);
        assert_eq!(tunnel_of(&subject), Some("demo-1"));
        assert_eq!(tunnel_of(&subjects::tunnel_requests(&name)), None);
    }

    #[test]
    fn stream_subjects_name_their_session() {
        let prefix = "_INBOX.host.n1";
        let subject = subjects::stream_subject(&subjects::session_prefix(prefix, "0190-ab"), 42);
        assert_eq!(session_of(prefix, &subject), Some("0190-ab"));
        assert_eq!(subjects::stream_subjects(&subjects::session_prefix(prefix, "*")), "_INBOX.host.n1.*.st.*");
        assert_eq!(session_of(prefix, "_INBOX.host.n10.s.st.1"), None, "another node's prefix");
        assert_eq!(session_of(prefix, "_INBOX.host.n1.nuid.1"), None, "a reply inbox");
    }
}
