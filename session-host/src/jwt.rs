//! JWTs as credentials: signed by an identity provider, checked against the keys it publishes
//! as a JSON Web Key Set (JWKS).
//!
//! A client presents the JWT in its hello's `token` field. The host reads the header's `kid`,
//! finds that key in its cached key set, checks that the header's `alg` is one the operator
//! allows *and* one the key is for (never `none`, never a symmetric `HS*`: a public key is not a
//! secret), then verifies the signature and the `exp`, `nbf`, `iss` and `aud` claims with the
//! `jsonwebtoken` crate. The account and the tunnel names come from two configured claims.
//!
//! The key set is fetched when first needed and again once it is older than its TTL. A `kid`
//! missing from it (a key rotation) triggers a fetch, but fetches are at least
//! `refetch_interval` apart: a JWT naming an unknown key waits for the next allowed fetch, and
//! every JWT that waited meanwhile is answered by that one fetch, so junk key ids cannot make the
//! host hammer the identity provider. Nothing here logs a JWT or a claim.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use tunnel_schemas::ErrorCode;
use tunnel_schemas::events::Failure;

/// Largest JWT read; longer is refused before any parsing.
const MAX_JWT_BYTES: usize = 16 << 10;
/// Largest key set read.
const MAX_JWKS_BYTES: usize = 256 << 10;
/// Time a key set fetch may take, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Most tunnel name patterns one JWT may carry.
const MAX_NAMES: usize = 64;
/// Longest account a JWT may name.
const MAX_ACCOUNT_BYTES: usize = 256;

/// Validated JWT settings (from [`crate::config::JwtConfig`]).
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// Where the key set is fetched.
    pub jwks_url: http::Uri,
    /// The one accepted issuer.
    pub issuer: String,
    /// The accepted audience.
    pub audience: String,
    /// Accepted algorithms: asymmetric only.
    pub algorithms: Vec<Algorithm>,
    /// Age after which the key set is fetched again.
    pub jwks_ttl: Duration,
    /// Least time between two fetches.
    pub refetch_interval: Duration,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Claim naming the account.
    pub account_claim: String,
    /// Claim listing the tunnel names.
    pub names_claim: String,
}

/// Reads an accepted algorithm name.
///
/// # Errors
/// A message for an unknown name, `none`, or a symmetric algorithm.
pub fn algorithm(name: &str) -> Result<Algorithm, String> {
    match name.parse::<Algorithm>() {
        Ok(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => {
            Err(format!("{name} is symmetric: a public key set cannot check it"))
        }
        Ok(algorithm) => Ok(algorithm),
        Err(_) => Err(format!("{name:?} is not one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA")),
    }
}

/// Reads the key set URL: `https://`, or `http://` to a loopback host only (keys fetched in
/// clear from another machine could be replaced on the way).
///
/// # Errors
/// A message saying what is wrong.
pub fn jwks_uri(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("is not a URL: {e}"))?;
    let host = uri.host().unwrap_or_default();
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(uri),
        Some("http") if matches!(host, "localhost" | "127.0.0.1" | "[::1]" | "::1") => Ok(uri),
        _ => Err("must be an https:// URL (http:// only to localhost)".into()),
    }
}

/// What a valid JWT grants.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The account it acts for.
    pub account: String,
    /// The tunnel name patterns it may bind (never empty).
    pub names: Vec<String>,
    /// Its `exp`, in Unix seconds.
    pub expires_at: u64,
}

/// Checks JWTs against the configured key set.
pub struct Verifier {
    settings: JwtSettings,
    keys: KeyCache,
}

impl Verifier {
    /// A verifier for `settings`; nothing is fetched yet.
    ///
    /// # Errors
    /// A message when the system has no root certificates to check an `https://` key set with.
    pub fn new(settings: JwtSettings) -> Result<Self, String> {
        let keys = KeyCache::new(settings.jwks_url.clone(), settings.jwks_ttl, settings.refetch_interval)?;
        Ok(Self { settings, keys })
    }

    /// Whether a grant expiring at `expires_at` still holds now (with the leeway).
    pub fn unexpired(&self, expires_at: u64) -> bool {
        jsonwebtoken::get_current_timestamp() <= expires_at.saturating_add(self.settings.leeway_secs)
    }

