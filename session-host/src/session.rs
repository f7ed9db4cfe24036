//! One client session: the handshake, then relaying requests from NATS to the WebSocket and
//! replies back, until the client leaves, another session takes the tunnel over, or the host
//! shuts down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Subject, Subscriber};
use futures_util::StreamExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::ReadHalf;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;
use tunnel_schemas::audit::Access;
use tunnel_schemas::events::{Control, Failure, REQUEST_ID_HEADER, STREAM_HEADER, UPLOAD_HEADER};
use tunnel_schemas::frames::{ClientFrame, Hello, HostFrame, StreamId, Welcome};
use tunnel_schemas::names::{NameError, TunnelName};
use tunnel_schemas::stream::StreamFrame;
use tunnel_schemas::tokens::Token;
use tunnel_schemas::{DecodeError, ErrorCode, MAX_FRAME_BYTES, PROTOCOL_VERSION, encode, subjects};

use tunnel_kit::service::ServiceConfig;
use tunnel_kit::traces::{SpanKind, TRACEPARENT};

use crate::access_log::Who;
use crate::admission::Pending;
use crate::auth::Credential;
use crate::exchanges::{Exchanges, Relayed};
use crate::hub::Hub;
use crate::leases::{Lease, LeaseError};
use crate::registry::Registration;
use crate::socket::{Outgoing, ReadError, Reader, close_code};

/// Frames queued for the WebSocket writer; a full queue makes the session wait (back-pressure).
const WRITE_QUEUE: usize = 1024;
/// Attempts at a free random name before giving up.
const RANDOM_NAME_ATTEMPTS: usize = 8;
/// Time the request subscription gets to drain when the session ends.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Time the writer gets to flush the last frames after the session ends.
const WRITER_GRACE: Duration = Duration::from_secs(2);
/// Longest interval of the checks on open exchanges (acknowledgements, ingress ends, a silent
/// client); idle sessions skip them.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// Silence of a client with requests in flight after which the sweep pings it.
const PROBE_AFTER: Duration = Duration::from_secs(1);

/// A client's socket after the upgrade.
pub type Socket = TokioIo<Upgraded>;
type WsStream = Reader<ReadHalf<Socket>>;

/// Runs one session on `socket` to its end.
///
/// The socket is split before the future is built, so that the future, which every idle session
/// keeps, holds no room for the socket itself.
pub fn run(hub: Arc<Hub>, socket: Socket, remote_addr: String, pending: Pending) -> impl Future<Output = ()> {
    let (read, write) = tokio::io::split(socket);
    let (out, out_rx) = mpsc::channel(WRITE_QUEUE);
    let writer = tokio::spawn(crate::socket::write_frames(write, out_rx));
    serve_socket(hub, Reader::new(read, MAX_FRAME_BYTES), out, writer, remote_addr, pending)
}

async fn serve_socket(
    hub: Arc<Hub>,
    mut stream: WsStream,
    out: mpsc::Sender<Outgoing>,
    writer: JoinHandle<()>,
    remote_addr: String,
    pending: Pending,
) {
    // The deadline counts from the TCP accept; the pending place is given back once answered.
    let ending = match tokio::time::timeout_at(pending.deadline.into(), read_hello(&mut stream, &out)).await {
        Err(_) => Ending::Refused(Failure::new(ErrorCode::HandshakeTimeout, "no hello in time")),
        Ok(Err(failure)) => Ending::Refused(failure),
        Ok(Ok(hello)) => match Box::pin(Session::open(&hub, hello.clone(), out.clone(), remote_addr.clone()))
            .await
            .inspect(|_| drop(pending.slot))
        {
            Err(failure) => {
                if let Some(name) = hello.name.as_deref().and_then(|name| TunnelName::parse(name).ok()) {
                    let token = hello.token.as_deref().and_then(Token::parse).map(|token| token.id);
                    let who = Who { remote_addr, account: None, token };
                    hub.access_log.record(&name, Access::Refused, "", &who, Some(failure.code));
                }
                Ending::Refused(failure)
            }
            Ok(session) => {
                let span = tracing::info_span!("session", tunnel = %session.lease.name, session = %session.id);
                tracing::Instrument::instrument(session.serve(stream), span).await
            }
        },
    };
    if let Ending::Refused(failure) = &ending {
        tracing::info!(code = %failure.code, detail = %failure.detail, "session refused or ended");
        let _ = out.send(Outgoing::Binary(encode(&HostFrame::Refused(failure.clone())).into())).await;
    }
    let _ = out.send(close_frame(&ending)).await;
    drop(out);
    if tokio::time::timeout(WRITER_GRACE, writer).await.is_err() {
        tracing::debug!("websocket writer did not finish in time");
    }
}

