//! JWTs as credentials, checked against a JWKS: a small identity provider made at test time
//! (RSA and EC keys, a key set served over HTTP on port 0 that counts its fetches), and the
//! real system admitting, refusing and closing sessions by what its JWTs say.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tunnel_client::Event;
use tunnel_schemas::ErrorCode;
use tunnel_session_host::config::JwtConfig;
use tunnel_tests::{DEADLINE, EnvOptions, TestEnv, Tunnel, Upstream, within};

const ISSUER: &str = "https://id.test/";
const AUDIENCE: &str = "tunnel";

/// A signing key of the test identity provider.
struct SigningKey {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    /// The public key as published in the key set.
    jwk: Jwk,
    /// The public key's PEM (RSA keys), for the "public key as HMAC secret" forgery.
    public_pem: Vec<u8>,
}

impl SigningKey {
    fn rsa(kid: &str) -> Self {
        use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
        let private = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).expect("rsa key");
        let der = private.to_pkcs1_der().expect("pkcs1");
        let public_pem = private.to_public_key().to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).expect("pem");
        Self::new(kid, Algorithm::RS256, EncodingKey::from_rsa_der(der.as_bytes()), public_pem.into_bytes())
    }

    fn ec(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec key");
        Self::new(kid, Algorithm::ES256, EncodingKey::from_ec_der(&pair.serialize_der()), Vec::new())
    }

    fn new(kid: &str, alg: Algorithm, key: EncodingKey, public_pem: Vec<u8>) -> Self {
        let mut jwk = Jwk::from_encoding_key(&key, alg).expect("public jwk");
        jwk.common.key_id = Some(kid.to_owned());
        Self { kid: kid.to_owned(), alg, key, jwk, public_pem }
    }

    /// `claims` signed by this key, the header naming it (or `kid`).
    fn sign_as(&self, kid: &str, claims: &serde_json::Value) -> String {
        let header = Header { kid: Some(kid.to_owned()), ..Header::new(self.alg) };
        jsonwebtoken::encode(&header, claims, &self.key).expect("signs")
    }

    fn sign(&self, claims: &serde_json::Value) -> String {
        self.sign_as(&self.kid, claims)
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

/// Claims of a JWT for `account` binding `names`, expiring `ttl` seconds from now.
fn claims(account: &str, names: &[&str], ttl: u64) -> serde_json::Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": account, "tunnel_names": names, "iat": now(), "exp": now() + ttl})
}

