//! The ingress end of an exchange's streams: a [`Pump`] whose frames go over NATS to the
//! session-host holding the tunnel.

use std::time::Duration;

use async_nats::Subject;
use tunnel_kit::pump::{Completes, FrameOut, Pump};
use tunnel_schemas::stream::StreamFrame;

use crate::streams::{Registration, StreamHub};

/// One exchange at ingress: the response completes it; pings and an idle timeout watch the host.
pub type Exchange = Pump<NatsOut>;

/// Room left in a NATS message for the frame's encoding and headers.
const FRAME_HEADROOM_BYTES: usize = 1024;

/// Opens an exchange receiving its frames through `hub`.
///
/// Without body bytes either way for `data_idle`, the exchange is reset (`None`: never).
pub fn open(nats: async_nats::Client, hub: &std::sync::Arc<StreamHub>, data_idle: Option<Duration>) -> Exchange {
    let (registration, frames) = hub.open();
    let chunk = nats.server_info().max_payload.saturating_sub(FRAME_HEADROOM_BYTES);
    Pump::new(NatsOut { nats, host: None, registration }, frames, Completes::OnIncoming)
        .with_liveness(data_idle)
        .with_chunk(chunk)
}

/// Frames to the session-host's stream subject, learned from the reply subject of its messages.
pub struct NatsOut {
    nats: async_nats::Client,
    host: Option<Subject>,
    /// Keeps this exchange's stream subject routed here.
    registration: Registration,
}

impl NatsOut {
    /// The subject the host sends this exchange's frames to.
    pub fn subject(&self) -> &str {
        &self.registration.subject
    }
}

impl FrameOut for NatsOut {
    type Origin = Option<Subject>;

    fn learn(&mut self, origin: Option<Subject>) {
        if self.host.is_none()
            && let Some(host) = origin
        {
            self.registration.watch_host(&host);
            self.host = Some(host);
        }
    }

    fn ready(&self) -> bool {
        self.host.is_some()
    }

    async fn send(&mut self, frame: StreamFrame) {
        let Some(host) = self.host.clone() else { return };
        if let Err(e) = self.nats.publish(host, tunnel_schemas::encode(&frame).into()).await {
            tracing::debug!(error = %e, "stream frame not published");
        }
    }

    fn send_detached(&mut self, frame: StreamFrame) {
        let Some(host) = self.host.clone() else { return };
        let nats = self.nats.clone();
        tokio::spawn(async move {
            let _ = nats.publish(host, tunnel_schemas::encode(&frame).into()).await;
        });
    }
}
