//! A TCP proxy that cuts every open connection on demand, to break sessions from outside, or
//! blackholes them (nothing passes, nothing closes, as on a network that drops packets), and
//! sends new connections wherever it is told, as a load balancer does during a rolling restart.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Bytes relayed per read.
const CHUNK: usize = 16 << 10;

/// Forwards connections on its own port to a target address.
pub struct CutProxy {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// `true` while blackholed.
    blackhole: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl CutProxy {
    /// Starts proxying to `target`.
    ///
    /// # Panics
    /// When no port can be bound.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let tracked = connections.clone();
        let target = Arc::new(Mutex::new(target));
        let current = target.clone();
        let (blackhole, holes) = watch::channel(false);
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let target = *current.lock().unwrap_or_else(PoisonError::into_inner);
                let handle = tokio::spawn(relay(inbound, target, holes.clone()));
                tracked.lock().unwrap_or_else(PoisonError::into_inner).push(handle);
            }
        });
        Self { addr, target, connections, blackhole, accept }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends new connections to `target`; open ones stay where they are.
    pub fn retarget(&self, target: SocketAddr) {
        *self.target.lock().unwrap_or_else(PoisonError::into_inner) = target;
    }

    /// Drops every open connection (both sockets close); new connections still work.
    pub fn cut(&self) {
        for handle in self.connections.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            handle.abort();
        }
    }

    /// Starts (`true`) or ends a blackhole: while it lasts no byte passes either way and no
    /// connection closes; new connections are accepted and held. Bytes held back pass once it
    /// ends, as TCP retransmits them once a network heals.
    pub fn blackhole(&self, on: bool) {
        self.blackhole.send_replace(on);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Relays `inbound` to `target`, pausing while `holes` says so.
async fn relay(inbound: TcpStream, target: SocketAddr, mut holes: watch::Receiver<bool>) {
    if holes.wait_for(|on| !on).await.is_err() {
        return;
    }
    let Ok(outbound) = TcpStream::connect(target).await else { return };
    let (inbound_read, inbound_write) = inbound.into_split();
    let (outbound_read, outbound_write) = outbound.into_split();
    tokio::join!(copy(inbound_read, outbound_write, holes.clone()), copy(outbound_read, inbound_write, holes));
}

/// Copies one direction until end of input, reading nothing while blackholed.
async fn copy(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, mut holes: watch::Receiver<bool>) {
    let mut buffer = vec![0; CHUNK];
    loop {
        if holes.wait_for(|on| !on).await.is_err() {
            return;
        }
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        // What was read when the blackhole started is held until it ends.
        if holes.wait_for(|on| !on).await.is_err() || to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}
