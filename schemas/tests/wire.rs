//! Pins the wire format: every message round-trips, and its bytes match a golden encoding, so an
//! accidental change to the contract fails here before it reaches a peer.

use bytes::Bytes;
use tunnel_schemas::audit::{AuditBatch, RequestAudit};
use tunnel_schemas::events::{Control, Failure, TunnelReply, TunnelRequest, TunnelResponse};
use tunnel_schemas::frames::{ClientFrame, Hello, HostFrame, Welcome};
use tunnel_schemas::http::{Header, RequestHead, ResponseHead};
use tunnel_schemas::policy::PublicPolicy;
use tunnel_schemas::stream::StreamFrame;
use tunnel_schemas::{ErrorCode, decode, encode};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Asserts that `message` encodes to `golden` (hex) and decodes back to itself.
fn pin<T>(message: &T, golden: &str)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = encode(message);
    assert_eq!(hex(&bytes), golden, "wire bytes of {message:?} changed");
    let decoded: T = decode(&bytes, usize::MAX).expect("decodes");
    assert_eq!(&decoded, message);
}

fn hello() -> Hello {
    Hello {
        v: 1,
        name: Some("demo".into()),
        resume_secret: None,
        agent: "tunnel/0.1.0".into(),
        record: true,
        token: None,
        policy: PublicPolicy::default(),
        shared: false,
    }
}

fn welcome() -> Welcome {
    Welcome {
        v: 1,
        name: "demo".into(),
        url: "http://demo.localhost:8080".into(),
        session: "s1".into(),
        resume_secret: "r".into(),
        max_reply_bytes: 1_044_480,
        recording: true,
        host: "host1".into(),
    }
}

fn request() -> TunnelRequest {
    TunnelRequest {
        v: 1,
        request_id: "id1".into(),
        head: RequestHead {
            method: "POST".into(),
            target: "/a?b=%zz".into(),
            headers: vec![Header("x-raw".into(), Bytes::from_static(b"\xff\x00"))],
        },
        body: Bytes::from_static(&[0, 1, 255]),
        end: false,
        upgrade: false,
    }
}

fn response() -> TunnelReply {
    TunnelReply::Response(TunnelResponse {
        head: ResponseHead { status: 200, headers: vec![Header("set-cookie".into(), Bytes::from_static(b"a=1"))] },
        body: Bytes::from_static(b"ok"),
        end: true,
    })
}

#[test]
fn client_frames() {
    pin(
        &ClientFrame::Hello(hello()),
        "81a548656c6c6f86a17601a46e616d65a464656d6fad726573756d655f736563726574c0a56167656e74ac74756e6e656c2f302e312e30a67265636f7264c3a5746f6b656ec0",
    );
    pin(
        &ClientFrame::Reply { stream: 7, reply: Bytes::from_static(b"\x81"), end: true },
        "81a55265706c7983a673747265616d07a57265706c79c40181a3656e64c3",
    );
    pin(&ClientFrame::Bye, "a3427965");
}

#[test]
fn host_frames() {
    pin(
        &HostFrame::Welcome(welcome()),
        "81a757656c636f6d6588a17601a46e616d65a464656d6fa375726cba687474703a2f2f64656d6f2e6c6f63616c686f73743a38303830a773657373696f6ea27331ad726573756d655f736563726574a172af6d61785f7265706c795f6279746573ce000ff000a97265636f7264696e67c3a4686f7374a5686f737431",
    );
    pin(
        &HostFrame::Refused(Failure::new(ErrorCode::NameInUse, "taken")),
        "81a75265667573656482a4636f6465ab6e616d655f696e5f757365a664657461696ca574616b656e",
    );
    pin(
        &HostFrame::Request { stream: 7, request: Bytes::from_static(b"\x80"), trace: None },
        "81a75265717565737482a673747265616d07a772657175657374c40180",
    );
    pin(
        &HostFrame::Request { stream: 7, request: Bytes::from_static(b"\x80"), trace: Some("00-1-2-01".into()) },
        "81a75265717565737483a673747265616d07a772657175657374c40180a57472616365a930302d312d322d3031",
    );
    pin(&HostFrame::GoAway, "a6476f41776179");
}

