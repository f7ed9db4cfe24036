//! Property tests of every decoder of network input in the wire contract: WebSocket frames both
//! ways, stream frames, the NATS events, tunnel names, tokens and glob patterns.
//!
//! For each: arbitrary bytes (and mutations of real encodings) never panic and respect the size
//! limit; every message round-trips; whatever decodes re-encodes to the same message. The seed
//! corpus in `tests/corpus/<target>/` runs first on every run: `ok-*.bin` files are real
//! encodings that must decode, `bad-*.bin` hostile ones that must merely not panic, and the
//! `*.txt` files hold one text case per line.
//!
//! The number of generated cases per property is modest by default (a few seconds in all, as part
//! of `cargo test`); `PROPTEST_CASES=100000` runs a deep session. Regenerate the `ok-*.bin` files
//! after a wire change with `cargo test -p tunnel-schemas --test decoders -- --ignored`.

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tunnel_schemas::events::{Failure, TunnelReply, TunnelRequest, TunnelResponse};
use tunnel_schemas::frames::{ClientFrame, Hello, HostFrame, Welcome};
use tunnel_schemas::http::{Header, RequestHead, ResponseHead};
use tunnel_schemas::names::{MAX_NAME_LEN, MIN_NAME_LEN, RESERVED_NAMES, TunnelName};
use tunnel_schemas::pattern::Glob;
use tunnel_schemas::policy::PublicPolicy;
use tunnel_schemas::stream::StreamFrame;
use tunnel_schemas::tokens::Token;
use tunnel_schemas::{DecodeError, ErrorCode, MAX_FRAME_BYTES, decode, decode_shared, encode};

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 256;

fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = DEFAULT_CASES;
    }
    config
}

// ---------------------------------------------------------------------------------------------
// The decoding properties, shared by every message type.

/// Decodes `bytes` both ways; what decodes must re-encode to the same message. Never panics.
fn decodes_sanely<T>(bytes: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let copied = decode::<T>(bytes, MAX_FRAME_BYTES);
    let shared = decode_shared::<T>(&Bytes::copy_from_slice(bytes), MAX_FRAME_BYTES);
    assert_eq!(copied.is_ok(), shared.is_ok(), "both decoders agree on {bytes:02x?}");
    let message = copied.ok()?;
    assert_eq!(shared.ok().as_ref(), Some(&message));
    let again: T = decode(&encode(&message), usize::MAX).expect("a decoded message re-encodes");
    assert_eq!(again, message, "a decoded message survives a re-encoding");
    Some(message)
}

/// The message round-trips, through both decoders, and the size limit holds.
fn round_trips<T>(message: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = encode(message);
    assert_eq!(&decode::<T>(&bytes, usize::MAX).expect("decodes"), message);
    assert_eq!(&decode_shared::<T>(&Bytes::from(bytes.clone()), usize::MAX).expect("decodes shared"), message);
    if let Some(limit) = bytes.len().checked_sub(1) {
        assert!(matches!(decode::<T>(&bytes, limit), Err(DecodeError::TooLarge { .. })));
    }
}

/// A hostile edit of a real encoding.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255_u8).prop_map(|(at, bits)| Mutation::Flip(at, bits)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert(at, byte)),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        let len = bytes.len().max(1);
        match *mutation {
            Mutation::Flip(at, bits) if !bytes.is_empty() => bytes[at % len] ^= bits,
            Mutation::Truncate(at) => bytes.truncate(at % len),
            Mutation::Insert(at, byte) => bytes.insert(at % (bytes.len() + 1), byte),
            Mutation::Flip(..) => {}
        }
    }
    bytes
}

// ---------------------------------------------------------------------------------------------
// Generators of every message.

fn body() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..96).prop_map(Bytes::from)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[a-z0-9_/?%.-]{0,24}"]
}

fn code() -> impl Strategy<Value = ErrorCode> {
    proptest::sample::select(ErrorCode::ALL.to_vec())
}

fn failure() -> impl Strategy<Value = Failure> {
    (code(), text()).prop_map(|(code, detail)| Failure { code, detail })
}

fn headers() -> impl Strategy<Value = Vec<Header>> {
    proptest::collection::vec((text(), body()).prop_map(|(name, value)| Header(name, value)), 0..6)
}

fn stream_frame() -> impl Strategy<Value = StreamFrame> {
    prop_oneof![
        (any::<u32>(), body()).prop_map(|(seq, bytes)| StreamFrame::Data { seq, bytes }),
        Just(StreamFrame::End),
        any::<u32>().prop_map(|bytes| StreamFrame::Credit { bytes }),
        code().prop_map(|code| StreamFrame::Reset { code }),
        Just(StreamFrame::Ping),
    ]
}

