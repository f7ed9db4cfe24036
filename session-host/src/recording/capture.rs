//! One exchange being recorded as it passes the host: heads as exchanged, bodies up to the
//! policy's cap per direction, in memory taken from the recorder's budget.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tunnel_schemas::events::TunnelRequest;
use tunnel_schemas::http::{Header, ResponseHead};
use tunnel_schemas::record::{ExchangeRecord, REPLAY_OF_HEADER, RecordedMessage, RecordedResponse, mask};
use tunnel_schemas::{ErrorCode, PROTOCOL_VERSION};

use super::recorder::Owner;

/// The bytes kept of one body.
///
/// They are copied as they pass, into one buffer sized from the declared length when there is
/// one: holding on to the received chunks instead would keep each socket read buffer they share
/// alive (more memory than is counted, and a fresh buffer for every read), and would need the
/// same copy at the end anyway.
#[derive(Default)]
struct Body {
    kept: Vec<u8>,
    size: u64,
    cut: bool,
}

impl Body {
    /// Counts `bytes` and keeps what fits under `cap` and in `budget`; `declared` is the body's
    /// announced length, if any.
    fn push(
        &mut self,
        bytes: &[u8],
        declared: Option<u64>,
        cap: usize,
        budget: &Arc<Semaphore>,
        held: &mut Option<OwnedSemaphorePermit>,
    ) {
        self.size += bytes.len() as u64;
        if self.cut || bytes.is_empty() {
            return;
        }
        let take = bytes.len().min(cap.saturating_sub(self.kept.len()));
        if take < bytes.len() {
            self.cut = true;
        }
        if take == 0 {
            return;
        }
        let needed = self.kept.len() + take;
        if needed > self.kept.capacity() {
            // Room is counted against the budget as it is reserved, not as it fills: a declared
            // length that never arrives still holds only what the budget granted.
            let room = if self.kept.capacity() == 0 {
                declared.map_or(needed, |length| usize::try_from(length).unwrap_or(cap).min(cap)).max(needed)
            } else {
                needed.max(self.kept.capacity().saturating_mul(2)).min(cap)
            };
            let grow = room.saturating_sub(self.kept.capacity());
            let Ok(permit) = budget.clone().try_acquire_many_owned(u32::try_from(grow).unwrap_or(u32::MAX)) else {
                metrics::counter!("host_recording_bodies_cut_total", "reason" => "buffer").increment(1);
                self.cut = true;
                return;
            };
            match held {
                Some(held) => held.merge(permit),
                None => *held = Some(permit),
            }
            self.kept.reserve_exact(room - self.kept.len());
        }
        self.kept.extend_from_slice(&bytes[..take]);
    }

    fn into_bytes(self) -> (Bytes, u64, bool) {
        (self.kept.into(), self.size, self.cut)
    }
}

