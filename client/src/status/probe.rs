//! Why a local service cannot be reached: the request events carry only the error code, so the
//! view asks the network itself, once per outage.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

/// How long a probe waits for the local service to accept a connection.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The reason a TCP connection to the service at `target` (`http://host:port/…`) fails now, as a
/// few words (`connection refused`); empty when it connects, or `target` cannot be read.
pub async fn reason(target: &str) -> String {
    let Ok(uri) = target.parse::<http::Uri>() else { return String::new() };
    let Some(host) = uri.host() else { return String::new() };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => String::new(),
        Ok(Err(e)) => describe(&e),
        Err(_) => format!("no answer within {} s", PROBE_TIMEOUT.as_secs()),
    }
}

fn describe(error: &io::Error) -> String {
    use io::ErrorKind::{AddrNotAvailable, ConnectionRefused, HostUnreachable, NetworkUnreachable, TimedOut};
    match error.kind() {
        kind @ (ConnectionRefused | TimedOut | HostUnreachable | NetworkUnreachable | AddrNotAvailable) => {
            kind.to_string()
        }
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tells_a_refused_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        assert_eq!(reason(&format!("http://127.0.0.1:{port}")).await, "", "it connects");
        drop(listener);
        assert_eq!(reason(&format!("http://127.0.0.1:{port}")).await, "connection refused");
        assert_eq!(reason("not a url").await, "");
    }
}