    /// Checks `jwt` and returns what it grants.
    ///
    /// # Errors
    /// `unauthorized` for anything wrong with the JWT (shape, algorithm, unknown key after a
    /// fetch, signature, `exp`, `nbf`, `iss`, `aud`, claims); `name_not_allowed` when it
    /// grants no names; `unavailable` when the key set cannot be fetched.
    pub async fn verify(&self, jwt: &str) -> Result<Grant, Failure> {
        if jwt.len() > MAX_JWT_BYTES {
            return Err(unauthorized("the JWT is too long"));
        }
        // `alg: none` and unknown algorithms fail here: the crate has no such variant.
        let header = jsonwebtoken::decode_header(jwt).map_err(|_| unauthorized("not a valid token or JWT"))?;
        if !self.settings.algorithms.contains(&header.alg) {
            return Err(unauthorized(&format!("JWT algorithm {:?} is not accepted", header.alg)));
        }
        let kid = header.kid.ok_or_else(|| unauthorized("the JWT names no key (kid)"))?;
        let key = self.keys.key(&kid).await?;
        if !key.algorithms.contains(&header.alg) {
            return Err(unauthorized("the JWT's algorithm does not match its key"));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.settings.leeway_secs;
        let claims = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(jwt, &key.key, &validation)
            .map_err(|e| unauthorized(rejection(e.kind())))?
            .claims;
        self.grant(&claims)
    }

    fn grant(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Result<Grant, Failure> {
        let (account_claim, names_claim) = (&self.settings.account_claim, &self.settings.names_claim);
        let account = claims
            .get(account_claim)
            .and_then(serde_json::Value::as_str)
            .filter(|a| !a.is_empty() && a.len() <= MAX_ACCOUNT_BYTES)
            .ok_or_else(|| unauthorized(&format!("the JWT has no usable {account_claim} claim")))?;
        let names: Vec<String> = match claims.get(names_claim) {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(items)) if items.len() <= MAX_NAMES => items
                .iter()
                .map(|item| item.as_str().filter(|name| valid_pattern(name)).map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| unauthorized(&format!("the JWT's {names_claim} claim has an invalid name")))?,
            Some(_) => return Err(unauthorized(&format!("the JWT's {names_claim} claim is not a list of names"))),
        };
        if names.is_empty() {
            let detail = format!("this JWT grants no tunnel names (claim {names_claim})");
            return Err(Failure::new(ErrorCode::NameNotAllowed, detail));
        }
        // Validated as present and numeric by `decode`.
        let expires_at = claims.get("exp").and_then(serde_json::Value::as_f64).unwrap_or(0.0) as u64;
        Ok(Grant { account: account.to_owned(), names, expires_at })
    }
}

/// Whether `name` is a tunnel name pattern: `a-z 0-9 - * ?`, 1–63 characters.
fn valid_pattern(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-*?".contains(&b))
}

fn unauthorized(detail: &str) -> Failure {
    Failure::new(ErrorCode::Unauthorized, detail)
}

/// Why `decode` refused a JWT, in words for the client.
fn rejection(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "the JWT has expired",
        ErrorKind::ImmatureSignature => "the JWT is not valid yet (nbf)",
        ErrorKind::InvalidIssuer => "the JWT has the wrong issuer",
        ErrorKind::InvalidAudience => "the JWT has the wrong audience",
        ErrorKind::InvalidSignature => "the JWT's signature does not verify",
        ErrorKind::MissingRequiredClaim(_) => "the JWT lacks exp, iss or aud",
        ErrorKind::InvalidAlgorithm => "the JWT's algorithm does not match its key",
        _ => "the JWT is invalid",
    }
}

/// One verification key of the set.
struct Key {
    key: DecodingKey,
    /// The algorithms it checks: its own `alg` when the set names one, else those of its type.
    algorithms: Vec<Algorithm>,
}

/// The keys of one fetch.
#[derive(Default)]
struct KeySet {
    keys: HashMap<String, Arc<Key>>,
    fetched_at: Option<Instant>,
}

/// The cached key set and the one fetch at a time that renews it.
struct KeyCache {
    url: http::Uri,
    ttl: Duration,
    refetch_interval: Duration,
    http: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// The latest good key set, read without waiting.
    current: RwLock<Arc<KeySet>>,
    /// Held while deciding on and doing a fetch: when the last one started and whether it failed.
    fetching: tokio::sync::Mutex<Fetches>,
}

#[derive(Default)]
struct Fetches {
    last_started: Option<Instant>,
    last_failed: bool,
}