fn policy() -> impl Strategy<Value = PublicPolicy> {
    (proptest::collection::vec(text(), 0..3), proptest::collection::vec(text(), 0..3))
        .prop_map(|(allow_cidrs, deny_cidrs)| PublicPolicy { allow_cidrs, deny_cidrs, ..PublicPolicy::default() })
}

fn hello() -> impl Strategy<Value = Hello> {
    (any::<u16>(), proptest::option::of(text()), proptest::option::of(text()), text(), any::<bool>()).prop_flat_map(
        |(v, name, resume_secret, agent, record)| {
            (proptest::option::of(text()), policy(), any::<bool>()).prop_map(move |(token, policy, shared)| Hello {
                v,
                name: name.clone(),
                resume_secret: resume_secret.clone(),
                agent: agent.clone(),
                record,
                token,
                policy,
                shared,
            })
        },
    )
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        hello().prop_map(ClientFrame::Hello),
        (any::<u32>(), body(), any::<bool>()).prop_map(|(stream, reply, end)| ClientFrame::Reply {
            stream,
            reply,
            end
        }),
        (any::<u32>(), stream_frame()).prop_map(|(stream, frame)| ClientFrame::Stream { stream, frame }),
        Just(ClientFrame::Bye),
    ]
}

fn host_frame() -> impl Strategy<Value = HostFrame> {
    let welcome = (any::<u16>(), text(), text(), text(), text(), any::<u64>(), any::<bool>(), text()).prop_map(
        |(v, name, url, session, resume_secret, max_reply_bytes, recording, host)| Welcome {
            v,
            name,
            url,
            session,
            resume_secret,
            max_reply_bytes,
            recording,
            host,
        },
    );
    prop_oneof![
        welcome.prop_map(HostFrame::Welcome),
        failure().prop_map(HostFrame::Refused),
        Just(HostFrame::GoAway),
        (any::<u32>(), body(), proptest::option::of("[0-9a-f-]{0,55}"))
            .prop_map(|(stream, request, trace)| HostFrame::Request { stream, request, trace }),
        (any::<u32>(), stream_frame()).prop_map(|(stream, frame)| HostFrame::Stream { stream, frame }),
    ]
}

fn tunnel_request() -> impl Strategy<Value = TunnelRequest> {
    (any::<u16>(), text(), text(), text(), headers(), body(), any::<bool>(), any::<bool>()).prop_map(
        |(v, request_id, method, target, headers, body, end, upgrade)| TunnelRequest {
            v,
            request_id,
            head: RequestHead { method, target, headers },
            body,
            end,
            upgrade,
        },
    )
}

fn tunnel_reply() -> impl Strategy<Value = TunnelReply> {
    prop_oneof![
        (any::<u16>(), headers(), body(), any::<bool>()).prop_map(|(status, headers, body, end)| {
            TunnelReply::Response(TunnelResponse { head: ResponseHead { status, headers }, body, end })
        }),
        failure().prop_map(TunnelReply::Failure),
    ]
}

// ---------------------------------------------------------------------------------------------
// The seed corpus.

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(target)
}

/// Every `.bin` file of a target: (file name, bytes).
fn corpus_files(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "bin"))
        .map(|path| {
            let name = path.file_name().expect("file name").to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("corpus file"))
        })
        .collect();
    files.sort();
    assert!(files.iter().any(|(name, _)| name.starts_with("ok-")), "corpus {target} has real frames");
    files
}

/// The lines of a text corpus file.
fn corpus_lines(file: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", path.display()))
        .lines()
        .map(|line| line.replace("\\t", "\t").replace("\\n", "\n").replace("\\0", "\0"))
        .collect()
}

/// Runs the corpus of `target`, every file also cut short (at every length for small files).
fn run_corpus<T>(target: &str)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    for (name, bytes) in corpus_files(target) {
        let decoded = decodes_sanely::<T>(&bytes);
        if name.starts_with("ok-") {
            assert!(decoded.is_some(), "{target}/{name} must decode");
        }
        let step = (bytes.len() / 256).max(1);
        for cut in (0..bytes.len()).step_by(step) {
            decodes_sanely::<T>(&bytes[..cut]);
        }
    }
}