/// A host older than the `host` field sends a welcome without it; the client still reads it.
#[test]
fn a_welcome_without_host_still_decodes() {
    let old = "81a757656c636f6d6587a17601a46e616d65a464656d6fa375726cba687474703a2f2f64656d6f2e6c6f63616c686f73743a38303830a773657373696f6ea27331ad726573756d655f736563726574a172af6d61785f7265706c795f6279746573ce000ff000a97265636f7264696e67c3";
    let bytes: Vec<u8> =
        (0..old.len()).step_by(2).map(|i| u8::from_str_radix(&old[i..i + 2], 16).expect("hex")).collect();
    let decoded: HostFrame = decode(&bytes, usize::MAX).expect("decodes");
    assert_eq!(decoded, HostFrame::Welcome(Welcome { host: String::new(), ..welcome() }));
}

#[test]
fn stream_frames() {
    let data = StreamFrame::Data { seq: 3, bytes: Bytes::from_static(b"\x00\xff") };
    pin(
        &HostFrame::Stream { stream: 7, frame: data },
        "81a653747265616d82a673747265616d07a56672616d6581a44461746182a373657103a56279746573c40200ff",
    );
    pin(
        &ClientFrame::Stream { stream: 7, frame: StreamFrame::Credit { bytes: 131_072 } },
        "81a653747265616d82a673747265616d07a56672616d6581a643726564697481a56279746573ce00020000",
    );
    pin(&StreamFrame::End, "a3456e64");
    pin(&StreamFrame::Reset { code: ErrorCode::Cancelled }, "81a5526573657481a4636f6465a963616e63656c6c6564");
    pin(&StreamFrame::Ping, "a450696e67");
}

#[test]
fn nats_events() {
    pin(
        &request(),
        "86a17601aa726571756573745f6964a3696431a46865616483a66d6574686f64a4504f5354a6746172676574a82f613f623d257a7aa7686561646572739192a5782d726177c402ff00a4626f6479c4030001ffa3656e64c2a775706772616465c2",
    );
    pin(
        &response(),
        "81a8526573706f6e736583a46865616482a6737461747573ccc8a7686561646572739192aa7365742d636f6f6b6965c403613d31a4626f6479c4026f6ba3656e64c3",
    );
    pin(
        &TunnelReply::Failure(Failure::new(ErrorCode::UpstreamUnreachable, "refused")),
        "81a74661696c75726582a4636f6465b4757073747265616d5f756e726561636861626c65a664657461696ca772656675736564",
    );
    pin(&Control::Takeover { session: "s2".into() }, "81a854616b656f76657281a773657373696f6ea27332");
}

#[test]
fn audit_events() {
    let audit = RequestAudit {
        v: 1,
        request_id: "id1".into(),
        tunnel: "demo".into(),
        method: "GET".into(),
        path: "/".into(),
        status: 502,
        error: Some(ErrorCode::TunnelOffline),
        bytes_in: 0,
        bytes_out: 0,
        duration_us: 900,
        remote_addr: "127.0.0.1".into(),
        at_ms: 1_800_000_000_000,
        account: None,
        replay: false,
        head_in: 0,
        head_out: 0,
    };
    pin(
        &audit,
        "8ca17601aa726571756573745f6964a3696431a674756e6e656ca464656d6fa66d6574686f64a3474554a470617468a12fa6737461747573cd01f6a56572726f72ae74756e6e656c5f6f66666c696e65a862797465735f696e00a962797465735f6f757400ab6475726174696f6e5f7573cd0384ab72656d6f74655f61646472a93132372e302e302e31a561745f6d73cf000001a3185c5000",
    );
    pin(
        &AuditBatch { v: 1, records: vec![audit] },
        "82a17601a77265636f726473918ca17601aa726571756573745f6964a3696431a674756e6e656ca464656d6fa66d6574686f64a3474554a470617468a12fa6737461747573cd01f6a56572726f72ae74756e6e656c5f6f66666c696e65a862797465735f696e00a962797465735f6f757400ab6475726174696f6e5f7573cd0384ab72656d6f74655f61646472a93132372e302e302e31a561745f6d73cf000001a3185c5000",
    );
}

