//! The local inspector: a page and a JSON API on `127.0.0.1:4040` showing the exchanges this
//! client forwarded (and, for a recorded tunnel, those its session-host recorded), live, with
//! their heads and bodies, and replaying any of them against the local service, the new
//! response compared with the original by the same rules as `tunnel replay --compare`.
//!
//! - [`ring`]: the recent exchanges, bounded by count and by body bytes;
//! - [`capture`]: one exchange teed into the ring as it streams, bodies capped;
//! - [`recordings`]: the session-host's recordings of the tunnel, merged by request id;
//! - [`rerun`]: replay, with changes, and the comparison;
//! - [`api`]: the HTTP server: the page, the JSON API, live updates, the Host guard.
//!
//! One [`Inspector`] serves every tunnel of a process; each tunnel holds a [`Handle`] to it.

pub mod api;
pub mod capture;
pub mod recordings;
pub mod rerun;
pub mod ring;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tunnel_schemas::http::RequestHead;
use tunnel_schemas::record::{ExchangeRecord, RecordedMessage};

pub use capture::{Capture, Tap};
pub use ring::{Entry, Ring, Sources};

use crate::forward::{Forwarder, HostHeader};
use crate::target::Target;

/// Where the inspector listens unless told otherwise.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4040);
/// Exchanges kept unless told otherwise.
pub const DEFAULT_CAPACITY: usize = 1000;
/// Most exchanges the ring may be asked to keep.
pub const MAX_CAPACITY: usize = 100_000;
/// Body bytes kept per direction of an exchange unless told otherwise.
pub const DEFAULT_BODY_CAP: usize = 1 << 20;
/// Ports tried, from the one asked for upwards, when it is taken.
pub const PORTS_TRIED: u16 = 10;
/// Row updates queued for each live page; a page further behind reloads the list.
const UPDATES_QUEUED: usize = 1024;

/// How the inspector runs.
#[derive(Debug, Clone)]
pub struct InspectorConfig {
    /// Address to listen on; the next ports are tried when its port is taken.
    pub addr: SocketAddr,
    /// Exchanges kept in memory (oldest dropped first).
    pub capacity: usize,
    /// Body bytes kept per direction of an exchange; longer bodies are marked cut.
    pub body_cap: usize,
}

impl Default for InspectorConfig {
    fn default() -> Self {
        Self { addr: DEFAULT_ADDR, capacity: DEFAULT_CAPACITY, body_cap: DEFAULT_BODY_CAP }
    }
}

/// Why the inspector is not running.
#[derive(Debug, thiserror::Error)]
pub enum InspectorError {
    /// No port could be bound.
    #[error("cannot listen on {addr} (nor on the {tried} ports after it): {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Ports tried after it.
        tried: u16,
        /// The last error.
        #[source]
        source: std::io::Error,
    },
}

