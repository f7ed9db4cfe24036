//! `tunnel-healthcheck`: the health check of the http-tunnel container images.
//!
//! The images hold no shell and no curl, so this tiny program does their one HTTP call: it GETs a
//! service's own `/readyz` (or any `http://` URL) and exits 0 on a 2xx answer, 1 otherwise.
//!
//! ```text
//! tunnel-healthcheck                                  # http://<TUNNEL_LISTEN>/readyz
//! tunnel-healthcheck http://127.0.0.1:8222/healthz    # any plain-HTTP URL (the NATS image)
//! ```
//! Without a URL it asks the address in `TUNNEL_LISTEN` (the services' listen setting), with a
//! wildcard address (`0.0.0.0`, `[::]`) replaced by the loopback one. Standard library only:
//! one connection, HTTP/1.0, every step under [`TIMEOUT`].

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

/// The bound on connecting, writing and reading; a check slower than this is a failed check.
const TIMEOUT: Duration = Duration::from_secs(2);
/// The most of the answer read: the status line fits well within it.
const MAX_HEAD: usize = 512;

fn main() -> ExitCode {
    let url = match std::env::args().nth(1) {
        Some(url) => url,
        None => match std::env::var("TUNNEL_LISTEN") {
            Ok(listen) => format!("http://{}/readyz", loopback(&listen)),
            Err(_) => {
                eprintln!("tunnel-healthcheck: no URL given and TUNNEL_LISTEN is not set");
                return ExitCode::FAILURE;
            }
        },
    };
    match check(&url) {
        Ok(status) if (200..300).contains(&status) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("tunnel-healthcheck: {url} answered {status}");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("tunnel-healthcheck: {url}: {err}");
            ExitCode::FAILURE
        }
    }
}

/// A listen address turned into one to connect to: wildcards become the loopback address.
fn loopback(listen: &str) -> String {
    if let Some(port) = listen.strip_prefix("0.0.0.0:") {
        format!("127.0.0.1:{port}")
    } else if let Some(port) = listen.strip_prefix("[::]:") {
        format!("[::1]:{port}")
    } else {
        listen.to_owned()
    }
}

/// GETs `url` (`http://host:port/path`) and returns the status code of the answer.
fn check(url: &str) -> Result<u16, String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    // One write: a server that answers after its first read sees the whole request.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut head = Vec::with_capacity(MAX_HEAD);
    stream.take(MAX_HEAD as u64).read_to_end(&mut head).map_err(|e| e.to_string())?;
    status_of(&head).ok_or_else(|| "the answer is not HTTP".to_owned())
}

/// The status code of an HTTP/1.x status line at the start of `head`.
fn status_of(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let mut parts = std::str::from_utf8(line).ok()?.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot server answering `answer` to the first connection; returns its URL.
    fn serve_once(answer: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local address");
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            // The whole request head is read before answering: closing with unread bytes would
            // reset the connection under the answer.
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = conn.write_all(answer.as_bytes());
        });
        format!("http://{addr}/readyz")
    }

    #[test]
    fn ready_and_unready_answers() {
        assert_eq!(check(&serve_once("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nready")), Ok(200));
        assert_eq!(check(&serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\nnats not connected")), Ok(503));
        assert!(check(&serve_once("SSH-2.0-OpenSSH\r\n")).is_err());
    }

    #[test]
    fn nothing_listening_is_an_error() {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        assert!(check(&format!("http://127.0.0.1:{port}/readyz")).is_err());
        assert!(check("https://127.0.0.1:1/readyz").is_err());
    }

    #[test]
    fn wildcard_listen_addresses_become_loopback() {
        assert_eq!(loopback("0.0.0.0:7070"), "127.0.0.1:7070");
        assert_eq!(loopback("[::]:8080"), "[::1]:8080");
        assert_eq!(loopback("10.0.0.5:7090"), "10.0.0.5:7090");
    }
}