#[test]
fn bodies_are_msgpack_bin_not_arrays() {
    let bytes = encode(&request());
    // bin 8 header (0xc4) followed by the length 3 and the raw body bytes.
    assert!(bytes.windows(5).any(|w| w == [0xc4, 3, 0, 1, 255]), "{}", hex(&bytes));
}

#[test]
fn optional_fields_may_be_absent_and_unknown_fields_are_ignored() {
    #[derive(serde::Serialize)]
    struct FutureHello {
        v: u16,
        shiny_new_field: &'static str,
    }
    #[derive(serde::Serialize)]
    enum FutureFrame {
        Hello(FutureHello),
    }
    let bytes = encode(&FutureFrame::Hello(FutureHello { v: 2, shiny_new_field: "x" }));
    let decoded: ClientFrame = decode(&bytes, usize::MAX).expect("an old peer reads a newer hello");
    assert_eq!(
        decoded,
        ClientFrame::Hello(Hello {
            v: 2,
            name: None,
            resume_secret: None,
            agent: String::new(),
            record: false,
            token: None,
            policy: PublicPolicy::default(),
            shared: false,
        })
    );
}

#[test]
fn oversized_and_malformed_input_is_refused() {
    let bytes = encode(&ClientFrame::Hello(hello()));
    assert!(matches!(decode::<ClientFrame>(&bytes, 4), Err(tunnel_schemas::DecodeError::TooLarge { .. })));
    for garbage in [&b""[..], b"\xc1", b"\x81\xa5Hello\xc0", b"\xdf\xff\xff\xff\xff"] {
        assert!(decode::<ClientFrame>(garbage, 1024).is_err(), "{}", hex(garbage));
    }
}

/// Body fields decoded with `decode_shared` point into the message's own buffer, and decode to
/// the same values as a plain decode.
#[test]
fn shared_decoding_borrows_bodies_from_the_message() {
    use bytes::Bytes;
    use tunnel_schemas::frames::{ClientFrame, HostFrame};
    use tunnel_schemas::stream::StreamFrame;
    use tunnel_schemas::{MAX_FRAME_BYTES, decode, decode_shared, encode};

    let chunk = Bytes::from(vec![0xA5_u8; 70_000]);
    let frame = ClientFrame::Stream { stream: 9, frame: StreamFrame::Data { seq: 3, bytes: chunk.clone() } };
    let message = Bytes::from(encode(&frame));
    let decoded: ClientFrame = decode_shared(&message, MAX_FRAME_BYTES).expect("decodes");
    assert_eq!(decoded, frame);
    assert_eq!(decoded, decode::<ClientFrame>(&message, MAX_FRAME_BYTES).expect("decodes"));
    let ClientFrame::Stream { frame: StreamFrame::Data { bytes, .. }, .. } = decoded else { panic!("not data") };
    let inside = message.as_ptr() as usize..message.as_ptr() as usize + message.len();
    assert!(inside.contains(&(bytes.as_ptr() as usize)), "the chunk was copied");

    let request = HostFrame::Request { stream: 1, request: Bytes::from_static(b"encoded event"), trace: None };
    let message = Bytes::from(encode(&request));
    assert_eq!(decode_shared::<HostFrame>(&message, MAX_FRAME_BYTES).expect("decodes"), request);
    // Outside a shared decode, bodies are copied as before.
    assert_eq!(decode::<HostFrame>(&message, MAX_FRAME_BYTES).expect("decodes"), request);
    assert!(decode_shared::<HostFrame>(&message, 4).is_err());
}