impl KeyCache {
    fn new(url: http::Uri, ttl: Duration, refetch_interval: Duration) -> Result<Self, String> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(FETCH_TIMEOUT));
        http.enforce_http(false);
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| format!("no system root certificates to check the JWKS server with: {e}"))?;
        let http = Client::builder(TokioExecutor::new()).build(tls.https_or_http().enable_http1().wrap_connector(http));
        let (current, fetching) = (RwLock::default(), tokio::sync::Mutex::default());
        Ok(Self { url, ttl, refetch_interval, http, current, fetching })
    }

    /// The key `kid`, from the cache while it is fresh, else after a (rate-limited) fetch.
    async fn key(&self, kid: &str) -> Result<Arc<Key>, Failure> {
        let asked = Instant::now();
        if let Some(key) = self.fresh(kid) {
            return Ok(key);
        }
        let mut fetches = self.fetching.lock().await;
        // A fetch that started after this JWT came answers it, whatever it found.
        let answered = fetches.last_started.is_some_and(|at| at >= asked);
        if !answered {
            if let Some(key) = self.fresh(kid) {
                return Ok(key);
            }
            if let Some(at) = fetches.last_started {
                tokio::time::sleep_until((at + self.refetch_interval).into()).await;
            }
            fetches.last_started = Some(Instant::now());
            fetches.last_failed = match self.fetch().await {
                Ok(set) => {
                    tracing::info!(keys = set.keys.len(), "fetched the JWT key set");
                    *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
                    false
                }
                Err(e) => {
                    metrics::counter!("host_jwks_fetch_failures_total").increment(1);
                    tracing::warn!(error = %e, url = %self.url, "cannot fetch the JWT key set");
                    true
                }
            };
        }
        match self.fresh(kid) {
            Some(key) => Ok(key),
            None if fetches.last_failed => {
                Err(Failure::new(ErrorCode::Unavailable, "the JWT keys cannot be fetched; try again later"))
            }
            None => Err(unauthorized("the JWT names a key its issuer does not publish")),
        }
    }

    fn fresh(&self, kid: &str) -> Option<Arc<Key>> {
        let set = self.current.read().unwrap_or_else(PoisonError::into_inner);
        set.fetched_at.filter(|at| at.elapsed() < self.ttl)?;
        set.keys.get(kid).cloned()
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let get = async {
            let response = self.http.get(self.url.clone()).await.map_err(|e| e.to_string())?;
            if response.status() != http::StatusCode::OK {
                return Err(format!("status {}", response.status()));
            }
            let body = Limited::new(response.into_body(), MAX_JWKS_BYTES).collect().await.map_err(|e| e.to_string())?;
            Ok(body.to_bytes())
        };
        let body = tokio::time::timeout(FETCH_TIMEOUT, get).await.map_err(|_| "timed out".to_owned())??;
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document = serde_json::from_slice(&body).map_err(|e| format!("not a JWK set: {e}"))?;
        let keys = document
            .keys
            .into_iter()
            .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
            .filter_map(|jwk| Some((jwk.common.key_id.clone()?, Arc::new(verification_key(&jwk)?))))
            .collect();
        Ok(KeySet { keys, fetched_at: Some(Instant::now()) })
    }
}

/// The key of `jwk` when it is a signature key of a supported asymmetric type; symmetric
/// (`oct`) keys and encryption keys are skipped.
fn verification_key(jwk: &Jwk) -> Option<Key> {
    if jwk.common.public_key_use.as_ref().is_some_and(|usage| *usage != PublicKeyUse::Signature) {
        return None;
    }
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => jsonwebtoken::AlgorithmFamily::Rsa.algorithms(),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
        _ => return None,
    };
    let algorithms = match jwk.common.key_algorithm {
        None => by_type.to_vec(),
        Some(named) => {
            let named = named.to_string().parse::<Algorithm>().ok().filter(|a| by_type.contains(a))?;
            vec![named]
        }
    };
    Some(Key { key: DecodingKey::from_jwk(jwk).ok()?, algorithms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_asymmetric_algorithms_and_safe_urls_are_accepted() {
        assert_eq!(algorithm("ES256"), Ok(Algorithm::ES256));
        assert_eq!(algorithm("EdDSA"), Ok(Algorithm::EdDSA));
        assert!(algorithm("HS256").is_err() && algorithm("none").is_err() && algorithm("rs256").is_err());
        assert!(jwks_uri("https://id.example.com/jwks").is_ok());
        assert!(jwks_uri("http://localhost:8080/jwks").is_ok());
        assert!(jwks_uri("http://id.example.com/jwks").is_err());
        assert!(jwks_uri("ftp://id.example.com/jwks").is_err());
        assert!(valid_pattern("*-acme") && !valid_pattern("Shop") && !valid_pattern(""));
    }

    #[test]
    fn symmetric_and_encryption_keys_are_never_used_to_verify() {
        let jwk = |json: serde_json::Value| serde_json::from_value::<Jwk>(json).expect("jwk");
        let oct = jwk(serde_json::json!({"kty": "oct", "kid": "s", "k": "c2VjcmV0"}));
        assert!(verification_key(&oct).is_none());
        let ec = serde_json::json!({"kty": "EC", "kid": "e", "crv": "P-256",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
        let key = verification_key(&jwk(ec.clone())).expect("an EC signature key");
        assert_eq!(key.algorithms, [Algorithm::ES256]);
        let mut encryption = ec.clone();
        encryption["use"] = "enc".into();
        assert!(verification_key(&jwk(encryption)).is_none());
        let mut mislabelled = ec;
        mislabelled["alg"] = "RS256".into();
        assert!(verification_key(&jwk(mislabelled)).is_none(), "an EC key is never an RSA key");
    }
}