/// How a session ended.
enum Ending {
    /// The client closed the socket or said goodbye.
    ClientLeft,
    /// The session ends with an error sent to the client.
    Refused(Failure),
}

fn close_frame(ending: &Ending) -> Outgoing {
    let (code, reason) = match ending {
        Ending::ClientLeft => (close_code::NORMAL, ""),
        Ending::Refused(failure) => (
            match failure.code {
                ErrorCode::GoingAway => close_code::AWAY,
                ErrorCode::BadFrame | ErrorCode::ProtocolVersion => close_code::PROTOCOL,
                ErrorCode::FrameTooLarge => close_code::SIZE,
                ErrorCode::Internal | ErrorCode::Unavailable => close_code::ERROR,
                _ => close_code::POLICY,
            },
            failure.code.as_str(),
        ),
    };
    Outgoing::Close(code, reason)
}

/// Sleeps until `at`, or forever when there is no deadline.
async fn sleep_until_or_never(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn read_hello(stream: &mut WsStream, out: &mpsc::Sender<Outgoing>) -> Result<Hello, Failure> {
    loop {
        match next_frame(stream, out).await? {
            Incoming::Frame(ClientFrame::Hello(hello)) => return Ok(hello),
            Incoming::Frame(_) => {
                return Err(Failure::new(ErrorCode::BadFrame, "the first frame must be a hello"));
            }
            Incoming::Alive => {}
            Incoming::Closed => {
                return Err(Failure::new(ErrorCode::BadFrame, "closed before hello"));
            }
        }
    }
}

/// What the client's side of the socket produced.
enum Incoming {
    /// A protocol frame.
    Frame(ClientFrame),
    /// A ping or pong: the client is alive.
    Alive,
    /// The client closed the socket.
    Closed,
}

/// Reads the next frame; answers pings on the way (without waiting: when the writer is backed up
/// the pong is skipped, and the read stays cancel-safe).
async fn next_frame(stream: &mut WsStream, out: &mpsc::Sender<Outgoing>) -> Result<Incoming, Failure> {
    match stream.next().await {
        Ok(crate::socket::Incoming::Closed) => Ok(Incoming::Closed),
        Ok(crate::socket::Incoming::Ping(payload)) => {
            let _ = out.try_send(Outgoing::Pong(payload));
            Ok(Incoming::Alive)
        }
        Ok(crate::socket::Incoming::Pong) => Ok(Incoming::Alive),
        Ok(crate::socket::Incoming::Text) => {
            Err(Failure::new(ErrorCode::BadFrame, "text frames are not part of the protocol"))
        }
        Ok(crate::socket::Incoming::Binary(bytes)) => {
            tunnel_schemas::decode_shared(&bytes, MAX_FRAME_BYTES).map(Incoming::Frame).map_err(|e| match e {
                DecodeError::TooLarge { .. } => Failure::new(ErrorCode::FrameTooLarge, e.to_string()),
                DecodeError::Malformed(_) => Failure::new(ErrorCode::BadFrame, e.to_string()),
            })
        }
        Err(e @ ReadError::TooLarge { .. }) => Err(Failure::new(ErrorCode::FrameTooLarge, e.to_string())),
        Err(e @ ReadError::Protocol(_)) => Err(Failure::new(ErrorCode::BadFrame, e.to_string())),
        // The connection failed: the client is gone, as if it had closed the socket.
        Err(ReadError::Io(e)) => {
            tracing::debug!(error = %e, "websocket read failed");
            Ok(Incoming::Closed)
        }
    }
}

/// An open session.
struct Session {
    hub: Arc<Hub>,
    id: String,
    lease: Lease,
    out: mpsc::Sender<Outgoing>,
    requests: Subscriber,
    /// Stream frames and takeover notices from the host-wide subscriptions.
    registration: Registration,
    /// The token the session was admitted with (none in anonymous mode).
    credential: Option<Credential>,
    /// The client, for access events.
    who: Who,
    /// Revision of the tunnel's policy that a request's ingress must have applied.
    policy_revision: u64,
    exchanges: Exchanges,
    next_stream: StreamId,
    last_seen: Instant,
    /// When the client, silent with requests in flight, was pinged; cleared once it is heard.
    probed_at: Option<Instant>,
    /// The host is shutting down and the client was told to move.
    going_away: bool,
    /// The request subscription was drained: no new requests will be routed here.
    drained: bool,
    /// The drained subscription delivered its last request.
    requests_done: bool,
    /// When set, the session ends by then with this failure (or earlier, once drained and idle).
    end: Option<(Instant, Failure)>,
}

/// What a lease renewal found.
struct Renewal {
    /// The lease, with the revision of the renewal when it was stored.
    lease: Lease,
    renewed: Result<(), LeaseError>,
    /// Whether the session may still hold the name (none reserved it for another account).
    owner: Result<bool, Failure>,
    /// Whether the session's token still exists (none in anonymous mode or with a JWT).
    valid: Option<Result<bool, Failure>>,
}

/// Renews `lease` and checks the name's reservation and the token, apart from the session's
/// loop: JetStream may take seconds to answer (while it elects a stream's leader after losing
/// a NATS node), and the session meanwhile relays its requests.
async fn renewal_checks(hub: Arc<Hub>, mut lease: Lease, credential: Option<Credential>) -> Renewal {
    let renewed = hub.leases.renew(&mut lease).await;
    let owner = hub.auth.may_hold(credential.as_ref(), lease.name.as_str()).await;
    let valid = match &credential {
        Some(credential) => Some(hub.auth.still_valid(credential).await),
        None => None,
    };
    Renewal { lease, renewed, owner, valid }
}

impl Session {
    async fn open(
        hub: &Arc<Hub>,
        hello: Hello,
        out: mpsc::Sender<Outgoing>,
        remote_addr: String,
    ) -> Result<Self, Failure> {
        if hello.v != PROTOCOL_VERSION {
            return Err(Failure::new(
                ErrorCode::ProtocolVersion,
                format!("client speaks protocol {}, this server speaks {PROTOCOL_VERSION}", hello.v),
            ));
        }
        let credential = hub.auth.admit(hello.token.as_deref()).await?;
        if let Some(credential) = &credential {
            crate::auth::may_bind(credential, hello.name.as_deref())?;
        }
        hello.policy.validate().map_err(|e| Failure::new(ErrorCode::InvalidPolicy, e.to_string()))?;
        let id = uuid::Uuid::now_v7().to_string();
        let lease = acquire(hub, &hello, credential.as_ref(), &id).await?;
        let name = &lease.name;
        let record = tunnel_schemas::policy::TunnelRecord {
            account: credential.as_ref().map(|c| c.account.clone()),
            policy: hello.policy.clone(),
        };
        let policy_revision = hub.policies.publish(name.as_str(), &record).await?;
        let nats = &hub.nats;
        let token = credential.as_ref().and_then(|c| c.token_id());
        let account = credential.as_ref().map(|c| c.account.as_str());
        let registration = hub.registry.register(name.as_str(), &id, (token, account));
        let requests = nats
            .queue_subscribe(subjects::tunnel_requests(name), subjects::tunnel_queue_group(name))
            .await
            .map_err(|e| Failure::new(ErrorCode::Unavailable, e.to_string()))?;
        let inbox_prefix = hub.config.inbox_prefix();
        let recording = hub.recorder.policy().records(name.as_str(), hello.record).then(|| {
            let secret_headers: Vec<String> =
                hello.policy.require_headers.iter().map(|header| header.name.clone()).collect();
            hub.recorder.session(name.as_str(), &lease.secret, account, &secret_headers)
        });
        let recorded = recording.is_some();
        let exchanges = Exchanges::new(
            nats.clone(),
            subjects::session_prefix(&inbox_prefix, &id),
            hub.max_reply_bytes(),
            recording,
        );
        let mut session = Self {
            hub: hub.clone(),
            id,
            lease,
            out,
            requests,
            registration,
            who: Who {
                remote_addr,
                account: credential.as_ref().map(|c| c.account.clone()),
                token: credential.as_ref().and_then(|c| c.token_id().map(str::to_owned)),
            },
            credential,
            policy_revision,
            exchanges,
            next_stream: 0,
            last_seen: Instant::now(),
            probed_at: None,
            going_away: false,
            drained: false,
            requests_done: false,
            end: None,
        };
        // The renewal's PubAck travels on the same connection after the SUBs, so once it is
        // back the server routes the tunnel's requests here: only then is the client told.
        session
            .hub
            .leases
            .renew(&mut session.lease)
            .await
            .map_err(|e| Failure::new(ErrorCode::Unavailable, e.to_string()))?;
        if session.lease.resumed {
            let takeover = Control::Takeover { session: session.id.clone() };
            if let Err(e) = nats.publish(subjects::tunnel_control(&session.lease.name), encode(&takeover).into()).await
            {
                tracing::warn!(error = %e, "takeover notice not published");
            }
        }
        let welcome = Welcome {
            v: PROTOCOL_VERSION,
            name: session.lease.name.to_string(),
            url: hub.config.url_of(session.lease.name.as_str()),
            session: session.id.clone(),
            resume_secret: session.lease.secret.clone(),
            max_reply_bytes: hub.max_reply_bytes(),
            recording: recorded,
            host: hub.config.node_id.clone(),
        };
        session.send(HostFrame::Welcome(welcome)).await?;
        let access = if session.lease.resumed { Access::Resumed } else { Access::Bound };
        hub.access_log.record(&session.lease.name, access, &session.id, &session.who, None);
        let account = session.credential.as_ref().map(|c| c.account.as_str());
        tracing::info!(tunnel = %session.lease.name, session = %session.id, resumed = session.lease.resumed, agent = %hello.agent, recorded, account, "session open");
        Ok(session)
    }

    async fn serve(mut self, mut stream: WsStream) -> Ending {
        metrics::gauge!("host_sessions").increment(1.0);
        let mut renew = tokio::time::interval(self.hub.config.renew_interval());
        renew.reset();
        let ping_interval = self.hub.config.ping_interval();
        let mut ping = tokio::time::interval(ping_interval);
        ping.reset();
        let ack_after = self.hub.config.ack_after();
        let sweep_every = if ack_after.is_zero() { SWEEP_INTERVAL } else { ack_after.min(SWEEP_INTERVAL) };
        let mut sweep = tokio::time::interval(sweep_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut release = false;
        let mut renewal: Option<JoinHandle<Renewal>> = None;
        // Steps that are rare or hold much state (lease renewal, relaying, the sweep) run boxed,
        // so that their state does not enlarge the future every idle session keeps.
        let ending = loop {
            if self.requests_done
                && self.exchanges.is_empty()
                && let Some((_, failure)) = self.end.take()
            {
                break Ending::Refused(failure);
            }
            let end_at = self.end.as_ref().map(|(at, _)| *at);
            let step = tokio::select! {
                () = self.hub.shutdown.cancelled(), if !self.going_away => self.go_away().await,
                message = self.requests.next(), if !self.requests_done => match message {
                    Some(message) => Box::pin(self.relay_request(message)).await,
                    None if self.drained => {
                        self.requests_done = true;
                        Ok(())
                    }
                    None => Err(Failure::new(ErrorCode::Unavailable, "request subscription ended")),
                },
                incoming = next_frame(&mut stream, &self.out) => match incoming {
                    Ok(Incoming::Frame(frame)) => Box::pin(self.on_frame(frame, &mut release)).await,
                    Ok(Incoming::Alive) => {
                        self.last_seen = Instant::now();
                        Ok(())
                    }
                    Ok(Incoming::Closed) => break Ending::ClientLeft,
                    Err(failure) => Err(failure),
                },
                Ok(()) = self.registration.takeover.changed() => self.on_takeover().await,
                Ok(()) = self.registration.revoked.changed() => Err(Failure::new(ErrorCode::Unauthorized, "token revoked")),
                Ok(()) = self.registration.quota.changed() => {
                    let notice = self.registration.quota.borrow_and_update().clone();
                    match notice {
                        Some(state) => self.send(HostFrame::Quota(state)).await,
                        None => Ok(()),
                    }
                }
                Some(message) = self.registration.streams.recv() => match self.exchanges.relay_from_ingress(&message) {
                    Relayed::Frame(frame) => self.send(frame).await,
                    Relayed::Probe => {
                        self.exchanges.answer_probe(&message).await;
                        Ok(())
                    }
                    Relayed::Nothing => Ok(()),
                },
                _ = renew.tick(), if !self.drained && renewal.is_none() => {
                    let checks = renewal_checks(self.hub.clone(), self.lease.clone(), self.credential.clone());
                    renewal = Some(tokio::spawn(checks.in_current_span()));
                    Ok(())
                }
                done = async { renewal.as_mut().expect("a renewal runs").await }, if renewal.is_some() => {
                    renewal = None;
                    match done {
                        Ok(done) => Box::pin(self.renewed(done)).await,
                        Err(e) => Err(Failure::new(ErrorCode::Internal, format!("lease renewal failed: {e}"))),
                    }
                }
                _ = ping.tick() => self.keepalive(ping_interval).await,
                _ = sweep.tick(), if !self.exchanges.is_empty() => Box::pin(self.sweep()).await,
                () = sleep_until_or_never(end_at), if end_at.is_some() => match self.end.take() {
                    Some((_, failure)) => Err(failure),
                    None => Ok(()),
                },
            };
            if release {
                break Ending::ClientLeft;
            }
            if let Err(failure) = step {
                break Ending::Refused(failure);
            }
        };
        Box::pin(self.close(&ending, release)).await;
        metrics::gauge!("host_sessions").decrement(1.0);
        ending
    }

    /// Takes in what a renewal found ([`renewal_checks`]): a lost lease drains the session, a
    /// name another account reserved meanwhile or a token that no longer exists (should the
    /// revocation watch have missed it) ends it.
    async fn renewed(&mut self, Renewal { lease, renewed, owner, valid }: Renewal) -> Result<(), Failure> {
        self.lease = lease;
        match renewed {
            Ok(()) => {}
            Err(LeaseError::Lost | LeaseError::InUse) => {
                self.start_drain(Failure::new(ErrorCode::SessionReplaced, "lease lost")).await;
            }
            Err(LeaseError::Unavailable(e)) => tracing::warn!(error = %e, "lease renewal failed; retrying"),
        }
        if let Err(failure) = owner
            && failure.code == ErrorCode::NameOwned
        {
            return Err(failure);
        }
        if let (Some(credential), Some(valid)) = (&self.credential, valid) {
            match valid {
                Ok(true) => {}
                Ok(false) => return Err(credential.lapsed()),
                Err(failure) => tracing::warn!(detail = %failure.detail, "token check failed; retrying"),
            }
        }
        Ok(())
    }

    /// The host is shutting down: tell the client to move, keep serving until its new session
    /// takes over (then drain) or the grace period ends.
    async fn go_away(&mut self) -> Result<(), Failure> {
        self.going_away = true;
        let failure = Failure::new(ErrorCode::GoingAway, "host shutting down");
        self.end_by(Instant::now() + self.hub.config.drain_grace(), failure);
        self.send(HostFrame::GoAway).await
    }

    /// Stops taking requests: drains the subscription, then ends once every relayed request is
    /// answered, with `failure`, at the latest after the grace period.
    async fn start_drain(&mut self, failure: Failure) {
        self.end_by(Instant::now() + self.hub.config.drain_grace(), failure);
        if !self.drained {
            self.drained = true;
            if let Err(e) = self.requests.drain().await {
                tracing::debug!(error = %e, "drain failed");
                self.requests_done = true;
            }
        }
    }

    /// Ends the session at `at` with `failure`, unless it is already due to end sooner.
    fn end_by(&mut self, at: Instant, failure: Failure) {
        match &mut self.end {
            Some((end_at, reason)) => {
                if at < *end_at {
                    *end_at = at;
                }
                *reason = failure;
            }
            None => self.end = Some((at, failure)),
        }
    }

    async fn relay_request(&mut self, message: async_nats::Message) -> Result<(), Failure> {
        let Some(reply) = message.reply else {
            return Ok(());
        };
        if self.exchanges.len() >= self.hub.config.max_inflight_per_session {
            metrics::counter!("host_requests_refused_total").increment(1);
            self.exchanges.refuse(reply, ErrorCode::TunnelBusy, "too many requests in flight").await;
            return Ok(());
        }
        let headers = message.headers.as_ref();
        if !crate::policies::ingress_has_applied(headers, self.policy_revision) {
            metrics::counter!("host_requests_before_policy_total").increment(1);
            let failure = tunnel_schemas::policy::pending(self.policy_revision);
            self.exchanges.refuse(reply, failure.code, &failure.detail).await;
            return Ok(());
        }
        self.next_stream = self.next_stream.wrapping_add(1);
        let stream = self.next_stream;
        if tracing::enabled!(tracing::Level::DEBUG) {
            let request_id = headers.and_then(|h| h.get(REQUEST_ID_HEADER)).map(|v| v.as_str().to_owned());
            tracing::debug!(stream, request_id, "relaying request");
        }
        let ingress = headers.and_then(|h| h.get(STREAM_HEADER)).map(|v| Subject::from(v.as_str()));
        let parent = headers.and_then(|h| h.get(TRACEPARENT)).map(async_nats::HeaderValue::as_str);
        let mut trace = self.hub.traces.span("session-host relay", SpanKind::Server, parent);
        let trace_parent = trace.traceparent();
        if trace.recording() {
            trace.set("tunnel.name", self.lease.name.to_string());
            trace.set("session.id", self.id.clone());
        }
        self.exchanges.open(stream, (reply, ingress), &message.payload, trace);
        if self.hub.config.ack_after_ms == 0 || headers.is_some_and(|h| h.get(UPLOAD_HEADER).is_some()) {
            // Ingress waits to learn this host's stream subject before it sends the body; and
            // the ping acknowledges the request.
            self.exchanges.relay_to_ingress(stream, StreamFrame::Ping).await;
        }
        self.send(HostFrame::Request { stream, request: message.payload, trace: trace_parent }).await
    }

    async fn on_frame(&mut self, frame: ClientFrame, release: &mut bool) -> Result<(), Failure> {
        self.last_seen = Instant::now();
        match frame {
            ClientFrame::Reply { stream, reply, end } => {
                self.exchanges.reply(stream, reply, end).await;
                Ok(())
            }
            ClientFrame::Stream { stream, frame } => {
                self.exchanges.relay_to_ingress(stream, frame).await;
                Ok(())
            }
            ClientFrame::Bye => {
                *release = true;
                Ok(())
            }
            ClientFrame::Hello(_) => Err(Failure::new(ErrorCode::BadFrame, "hello after the handshake")),
        }
    }

    /// A takeover by another session drains this one: requests already relayed are still
    /// answered (the client may be alive, moving away from a host that shuts down).
    async fn on_takeover(&mut self) -> Result<(), Failure> {
        let by = self.registration.takeover.borrow_and_update().clone();
        if let Some(session) = by {
            let detail = format!("session {session} resumed the tunnel");
            self.start_drain(Failure::new(ErrorCode::SessionReplaced, detail)).await;
        }
        Ok(())
    }

    async fn keepalive(&mut self, interval: Duration) -> Result<(), Failure> {
        if self.last_seen.elapsed() > interval * 3 {
            return Err(Failure::new(ErrorCode::TunnelDisconnected, "client stopped answering pings"));
        }
        self.queue(Outgoing::Ping).await
    }

    /// Checks the open exchanges, and the client that should answer them: a client silent for
    /// [`PROBE_AFTER`] is pinged, and one still silent `client_timeout` after the ping is
    /// presumed frozen or cut off, which ends the session and fails its requests at once instead
    /// of leaving them to the head timeout.
    async fn sweep(&mut self) -> Result<(), Failure> {
        if self.probed_at.is_some_and(|at| self.last_seen >= at) {
            self.probed_at = None;
        }
        match self.probed_at {
            Some(at) if at.elapsed() >= self.hub.config.client_timeout() => {
                return Err(Failure::new(ErrorCode::TunnelDisconnected, "client stopped answering"));
            }
            None if self.last_seen.elapsed() >= PROBE_AFTER => {
                self.probed_at = Some(Instant::now());
                self.queue(Outgoing::Ping).await?;
            }
            _ => {}
        }
        for reset in self.exchanges.sweep(self.hub.config.ack_after()).await {
            self.send(reset).await?;
        }
        Ok(())
    }

    /// Ends the session: no more requests reach it, every pending request fails at once, and
    /// the lease is released when the client said goodbye or may not come back (kept for a
    /// resume otherwise).
    async fn close(&mut self, ending: &Ending, release: bool) {
        let (access, code) = match ending {
            Ending::Refused(failure) if failure.code == ErrorCode::Unauthorized => {
                (Access::Revoked, Some(failure.code))
            }
            Ending::Refused(failure) => (Access::Closed, Some(failure.code)),
            Ending::ClientLeft => (Access::Closed, None),
        };
        self.hub.access_log.record(&self.lease.name, access, &self.id, &self.who, code);
        let (code, detail) = match ending {
            Ending::Refused(failure) if failure.code == ErrorCode::GoingAway => {
                (ErrorCode::GoingAway, "host shutting down")
            }
            _ => (ErrorCode::TunnelDisconnected, "tunnel client disconnected"),
        };
        // Drain: UNSUB, then a PING; requests the server routed here before it saw the UNSUB
        // arrive before the PONG and are answered, and after it the server routes none here.
        if !self.drained {
            self.drained = true;
            if let Err(e) = self.requests.drain().await {
                tracing::debug!(error = %e, "drain failed");
                self.requests_done = true;
            }
        }
        if !self.requests_done {
            let drained = async {
                while let Some(message) = self.requests.next().await {
                    if let Some(reply) = message.reply {
                        self.exchanges.refuse(reply, code, detail).await;
                    }
                }
            };
            if tokio::time::timeout(DRAIN_TIMEOUT, drained).await.is_err() {
                tracing::warn!("request subscription did not drain in time");
            }
        }
        self.exchanges.fail_all(code, detail).await;
        // A client whose token was revoked, or whose name another account reserved, cannot
        // resume: its lease goes now, so the ingress does not wait for it (ADR 0004).
        let final_ending = matches!(ending, Ending::Refused(failure) if matches!(failure.code, ErrorCode::Unauthorized | ErrorCode::NameOwned));
        if (release || final_ending) && !self.lease.shared {
            self.hub.leases.release(&self.lease).await;
            self.hub.policies.clear(self.lease.name.as_str()).await;
        }
        tracing::info!(released = release, "session closed");
    }

    async fn send(&self, frame: HostFrame) -> Result<(), Failure> {
        self.queue(Outgoing::Binary(encode(&frame).into())).await
    }

    /// Queues `frame` for the writer. A client that reads nothing while the queue stays full for
    /// `client_timeout` is presumed frozen: waiting on, the session could not notice it.
    async fn queue(&self, frame: Outgoing) -> Result<(), Failure> {
        let gone = || Failure::new(ErrorCode::Internal, "websocket writer gone");
        let frame = match self.out.try_send(frame) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(gone()),
            Err(mpsc::error::TrySendError::Full(frame)) => frame,
        };
        match tokio::time::timeout(self.hub.config.client_timeout(), self.out.send(frame)).await {
            Ok(sent) => sent.map_err(|_| gone()),
            Err(_) => Err(Failure::new(ErrorCode::TunnelDisconnected, "client stopped reading")),
        }
    }
}

/// Takes the name the client asked for (or a random free one), if its account may hold it; a
/// client asking to share the name joins the other clients of its account serving it.
async fn acquire(hub: &Hub, hello: &Hello, credential: Option<&Credential>, session: &str) -> Result<Lease, Failure> {
    let refused = |e: LeaseError, name: &TunnelName| match e {
        LeaseError::InUse => Failure::new(ErrorCode::NameInUse, format!("{name} is held by another client")),
        LeaseError::Lost | LeaseError::Unavailable(_) => Failure::new(ErrorCode::Unavailable, e.to_string()),
    };
    let share = match (hello.shared, credential) {
        (false, _) => None,
        (true, None) => return Err(Failure::new(ErrorCode::Unauthorized, "sharing a name needs an account token")),
        (true, Some(_)) if hello.name.is_none() => {
            return Err(Failure::new(ErrorCode::InvalidName, "a shared tunnel needs a name (--name)"));
        }
        (true, Some(credential)) => Some(credential.account.as_str()),
    };
    if let Some(requested) = &hello.name {
        let name = TunnelName::parse(requested).map_err(|e| match e {
            NameError::Invalid(_) => Failure::new(ErrorCode::InvalidName, e.to_string()),
            NameError::Reserved(_) => Failure::new(ErrorCode::ReservedName, e.to_string()),
        })?;
        let owns = hub.auth.may_hold(credential, name.as_str()).await?;
        return hub
            .leases
            .acquire(name.clone(), (hello.resume_secret.as_deref(), owns, share), session, &hub.config.node_id)
            .await
            .map_err(|e| refused(e, &name));
    }
    for _ in 0..RANDOM_NAME_ATTEMPTS {
        let name = TunnelName::random();
        if hub.auth.owner_of(name.as_str()).await?.is_some() {
            continue;
        }
        match hub.leases.acquire(name.clone(), (None, false, None), session, &hub.config.node_id).await {
            Err(LeaseError::InUse) => continue,
            result => return result.map_err(|e| refused(e, &name)),
        }
    }
    Err(Failure::new(ErrorCode::Unavailable, "no free random name found"))
}