macro_rules! decoder_properties {
    ($module:ident, $type:ty, $target:literal, $strategy:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn corpus() {
                run_corpus::<$type>($target);
            }

            proptest! {
                #![proptest_config(config())]

                #[test]
                fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                    decodes_sanely::<$type>(&bytes);
                }

                #[test]
                fn round_trips(message in $strategy) {
                    super::round_trips(&message);
                }

                #[test]
                fn mutated_encodings_never_panic(
                    message in $strategy,
                    mutations in proptest::collection::vec(mutation(), 1..4),
                ) {
                    decodes_sanely::<$type>(&mutate(encode(&message), &mutations));
                }
            }
        }
    };
}

decoder_properties!(client_frames, ClientFrame, "client_frame", client_frame());
decoder_properties!(host_frames, HostFrame, "host_frame", host_frame());
decoder_properties!(stream_frames, StreamFrame, "stream_frame", stream_frame());
decoder_properties!(tunnel_requests, TunnelRequest, "tunnel_request", tunnel_request());
decoder_properties!(tunnel_replies, TunnelReply, "tunnel_reply", tunnel_reply());

// ---------------------------------------------------------------------------------------------
// Names, tokens, patterns.

/// The name rules, written out plainly.
fn is_valid_name(name: &str) -> bool {
    (MIN_NAME_LEN..=MAX_NAME_LEN).contains(&name.len())
        && name.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !RESERVED_NAMES.contains(&name)
}

fn check_name(name: &str) {
    let parsed = TunnelName::parse(name);
    assert_eq!(parsed.is_ok(), is_valid_name(name), "{name:?}");
    let decoded = decode::<TunnelName>(&encode(&name), 1024);
    assert_eq!(decoded.is_ok(), parsed.is_ok(), "decoding validates {name:?}");
    if let Ok(parsed) = parsed {
        assert_eq!(parsed.as_str(), name);
        super_round_trip(&parsed);
    }
}

fn super_round_trip(name: &TunnelName) {
    round_trips(name);
}

/// Token shape, written out plainly.
fn check_token(text: &str) {
    match Token::parse(text) {
        Some(token) => {
            assert_eq!(token.reveal(), text, "a parsed token reads back as typed");
            assert!(!format!("{token:?}").contains(&token.secret) || token.secret.is_empty());
        }
        None => {
            let parts: Vec<&str> = text.splitn(3, '_').collect();
            let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
            assert!(
                !(parts.len() == 3 && parts[0] == "tt" && hex(parts[1], 16) && hex(parts[2], 48)),
                "{text:?} is a token"
            );
        }
    }
}

/// Reference glob matcher: the textbook dynamic programme, slow and obviously right.
fn glob_reference(pattern: &[u8], text: &[u8]) -> bool {
    let mut row = vec![false; text.len() + 1];
    row[0] = true;
    for &p in pattern {
        let mut next = vec![false; text.len() + 1];
        if p == b'*' {
            next[0] = row[0];
            for t in 1..=text.len() {
                next[t] = row[t] || next[t - 1];
            }
        } else {
            for t in 1..=text.len() {
                next[t] = row[t - 1] && (p == b'?' || p == text[t - 1]);
            }
        }
        row = next;
    }
    row[text.len()]
}

#[test]
fn name_corpus() {
    for name in corpus_lines("names.txt") {
        check_name(&name);
    }
}

#[test]
fn token_corpus() {
    for token in corpus_lines("tokens.txt") {
        check_token(&token);
    }
}

#[test]
fn pattern_corpus() {
    for line in corpus_lines("patterns.txt") {
        let (pattern, text) = line.split_once(' ').unwrap_or((&line, ""));
        assert_eq!(
            Glob(pattern.into()).matches(text),
            glob_reference(pattern.as_bytes(), text.as_bytes()),
            "{pattern:?} on {text:?}"
        );
    }
}

/// A glob over a small alphabet, so that matches happen.
fn small_text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(vec!['a', 'b', '/', '-', 'é']), 0..max)
        .prop_map(|chars| chars.into_iter().collect())
}