/// The state the server and the tunnels share.
pub(crate) struct Shared {
    ring: Mutex<Ring>,
    updates: broadcast::Sender<Arc<Entry>>,
    body_cap: usize,
    tunnels: Mutex<Vec<Arc<TunnelSlot>>>,
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Shared {
    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `entry`, or merges it into the row of the same request id, and tells live pages.
    pub(crate) fn insert(&self, entry: Entry) -> Arc<Entry> {
        let mut ring = self.ring();
        let merged = ring.update(&entry.record.request_id.clone(), |old| {
            let sources = Sources {
                client: old.sources.client || entry.sources.client,
                server: old.sources.server || entry.sources.server,
                replay: old.sources.replay || entry.sources.replay,
            };
            // The client's capture wins over the server's recording of the same exchange.
            if entry.sources.client || !old.sources.client {
                *old = Entry { seq: old.seq, sources, ..entry.clone() };
            }
            old.sources = sources;
        });
        let entry = merged.unwrap_or_else(|| ring.push(entry));
        drop(ring);
        let _ = self.updates.send(entry.clone());
        entry
    }

    /// Changes the row of `request_id` and tells live pages.
    pub(crate) fn update(&self, request_id: &str, change: impl FnOnce(&mut Entry)) -> Option<Arc<Entry>> {
        let entry = self.ring().update(request_id, change)?;
        let _ = self.updates.send(entry.clone());
        Some(entry)
    }

    /// The row of `request_id`.
    pub(crate) fn get(&self, request_id: &str) -> Option<Arc<Entry>> {
        self.ring().get(request_id)
    }

    /// The tunnel named `name`.
    fn tunnel(&self, name: &str) -> Option<Arc<TunnelSlot>> {
        self.tunnels.lock().unwrap_or_else(PoisonError::into_inner).iter().find(|t| t.name() == name).cloned()
    }
}

/// One tunnel as the inspector knows it.
pub(crate) struct TunnelSlot {
    /// The granted name; empty until the tunnel is online.
    name: Mutex<String>,
    /// The local service, for replays.
    forwarder: Forwarder,
    /// Where replays go.
    target: Target,
    /// Stops the reader of the session-host's recordings of the current session.
    recordings: Mutex<Option<CancellationToken>>,
}

impl TunnelSlot {
    fn name(&self) -> String {
        self.name.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// The inspector of a process: its server runs until the shutdown token given to
/// [`Inspector::start`] is cancelled.
#[derive(Clone)]
pub struct Inspector {
    shared: Arc<Shared>,
}

impl Inspector {
    /// Binds `config.addr` (or, when its port is taken, one of the [`PORTS_TRIED`] ports after
    /// it) and serves the inspector there in the current runtime until `shutdown`.
    ///
    /// # Errors
    /// [`InspectorError::Bind`] when no port can be bound.
    pub async fn start(config: InspectorConfig, shutdown: CancellationToken) -> Result<Self, InspectorError> {
        let listener = bind(config.addr).await?;
        let addr =
            listener.local_addr().map_err(|source| InspectorError::Bind { addr: config.addr, tried: 0, source })?;
        let shared = Arc::new(Shared {
            ring: Mutex::new(Ring::new(config.capacity.min(MAX_CAPACITY), ring::MAX_RING_BODY_BYTES)),
            updates: broadcast::channel(UPDATES_QUEUED).0,
            body_cap: config.body_cap,
            tunnels: Mutex::new(Vec::new()),
            addr,
            shutdown: shutdown.clone(),
        });
        let server = api::serve(listener, shared.clone(), shutdown);
        tokio::spawn(tracing::Instrument::instrument(server, tracing::debug_span!("inspector")));
        Ok(Self { shared })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Its page (`http://127.0.0.1:4040`).
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// A handle for a tunnel forwarding to `target` with `host_header` (replays go there too).
    pub fn handle(&self, target: Target, host_header: HostHeader) -> Handle {
        let slot = Arc::new(TunnelSlot {
            name: Mutex::new(String::new()),
            forwarder: Forwarder::new(target.clone()).with_host_header(host_header),
            target,
            recordings: Mutex::new(None),
        });
        self.shared.tunnels.lock().unwrap_or_else(PoisonError::into_inner).push(slot.clone());
        Handle { shared: self.shared.clone(), slot }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, InspectorError> {
    let tried = if addr.port() == 0 { 0 } else { PORTS_TRIED.min(u16::MAX - addr.port()) };
    let mut last = None;
    for port in addr.port()..=addr.port() + tried {
        match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    let source = last.unwrap_or_else(|| std::io::Error::other("no port tried"));
    Err(InspectorError::Bind { addr, tried, source })
}

/// A tunnel's link to the inspector: exchanges are captured through it. Cheap to clone.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
    slot: Arc<TunnelSlot>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("addr", &self.shared.addr).finish_non_exhaustive()
    }
}

impl Handle {
    /// The inspector's page.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// Starts capturing the exchange `request_id` whose request head is `head`.
    pub fn capture(&self, request_id: &str, head: &RequestHead) -> Capture {
        Capture::new(self.shared.clone(), self.slot.clone(), request_id, head)
    }

    /// The tunnel is online as `name` on `server` (its WebSocket URL) with `secret`; when the
    /// server records it, the recordings are read from then on and merged into the list.
    pub fn online(&self, name: &str, server: &str, secret: &str, recording: bool) {
        name.clone_into(&mut self.slot.name.lock().unwrap_or_else(PoisonError::into_inner));
        let stop = self.shared.shutdown.child_token();
        let previous = self.slot.recordings.lock().unwrap_or_else(PoisonError::into_inner).replace(stop.clone());
        if let Some(previous) = previous {
            previous.cancel();
        }
        if !recording {
            return;
        }
        let Ok(base) = crate::trail::host_base(server) else { return };
        let access = crate::trail::Access::Host { base, secret: secret.to_owned() };
        let reader = recordings::follow(self.shared.clone(), name.to_owned(), access, stop);
        tokio::spawn(tracing::Instrument::instrument(
            reader,
            tracing::debug_span!("inspector_recordings", tunnel = name),
        ));
    }
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> u64 {
    tunnel_trail::filter::now_ms()
}

/// A record of the exchange `request_id` of `tunnel` with `request`, arrived now, nothing else
/// known yet.
pub(crate) fn new_record(request_id: &str, tunnel: String, request: RecordedMessage) -> ExchangeRecord {
    ExchangeRecord {
        v: tunnel_schemas::PROTOCOL_VERSION,
        request_id: request_id.to_owned(),
        tunnel,
        owner: String::new(),
        account: None,
        at_ms: now_ms(),
        head_us: 0,
        duration_us: 0,
        request,
        response: None,
        error: None,
        upgraded: false,
        masked: Vec::new(),
        replay_of: None,
    }
}

/// `record` with its bodies cut to `cap` bytes (marked cut when they were longer).
pub(crate) fn capped(mut record: ExchangeRecord, cap: usize) -> ExchangeRecord {
    // Copied, not truncated: a truncated `Bytes` would keep the whole buffer alive.
    if record.request.body.len() > cap {
        record.request.body = bytes::Bytes::copy_from_slice(&record.request.body[..cap]);
        record.request.cut = true;
    }
    if let Some(response) = record.response.as_mut()
        && response.body.len() > cap
    {
        response.body = bytes::Bytes::copy_from_slice(&response.body[..cap]);
        response.cut = true;
    }
    record
}
