//! `idle-sessions`: opens many idle tunnel sessions against a session-host, to measure what an
//! idle session costs it.
//!
//! Usage: `idle-sessions --url ws://127.0.0.1:7070/v1/connect [--parallel 256]`, then commands on
//! stdin, one per line:
//!
//! - `open N`: opens N more sessions (at most `--parallel` handshakes at a time) and, once every
//!   one of them has been welcomed or has failed, prints one JSON line
//!   `{"open":<total open>,"failed":<failures so far>,"ms":<time taken>,"error":<first error>}`;
//! - `quit` or end of input: exits, dropping every socket.
//!
//! Each session sends the client's MessagePack hello (`{"Hello":{"v":1,"name":null,
//! "resume_secret":null,"agent":"bench-idle"}}`, an externally tagged enum encoded as a map, as
//! `tunnel_schemas::encode` writes it), waits for `Welcome`, then only reads, so that pings are
//! answered and the session stays alive.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Time one handshake (connect, hello, welcome) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The hello frame, MessagePack by hand so this tool needs nothing from the workspace.
fn hello() -> Vec<u8> {
    let mut b = vec![0x81]; // map of 1: the enum variant
    fixstr(&mut b, "Hello");
    b.push(0x84); // map of 4: the struct's fields
    fixstr(&mut b, "v");
    b.push(0x01);
    fixstr(&mut b, "name");
    b.push(0xc0); // nil
    fixstr(&mut b, "resume_secret");
    b.push(0xc0);
    fixstr(&mut b, "agent");
    fixstr(&mut b, "bench-idle");
    b
}

fn fixstr(buf: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 32, "fixstr only");
    buf.push(0xa0 | s.len() as u8);
    buf.extend_from_slice(s.as_bytes());
}

/// The variant name of a host frame: the first key of the outer map.
fn variant(frame: &[u8]) -> Option<&str> {
    if frame.len() < 2 || frame[0] != 0x81 || frame[1] & 0xe0 != 0xa0 {
        return None;
    }
    let len = usize::from(frame[1] & 0x1f);
    std::str::from_utf8(frame.get(2..2 + len)?).ok()
}

async fn open_one(url: &str, open: Arc<AtomicUsize>) -> Result<(), String> {
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let handshake = async {
        let (mut socket, _) =
            tokio_tungstenite::connect_async_with_config(url, Some(config), true)
                .await
                .map_err(|e| format!("connect: {e}"))?;
        socket
            .send(Message::Binary(hello().into()))
            .await
            .map_err(|e| format!("send hello: {e}"))?;
        loop {
            match socket.next().await {
                Some(Ok(Message::Binary(frame))) => {
                    return match variant(&frame) {
                        Some("Welcome") => Ok(socket),
                        other => Err(format!("expected Welcome, got {other:?}")),
                    };
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("read: {e}")),
                None => return Err("closed before welcome".into()),
            }
        }
    };
    let mut socket = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| "handshake timed out".to_string())??;
    open.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        // Reading answers pings; the loop ends when the host closes the session.
        while let Some(Ok(_)) = socket.next().await {}
        open.fetch_sub(1, Ordering::Relaxed);
    });
    Ok(())
}

#[tokio::main]
async fn main() {
    let mut url = String::from("ws://127.0.0.1:7070/v1/connect");
    let mut parallel = 256usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--url", Some(v)) => url = v,
            ("--parallel", Some(v)) => parallel = v.parse().unwrap_or(parallel),
            _ => {
                eprintln!("usage: idle-sessions --url WS_URL [--parallel N]");
                std::process::exit(2);
            }
        }
    }
    let url = Arc::new(url);
    let open = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let limit = Arc::new(Semaphore::new(parallel.max(1)));
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut words = line.split_whitespace();
        match (words.next(), words.next().map(str::parse::<usize>)) {
            (Some("open"), Some(Ok(n))) => {
                let started = Instant::now();
                let mut tasks = JoinSet::new();
                for _ in 0..n {
                    let (url, open, failed, first_error, limit) = (
                        url.clone(),
                        open.clone(),
                        failed.clone(),
                        first_error.clone(),
                        limit.clone(),
                    );
                    tasks.spawn(async move {
                        let Ok(_permit) = limit.acquire().await else {
                            return;
                        };
                        if let Err(e) = open_one(&url, open).await {
                            failed.fetch_add(1, Ordering::Relaxed);
                            first_error.lock().await.get_or_insert(e);
                        }
                    });
                }
                while tasks.join_next().await.is_some() {}
                let error = first_error.lock().await.clone();
                println!(
                    "{{\"open\":{},\"failed\":{},\"ms\":{},\"error\":{}}}",
                    open.load(Ordering::Relaxed),
                    failed.load(Ordering::Relaxed),
                    started.elapsed().as_millis(),
                    error.map_or_else(|| "null".to_string(), |e| format!("{e:?}")),
                );
            }
            (Some("quit"), _) => break,
            (None, _) => {}
            _ => eprintln!("unknown command: {line}"),
        }
    }
}