fn small_pattern(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(vec!['a', 'b', '/', '*', '?', 'é']), 0..max)
        .prop_map(|chars| chars.into_iter().collect())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn names_are_exactly_the_valid_dns_labels(name in prop_oneof![any::<String>(), "[a-z0-9-]{0,70}", "[a-zA-Z0-9._-]{1,8}"]) {
        check_name(&name);
    }

    #[test]
    fn tokens_parse_only_in_their_shape(text in prop_oneof![
        any::<String>(),
        "tt_[0-9a-fA-F]{14,18}_[0-9a-fA-F]{46,50}",
        "tt_[0-9a-f_]{0,70}",
    ]) {
        check_token(&text);
    }

    #[test]
    fn generated_tokens_parse_back(_seed in any::<u8>()) {
        let token = Token::generate();
        prop_assert_eq!(Token::parse(&token.reveal()), Some(token));
    }

    #[test]
    fn globs_agree_with_the_reference(pattern in small_pattern(12), text in small_text(16)) {
        prop_assert_eq!(Glob(pattern.clone()).matches(&text), glob_reference(pattern.as_bytes(), text.as_bytes()));
    }

    #[test]
    fn globs_never_panic_on_any_text(pattern in any::<String>(), text in any::<String>()) {
        prop_assert_eq!(Glob(pattern.clone()).matches(&text), glob_reference(pattern.as_bytes(), text.as_bytes()));
    }
}

#[test]
fn globs_stay_linear_on_hostile_patterns() {
    let text = "a".repeat(20_000);
    let pattern = format!("{}b", "*a".repeat(200));
    let started = std::time::Instant::now();
    assert!(!Glob(pattern).matches(&text));
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "took {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// The seed corpus's real frames, written by this function (run with `--ignored`).

#[test]
#[ignore = "writes the corpus's ok-*.bin files; run after a wire change"]
fn write_corpus() {
    let write = |target: &str, name: &str, bytes: Vec<u8>| {
        std::fs::create_dir_all(corpus_dir(target)).expect("corpus dir");
        std::fs::write(corpus_dir(target).join(format!("ok-{name}.bin")), bytes).expect("write");
    };
    let hello = Hello {
        v: 1,
        name: Some("demo".into()),
        resume_secret: Some("r".into()),
        agent: "tunnel/0.1.0".into(),
        record: false,
        token: Some(Token::generate().reveal()),
        policy: PublicPolicy::default(),
        shared: false,
    };
    write("client_frame", "hello", encode(&ClientFrame::Hello(hello)));
    write(
        "client_frame",
        "reply",
        encode(&ClientFrame::Reply { stream: 7, reply: Bytes::from_static(b"\x81"), end: true }),
    );
    let data = StreamFrame::Data { seq: 3, bytes: Bytes::from_static(b"chunk") };
    write("client_frame", "stream", encode(&ClientFrame::Stream { stream: 7, frame: data.clone() }));
    write("client_frame", "bye", encode(&ClientFrame::Bye));
    let welcome = Welcome {
        v: 1,
        name: "demo".into(),
        url: "https://demo.tunnel.example.com".into(),
        session: "s1".into(),
        resume_secret: "r".into(),
        max_reply_bytes: 1 << 20,
        recording: false,
        host: "host1".into(),
    };
    write("host_frame", "welcome", encode(&HostFrame::Welcome(welcome)));
    write("host_frame", "refused", encode(&HostFrame::Refused(Failure::new(ErrorCode::NameInUse, "taken"))));
    write("host_frame", "goaway", encode(&HostFrame::GoAway));
    write(
        "host_frame",
        "request",
        encode(&HostFrame::Request { stream: 1, request: Bytes::from_static(b"\x80"), trace: None }),
    );
    write("stream_frame", "data", encode(&data));
    write("stream_frame", "credit", encode(&StreamFrame::Credit { bytes: 65536 }));
    write("stream_frame", "reset", encode(&StreamFrame::Reset { code: ErrorCode::Cancelled }));
    write("stream_frame", "end", encode(&StreamFrame::End));
    let request = TunnelRequest {
        v: 1,
        request_id: "01J0000000000000000000000".into(),
        head: RequestHead {
            method: "POST".into(),
            target: "/hook?x=%2F".into(),
            headers: vec![
                Header("content-type".into(), Bytes::from_static(b"application/json")),
                Header("x-raw".into(), Bytes::from_static(b"\xff\xfe")),
            ],
        },
        body: Bytes::from_static(b"{\"ok\":true}"),
        end: true,
        upgrade: false,
    };
    write("tunnel_request", "post", encode(&request));
    let response = TunnelResponse {
        head: ResponseHead { status: 200, headers: vec![Header("set-cookie".into(), Bytes::from_static(b"a=1"))] },
        body: Bytes::from_static(b"ok"),
        end: true,
    };
    write("tunnel_reply", "response", encode(&TunnelReply::Response(response)));
    write("tunnel_reply", "failure", encode(&TunnelReply::Failure(Failure::new(ErrorCode::UpstreamTimeout, ""))));
}