/// The `Content-Length` of a head, if it declares one.
fn declared_length(headers: &[Header]) -> Option<u64> {
    let Header(_, value) = headers.iter().find(|Header(name, _)| name.eq_ignore_ascii_case("content-length"))?;
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// An exchange being captured.
pub struct Capture {
    started: Instant,
    at_ms: u64,
    request_id: String,
    method: String,
    target: String,
    request_headers: Vec<Header>,
    request_body: Body,
    /// The request's declared body length.
    request_length: Option<u64>,
    /// The public client asked for an upgrade.
    upgrade: bool,
    response: Option<(u16, Vec<Header>, Duration)>,
    response_body: Body,
    /// The response's declared body length.
    response_length: Option<u64>,
    error: Option<ErrorCode>,
    cap: usize,
    budget: Arc<Semaphore>,
    /// Memory held by the kept bodies, given back once the record is stored or dropped.
    permit: Option<OwnedSemaphorePermit>,
}

impl Capture {
    /// Starts capturing `request`, arrived at unix time `at_ms`; bodies are kept up to `cap`
    /// bytes each, in memory from `budget`.
    pub fn start(request: TunnelRequest, at_ms: u64, cap: usize, budget: Arc<Semaphore>) -> Self {
        let TunnelRequest { request_id, head, body, upgrade, .. } = request;
        let mut capture = Self {
            started: Instant::now(),
            at_ms,
            request_id,
            method: head.method,
            target: head.target,
            request_length: declared_length(&head.headers),
            request_headers: head.headers,
            request_body: Body::default(),
            upgrade,
            response: None,
            response_body: Body::default(),
            response_length: None,
            error: None,
            cap,
            budget,
            permit: None,
        };
        capture.request_data(&body);
        capture
    }

    /// Whether the exchange switched protocols: its bytes are counted, not kept.
    fn upgraded(&self) -> bool {
        self.upgrade && self.response.as_ref().is_some_and(|(status, _, _)| *status == 101)
    }

    /// Request body bytes (or, after an upgrade, bytes from the public client).
    pub fn request_data(&mut self, bytes: &Bytes) {
        if self.upgraded() {
            self.request_body.size += bytes.len() as u64;
        } else {
            self.request_body.push(bytes, self.request_length, self.cap, &self.budget, &mut self.permit);
        }
    }

    /// The response head and the first part of its body.
    pub fn response(&mut self, head: &ResponseHead, body: &Bytes) {
        self.response = Some((head.status, head.headers.clone(), self.started.elapsed()));
        self.response_length = declared_length(&head.headers);
        self.response_data(body);
    }

    /// Response body bytes (or, after an upgrade, bytes to the public client).
    pub fn response_data(&mut self, bytes: &Bytes) {
        if self.upgraded() {
            self.response_body.size += bytes.len() as u64;
        } else {
            self.response_body.push(bytes, self.response_length, self.cap, &self.budget, &mut self.permit);
        }
    }

    /// The exchange failed with `code` (before or after the response head).
    pub fn fail(&mut self, code: ErrorCode) {
        self.error.get_or_insert(code);
    }

    /// The finished record for `owner`, `masked` headers masked, with the memory it holds.
    pub fn seal(self, owner: &Owner, masked: &[String]) -> (ExchangeRecord, Option<OwnedSemaphorePermit>) {
        let upgraded = self.upgraded();
        let duration_us = micros(self.started.elapsed());
        let replay_of = self
            .request_headers
            .iter()
            .find(|Header(name, _)| name.eq_ignore_ascii_case(REPLAY_OF_HEADER))
            .map(|Header(_, value)| String::from_utf8_lossy(value).into_owned());
        let mut request_headers = self.request_headers;
        let mut masked_names = mask(&mut request_headers, masked);
        let (body, size, cut) = self.request_body.into_bytes();
        let request =
            RecordedMessage { method: self.method, target: self.target, headers: request_headers, body, size, cut };
        let mut head_us = duration_us;
        let response = self.response.map(|(status, mut headers, head_at)| {
            head_us = micros(head_at);
            for name in mask(&mut headers, masked) {
                if !masked_names.contains(&name) {
                    masked_names.push(name);
                }
            }
            let (body, size, cut) = self.response_body.into_bytes();
            RecordedResponse { status, headers, body, size, cut }
        });
        let record = ExchangeRecord {
            v: PROTOCOL_VERSION,
            request_id: self.request_id,
            tunnel: owner.tunnel.clone(),
            owner: owner.key.clone(),
            account: owner.account.clone(),
            at_ms: self.at_ms,
            head_us,
            duration_us,
            request,
            response,
            error: self.error,
            upgraded,
            masked: masked_names,
            replay_of,
        };
        (record, self.permit)
    }
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use tunnel_schemas::http::RequestHead;

    use super::*;

    fn owner(key: &str) -> Owner {
        Owner { tunnel: "demo".into(), key: key.into(), account: None }
    }

    fn request(body: &'static [u8]) -> TunnelRequest {
        TunnelRequest {
            v: PROTOCOL_VERSION,
            request_id: "r1".into(),
            head: RequestHead {
                method: "POST".into(),
                target: "/a?b=1".into(),
                headers: vec![
                    Header("authorization".into(), Bytes::from_static(b"Bearer xyz")),
                    Header("x-replay-of".into(), Bytes::from_static(b"r0")),
                ],
            },
            body: Bytes::from_static(body),
            end: true,
            upgrade: false,
        }
    }

    #[test]
    fn bodies_are_cut_at_the_cap_and_marked() {
        let budget = Arc::new(Semaphore::new(1 << 20));
        let mut capture = Capture::start(request(b"0123456789"), 1, 4, budget.clone());
        capture.request_data(&Bytes::from_static(b"more"));
        let head = ResponseHead { status: 200, headers: vec![Header("set-cookie".into(), Bytes::from_static(b"s=1"))] };
        capture.response(&head, &Bytes::from_static(b"ok"));
        let masked = vec!["authorization".to_owned(), "set-cookie".to_owned()];
        let (record, permit) = capture.seal(&owner("owner"), &masked);
        assert_eq!(&record.request.body[..], b"0123");
        assert_eq!((record.request.size, record.request.cut), (14, true));
        let response = record.response.expect("a response");
        assert_eq!((&response.body[..], response.cut), (&b"ok"[..], false));
        assert_eq!(&response.headers[0].1[..], b"***");
        assert_eq!(&record.request.headers[0].1[..], b"**********");
        assert_eq!(record.masked, ["authorization", "set-cookie"]);
        assert_eq!(record.replay_of.as_deref(), Some("r0"));
        assert_eq!(budget.available_permits(), (1 << 20) - 6, "kept bytes hold the budget");
        drop(permit);
        assert_eq!(budget.available_permits(), 1 << 20);
    }

    #[test]
    fn an_exhausted_budget_cuts_instead_of_growing() {
        let budget = Arc::new(Semaphore::new(3));
        let (record, _) = Capture::start(request(b"0123456789"), 1, 1 << 20, budget).seal(&owner("o"), &[]);
        assert!(record.request.cut);
        assert!(record.request.body.is_empty());
        assert_eq!(record.request.size, 10);
    }
}
