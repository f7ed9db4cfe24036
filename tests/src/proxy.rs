//! A TCP proxy that cuts every open connection on demand, to break sessions from outside, and
//! sends new connections wherever it is told, as a load balancer does during a rolling restart.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards connections on its own port to a target address.
pub struct CutProxy {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
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
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = *current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let handle = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tracked.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(handle);
            }
        });
        Self { addr, target, connections, accept }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends new connections to `target`; open ones stay where they are.
    pub fn retarget(&self, target: SocketAddr) {
        *self.target.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = target;
    }

    /// Drops every open connection (both sockets close); new connections still work.
    pub fn cut(&self) {
        for handle in self.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain(..) {
            handle.abort();
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