/// The identity provider's key set endpoint: serves the current keys, counts its fetches,
/// fails on demand.
struct JwksServer {
    addr: SocketAddr,
    keys: Arc<Mutex<Vec<Jwk>>>,
    fetches: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

impl JwksServer {
    async fn start(keys: &[&SigningKey]) -> Self {
        let keys = Arc::new(Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()));
        let (fetches, failing) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let state = (keys.clone(), fetches.clone(), failing.clone());
        let app = axum::Router::new()
            .route(
                "/jwks",
                axum::routing::get(
                    |axum::extract::State((keys, fetches, failing)): axum::extract::State<_>| async move {
                        let (keys, fetches, failing): (Arc<Mutex<Vec<Jwk>>>, Arc<AtomicUsize>, Arc<AtomicBool>) =
                            (keys, fetches, failing);
                        fetches.fetch_add(1, Ordering::SeqCst);
                        if failing.load(Ordering::SeqCst) {
                            return Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
                        }
                        let keys = keys.lock().expect("keys").clone();
                        Ok(axum::Json(json!({ "keys": keys })))
                    },
                ),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind jwks");
        let addr = listener.local_addr().expect("jwks address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, keys, fetches, failing }
    }

    fn publish(&self, keys: &[&SigningKey]) {
        *self.keys.lock().expect("keys") = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Environment options of a host accepting JWTs (`auth`) from this provider: no leeway, and
    /// fetches at least a second apart.
    fn env_options(&self, auth: &'static str) -> EnvOptions {
        let jwt = JwtConfig {
            jwt_jwks_url: format!("http://{}/jwks", self.addr),
            jwt_issuer: ISSUER.into(),
            jwt_audience: AUDIENCE.into(),
            jwt_leeway_secs: 0,
            jwt_jwks_refetch_secs: 1,
            ..JwtConfig::default()
        };
        EnvOptions { auth, jwt, ..EnvOptions::default() }
    }
}

fn client(env: &TestEnv, port: u16, name: Option<&str>, jwt: &str) -> Tunnel {
    env.client_with_token(port, name, Some(jwt))
}

async fn refused(tunnel: Tunnel) -> ErrorCode {
    tunnel.refusal().await.code
}

/// Writes a record into a KV bucket of the environment, creating the bucket when missing.
async fn put(env: &TestEnv, bucket: &str, key: &str, value: Vec<u8>) {
    let js = async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.expect("nats"));
    let config = async_nats::jetstream::kv::Config { bucket: bucket.into(), history: 1, ..Default::default() };
    let kv = js.create_key_value(config).await.expect("bucket");
    kv.put(key, value.into()).await.expect("put");
}

#[tokio::test]
async fn valid_jwts_open_tunnels_and_forged_stale_or_misdirected_ones_are_refused() {
    let (rsa, ec) = (SigningKey::rsa("rsa-1"), SigningKey::ec("ec-1"));
    let jwks = JwksServer::start(&[&rsa, &ec]).await;
    let env = TestEnv::start_with(jwks.env_options("tokens,jwt")).await;
    let upstream = Upstream::start().await;
    let nats = async_nats::connect(env.nats.url()).await.expect("nats");
    let mut access = nats.subscribe("audit.>").await.expect("access events");
    let port = upstream.port();

    let by_rsa = rsa.sign(&claims("acme", &["shop-*"], 600));
    let _rs256 = Tunnel::ready_with(client(&env, port, Some("shop-rsa"), &by_rsa)).await;
    let _es256 =
        Tunnel::ready_with(client(&env, port, Some("shop-ec"), &ec.sign(&claims("acme", &["shop-*"], 600)))).await;
    assert_eq!(env.get("shop-rsa", "/echo").await.status(), 200);
    assert_eq!(env.get("shop-ec", "/echo").await.status(), 200);

    // Forged, stale or meant for someone else: each refused `unauthorized`, by its own check.
    let with = |change: serde_json::Value| {
        let mut claims = claims("acme", &["shop-*"], 600);
        claims.as_object_mut().expect("object").extend(change.as_object().expect("object").clone());
        claims
    };
    let valid = with(json!({}));
    let (header, payload) = {
        let mut parts = by_rsa.split('.');
        (parts.next().expect("header"), parts.next().expect("payload"))
    };
    let everything = URL_SAFE_NO_PAD.encode(with(json!({"tunnel_names": ["*"]})).to_string());
    let none_header = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT", "kid": "rsa-1"}).to_string());
    let hmac_key = EncodingKey::from_secret(&rsa.public_pem).expect("hmac key");
    let hmac_header = Header { kid: Some("rsa-1".into()), ..Header::new(Algorithm::HS256) };
    let forgeries = [
        ("expired", rsa.sign(&with(json!({"exp": now() - 60})))),
        ("wrong issuer", rsa.sign(&with(json!({"iss": "https://evil.test/"})))),
        ("wrong audience", rsa.sign(&with(json!({"aud": "another-service"})))),
        ("not valid yet (nbf)", rsa.sign(&with(json!({"nbf": now() + 600})))),
        ("lacks exp", rsa.sign(&with(json!({"exp": null})))),
        ("signature does not verify", format!("{header}.{everything}.{}", by_rsa.rsplit('.').next().expect("sig"))),
        ("not a valid token", format!("{none_header}.{payload}.")),
        ("HS256 is not accepted", jsonwebtoken::encode(&hmac_header, &valid, &hmac_key).expect("hs256")),
        ("does not match its key", ec.sign_as("rsa-1", &valid)),
        ("not a valid token", "not-a-jwt".into()),
    ];
    for (why, jwt) in &forgeries {
        let failure = client(&env, port, Some("shop-x"), jwt).refusal().await;
        assert_eq!(failure.code, ErrorCode::Unauthorized, "{why}: {failure:?}");
        assert!(failure.detail.contains(why), "refused because {why}: {failure:?}");
    }

    // The names claim binds like a token's name rules; no names, no tunnel.
    assert_eq!(refused(client(&env, port, Some("other"), &by_rsa)).await, ErrorCode::NameNotAllowed);
    assert_eq!(refused(client(&env, port, None, &by_rsa)).await, ErrorCode::NameNotAllowed, "no random name");
    let nameless = rsa.sign(&with(json!({"tunnel_names": null})));
    assert_eq!(refused(client(&env, port, Some("shop-y"), &nameless)).await, ErrorCode::NameNotAllowed);

    // The account claim counts for reservations.
    let reservation = tunnel_schemas::tokens::ReservationRecord { account: "acme".into(), created_ms: 0 };
    let (bucket, key) = (tunnel_schemas::tokens::RESERVATIONS_BUCKET, tunnel_schemas::tokens::reservation_key("vault"));
    put(&env, bucket, &key, tunnel_schemas::encode(&reservation).to_vec()).await;
    let rival = rsa.sign(&claims("rival", &["*"], 600));
    assert_eq!(refused(client(&env, port, Some("vault"), &rival)).await, ErrorCode::NameOwned);
    let owner = rsa.sign(&claims("acme", &["vault"], 600));
    let _vault = Tunnel::ready_with(client(&env, port, Some("vault"), &owner)).await;

    // With both accepted, an account token still takes the token path.
    let token = tunnel_schemas::tokens::Token::generate();
    let record = tunnel_schemas::tokens::TokenRecord {
        account: "acme".into(),
        secret_hash: tunnel_schemas::tokens::hash_secret(&token.secret),
        names: Vec::new(),
        created_ms: 0,
    };
    let key = tunnel_schemas::tokens::token_key(&token.id);
    put(&env, tunnel_schemas::tokens::TOKENS_BUCKET, &key, tunnel_schemas::encode(&record).to_vec()).await;
    let _by_token = Tunnel::ready_with(client(&env, port, Some("tokpath"), &token.reveal())).await;

    // No JWT in the access events (the signature part would show in the MessagePack bytes).
    let mut seen = 0;
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(500), futures_util::StreamExt::next(&mut access)).await
    {
        seen += 1;
        for (why, jwt) in forgeries.iter().chain([&("valid", by_rsa.clone())]) {
            let signature = jwt.rsplit('.').next().unwrap_or_default().as_bytes();
            let leaked = signature.len() > 8 && event.payload.windows(signature.len()).any(|w| w == signature);
            assert!(!leaked, "the JWT refused as {why:?} is in an access event");
        }
    }
    assert!(seen >= forgeries.len(), "refusals are access events ({seen})");
}

#[tokio::test]
async fn a_rotated_key_is_fetched_on_first_use_and_junk_key_ids_cannot_storm_the_key_set() {
    let (old, new) = (SigningKey::ec("2025-a"), SigningKey::ec("2025-b"));
    let jwks = JwksServer::start(&[&old]).await;
    let env = TestEnv::start_with(jwks.env_options("jwt")).await;
    let upstream = Upstream::start().await;
    let port = upstream.port();
    let _first =
        Tunnel::ready_with(client(&env, port, Some("app-1"), &old.sign(&claims("acme", &["app-*"], 600)))).await;
    assert_eq!(jwks.fetches(), 1, "fetched once, on first use");
    let _cached =
        Tunnel::ready_with(client(&env, port, Some("app-2"), &old.sign(&claims("acme", &["app-*"], 600)))).await;
    assert_eq!(jwks.fetches(), 1, "a known key is served from the cache");

    // The provider rotates: the new key's first JWT makes the host fetch the set again.
    jwks.publish(&[&new]);
    let _rotated =
        Tunnel::ready_with(client(&env, port, Some("app-3"), &new.sign(&claims("acme", &["app-*"], 600)))).await;
    assert_eq!(jwks.fetches(), 2, "an unknown kid triggers one fetch");

    // Twenty JWTs naming keys nobody publishes, all at once: refused, with at most one fetch
    // per refetch interval (1 s here) instead of one each: the fetch answers all who waited.
    let started = Instant::now();
    let junk: Vec<Tunnel> = (0..20)
        .map(|i| {
            client(&env, port, Some("app-junk"), &new.sign_as(&format!("junk-{i}"), &claims("acme", &["app-*"], 600)))
        })
        .collect();
    for tunnel in junk {
        assert_eq!(refused(tunnel).await, ErrorCode::Unauthorized);
    }
    // And three more, one after the other: each waits for the next allowed fetch.
    for i in 0..3 {
        let jwt = new.sign_as(&format!("late-junk-{i}"), &claims("acme", &["app-*"], 600));
        assert_eq!(refused(client(&env, port, Some("app-junk"), &jwt)).await, ErrorCode::Unauthorized);
    }
    let (storm, took) = (jwks.fetches() - 2, started.elapsed());
    assert!(storm >= 2, "unknown kids are looked up");
    assert!(storm as f64 <= 1.0 + took.as_secs_f64(), "{storm} fetches in {took:?} for 23 junk kids");

    // The retired key is gone from the set: its JWTs are refused.
    let retired = old.sign(&claims("acme", &["app-*"], 600));
    assert_eq!(refused(client(&env, port, Some("app-4"), &retired)).await, ErrorCode::Unauthorized);

    // The key set cannot be fetched: `unavailable`, which the client retries.
    jwks.failing.store(true, Ordering::SeqCst);
    let newer = SigningKey::ec("2025-c");
    let mut waiting = client(&env, port, Some("app-5"), &newer.sign(&claims("acme", &["app-*"], 600)));
    match waiting.next_event().await {
        Some(Event::Disconnected { reason }) => assert!(reason.starts_with("unavailable"), "{reason}"),
        other => panic!("expected a retryable refusal, got {other:?}"),
    }
    waiting.stop().await;
}

#[tokio::test]
async fn a_session_ends_at_the_first_lease_renewal_after_its_jwt_expires() {
    let key = SigningKey::ec("k1");
    let jwks = JwksServer::start(&[&key]).await;
    let env = TestEnv::start_with(EnvOptions { lease_ttl_secs: 3, ..jwks.env_options("jwt") }).await;
    let upstream = Upstream::start().await;
    let jwt = key.sign(&claims("acme", &["brief"], 3));
    let expires_at = now() + 3;
    let mut tunnel = Tunnel::ready_with(client(&env, upstream.port(), Some("brief"), &jwt)).await;
    assert_eq!(env.get("brief", "/echo").await.status(), 200);
    loop {
        match tunnel.next_event().await {
            None => break,
            Some(Event::Request { .. }) => {}
            Some(other) => panic!("expected the session to end, got {other:?}"),
        }
    }
    let ended = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970");
    assert!(ended.as_secs() + 1 >= expires_at, "not before its exp ({ended:?} vs {expires_at})");
    assert!(ended < Duration::from_secs(expires_at + 3), "at the first renewal after its exp");
    assert_eq!(refused(tunnel).await, ErrorCode::Unauthorized);
    assert_eq!(env.get("brief", "/echo").await.status(), 502, "the tunnel is gone");
}

#[tokio::test]
async fn a_host_accepting_jwts_refuses_to_start_without_its_key_set_issuer_and_audience() {
    let nats = tunnel_tests::NatsServer::start();
    let complete = JwtConfig {
        jwt_jwks_url: "https://id.test/jwks".into(),
        jwt_issuer: ISSUER.into(),
        jwt_audience: AUDIENCE.into(),
        ..JwtConfig::default()
    };
    let missing = [
        ("jwt_jwks_url", JwtConfig { jwt_jwks_url: String::new(), ..complete.clone() }),
        ("jwt_issuer", JwtConfig { jwt_issuer: String::new(), ..complete.clone() }),
        ("jwt_audience", JwtConfig { jwt_audience: String::new(), ..complete }),
    ];
    for (key, jwt) in missing {
        let client = async_nats::connect(nats.url()).await.expect("nats");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let config = tunnel_session_host::HostConfig {
            nats_url: nats.url().into(),
            auth: "jwt".into(),
            jwt,
            ..Default::default()
        };
        let metrics = tunnel_kit::telemetry::init_metrics();
        let run =
            tunnel_session_host::run(listener, client, config, metrics, tokio_util::sync::CancellationToken::new());
        let error = within(DEADLINE, "the host to give up", run).await.expect_err("no start");
        assert!(error.to_string().contains(&format!("`{key}` must be set")), "the error names {key}: {error}");
    }
}
