//! Who may open a session: a client presenting a valid account token, a valid JWT
//! ([`crate::jwt`]), either, or anyone in anonymous mode (local development only, chosen
//! explicitly).
//!
//! Tokens live in the KV bucket [`TOKENS_BUCKET`], made by `tunnel admin`; only their secrets'
//! hashes are stored. A host checks the token at every hello, again at every lease renewal, and
//! watches the bucket: a revoked (deleted) token closes its sessions on every host at once.
//!
//! Names reserved by an account ([`RESERVATIONS_BUCKET`]) are bound by that account's tokens
//! only, even while free, and checked at every bind, resume and renewal. A JWT's account claim
//! counts as its account; a JWT session ends at the first renewal after its `exp`.

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use tunnel_schemas::ErrorCode;
use tunnel_schemas::events::Failure;
use tunnel_schemas::tokens::{
    RESERVATIONS_BUCKET, ReservationRecord, TOKEN_PREFIX, TOKENS_BUCKET, Token, TokenRecord, names_allow,
    names_allow_random, reservation_key, token_key,
};

use crate::config::{HostConfig, JwtConfig};
use crate::jwt::Verifier;
use crate::registry::Registry;

/// Largest stored token record read.
const MAX_RECORD_BYTES: usize = 64 << 10;

/// How sessions are admitted.
#[derive(Clone)]
pub struct Auth {
    /// The token bucket, when tokens are accepted. Neither this nor `jwt`: anonymous mode
    /// (anyone may open any free name).
    tokens: Option<Box<kv::Store>>,
    /// The JWT checks, when JWTs are accepted.
    jwt: Option<std::sync::Arc<Verifier>>,
    /// The reservations, once `tunnel admin` has made the bucket (looked for at each bind until
    /// then).
    reservations: std::sync::Arc<tokio::sync::OnceCell<kv::Store>>,
    js: jetstream::Context,
}

/// What a valid token or JWT grants a session.
#[derive(Debug, Clone)]
pub struct Credential {
    /// The account it acts for.
    pub account: String,
    /// Name patterns it may bind; empty for any name (tokens only: a JWT always lists some).
    pub names: Vec<String>,
    /// What was presented.
    pub source: Source,
}

/// The kind of credential a session was admitted with, and what its later checks need.
#[derive(Debug, Clone)]
pub enum Source {
    /// An account token from `tunnel admin`.
    Token {
        /// The token's id (public).
        id: String,
        /// The stored hash of its secret, to tell a replaced token at renewal.
        secret_hash: String,
    },
    /// A JWT.
    Jwt {
        /// Its `exp`, in Unix seconds: the session ends at the first renewal after it.
        expires_at: u64,
    },
}

impl Credential {
    /// The id of the token, for revocation and access events; `None` for a JWT.
    pub fn token_id(&self) -> Option<&str> {
        match &self.source {
            Source::Token { id, .. } => Some(id),
            Source::Jwt { .. } => None,
        }
    }

    /// The failure that ends a session whose credential [`Auth::still_valid`] no longer
    /// accepts.
    pub fn lapsed(&self) -> Failure {
        let detail = match self.source {
            Source::Token { .. } => "token revoked",
            Source::Jwt { .. } => "the JWT has expired",
        };
        Failure::new(ErrorCode::Unauthorized, detail)
    }

    fn noun(&self) -> &'static str {
        match self.source {
            Source::Token { .. } => "token",
            Source::Jwt { .. } => "JWT",
        }
    }
}

/// Why the host cannot admit sessions as configured.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Tokens are required but there is no token store.
    #[error(
        "auth = \"tokens\" but the token bucket {TOKENS_BUCKET} does not exist: create an account and a token with \
         `tunnel admin`, or set auth = \"anonymous\" (TUNNEL_AUTH=anonymous) for local development ({0})"
    )]
    NoTokenStore(String),
    /// `auth` or a `jwt_*` setting is invalid (e.g. jwt without a key set URL).
    #[error(transparent)]
    Config(#[from] tunnel_kit::config::ConfigError),
    /// The key set server cannot be checked (no root certificates).
    #[error("auth includes jwt but {0}")]
    Jwt(String),
}

impl Auth {
    /// The admission that `config.auth` names (`tokens`, `jwt`, both, or `anonymous`).
    ///
    /// # Errors
    /// [`AuthError`] when tokens are required and the bucket is missing, when JWTs are but the
    /// `jwt_*` settings are incomplete, or the mode is unknown.
    pub async fn open(js: &jetstream::Context, config: &HostConfig) -> Result<Self, AuthError> {
        let modes = config.auth_modes()?;
        if !modes.tokens && !modes.jwt {
            tracing::warn!(
                "ANONYMOUS MODE: any client may open any free tunnel name; for local development only \
                 (set auth = \"tokens\" and create tokens with `tunnel admin`)"
            );
        }
        let tokens = if modes.tokens {
            let kv = js.get_key_value(TOKENS_BUCKET).await.map_err(|e| AuthError::NoTokenStore(e.to_string()))?;
            Some(Box::new(kv))
        } else {
            None
        };
        let jwt = if modes.jwt { Some(std::sync::Arc::new(verifier(&config.jwt)?)) } else { None };
        Ok(Self { tokens, jwt, reservations: std::sync::Arc::default(), js: js.clone() })
    }

    /// The account that reserved `name`, if any.
    ///
    /// # Errors
    /// `unavailable` when the store does not answer.
    pub async fn owner_of(&self, name: &str) -> Result<Option<String>, Failure> {
        let found = self.reservations.get_or_try_init(|| self.js.get_key_value(RESERVATIONS_BUCKET)).await;
        let Ok(reservations) = found else { return Ok(None) };
        let entry = reservations
            .get(reservation_key(name))
            .await
            .map_err(|e| Failure::new(ErrorCode::Unavailable, e.to_string()))?;
        Ok(entry
            .and_then(|bytes| tunnel_schemas::decode::<ReservationRecord>(&bytes, MAX_RECORD_BYTES).ok())
            .map(|r| r.account))
    }

    /// Whether a session admitted with `credential` may hold `name`: `Ok(true)` when its account
    /// owns the name, `Ok(false)` when nobody reserved it.
    ///
    /// # Errors
    /// `name_owned` when another account reserved it (or the session has no account);
    /// `unavailable` when the store does not answer.
    pub async fn may_hold(&self, credential: Option<&Credential>, name: &str) -> Result<bool, Failure> {
        match self.owner_of(name).await? {
            None => Ok(false),
            Some(owner) if credential.is_some_and(|c| c.account == owner) => Ok(true),
            Some(_) => Err(Failure::new(ErrorCode::NameOwned, format!("{name} is reserved by another account"))),
        }
    }

    /// Checks the token or JWT a client presented; `None` in anonymous mode. With both
    /// accepted, a `tt_` token takes the token path and anything else the JWT path.
    ///
    /// # Errors
    /// A typed failure: `unauthorized` for a missing, malformed, unknown or wrong token, or a
    /// JWT that does not verify ([`Verifier::verify`]); `name_not_allowed` for a JWT granting no
    /// names; `unavailable` when the token store or the JWT key set cannot be read.
    pub async fn admit(&self, presented: Option<&str>) -> Result<Option<Credential>, Failure> {
        if self.tokens.is_none() && self.jwt.is_none() {
            return Ok(None);
        }
        let presented = presented.ok_or_else(|| unauthorized("no valid token presented"))?;
        match (&self.tokens, &self.jwt) {
            (Some(kv), jwt) if jwt.is_none() || presented.starts_with(TOKEN_PREFIX) => {
                admit_token(kv, presented).await.map(Some)
            }
            (_, Some(jwt)) => {
                let grant = jwt.verify(presented).await?;
                let source = Source::Jwt { expires_at: grant.expires_at };
                Ok(Some(Credential { account: grant.account, names: grant.names, source }))
            }
            (_, None) => Err(unauthorized("no valid token presented")),
        }
    }

    /// Whether `credential` still holds (checked at every lease renewal): its token still exists
    /// unchanged, or its JWT has not expired (with the configured leeway).
    ///
    /// # Errors
    /// `unavailable` when the store does not answer.
    pub async fn still_valid(&self, credential: &Credential) -> Result<bool, Failure> {
        match (&credential.source, &self.tokens, &self.jwt) {
            (Source::Token { id, secret_hash }, Some(kv), _) => {
                Ok(lookup(kv, id).await?.is_some_and(|record| record.secret_hash == *secret_hash))
            }
            (Source::Jwt { expires_at }, _, Some(jwt)) => Ok(jwt.unexpired(*expires_at)),
            _ => Ok(true),
        }
    }

    /// Closes the sessions of revoked tokens as their records are deleted, until the watch ends.
    pub async fn watch_revocations(self, registry: Registry) {
        let Some(kv) = self.tokens else { return };
        loop {
            let mut watch = match kv.watch_all().await {
                Ok(watch) => watch,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the token bucket; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            while let Some(entry) = watch.next().await {
                let Ok(entry) = entry else { break };
                if matches!(entry.operation, kv::Operation::Delete | kv::Operation::Purge)
                    && let Some(id) = entry.key.strip_prefix("t.")
                {
                    let closed = registry.revoke(id);
                    tracing::info!(token = id, closed, "token revoked");
                }
            }
        }
    }
}

/// Checks that `credential` may bind `name` (`None`: a random name).
///
/// # Errors
/// `name_not_allowed`, naming what the token or JWT may bind.
pub fn may_bind(credential: &Credential, name: Option<&str>) -> Result<(), Failure> {
    let allowed = match name {
        Some(name) => names_allow(&credential.names, name),
        None => names_allow_random(&credential.names),
    };
    if allowed {
        return Ok(());
    }
    let (noun, names) = (credential.noun(), credential.names.join(", "));
    let detail = match name {
        Some(name) => format!("this {noun} may not bind {name:?}; it may bind {names}"),
        None => format!("this {noun} binds only {names}: pass --name"),
    };
    Err(Failure::new(ErrorCode::NameNotAllowed, detail))
}

fn unauthorized(detail: &str) -> Failure {
    Failure::new(ErrorCode::Unauthorized, detail)
}

fn verifier(config: &JwtConfig) -> Result<Verifier, AuthError> {
    let settings = config.settings()?;
    let algorithms: Vec<String> = settings.algorithms.iter().map(|a| format!("{a:?}")).collect();
    tracing::info!(jwks = %settings.jwks_url, issuer = %settings.issuer, audience = %settings.audience, algorithms = %algorithms.join(","), "accepting JWTs");
    Verifier::new(settings).map_err(AuthError::Jwt)
}

/// Checks an account token against its record.
async fn admit_token(kv: &kv::Store, presented: &str) -> Result<Credential, Failure> {
    let token = Token::parse(presented).ok_or_else(|| unauthorized("no valid token presented"))?;
    let record = lookup(kv, &token.id).await?.ok_or_else(|| unauthorized("unknown or revoked token"))?;
    if !record.verifies(&token.secret) {
        return Err(unauthorized("wrong token secret"));
    }
    let source = Source::Token { id: token.id, secret_hash: record.secret_hash };
    Ok(Credential { account: record.account, names: record.names, source })
}

async fn lookup(kv: &kv::Store, id: &str) -> Result<Option<TokenRecord>, Failure> {
    let entry = kv.get(token_key(id)).await.map_err(|e| Failure::new(ErrorCode::Unavailable, e.to_string()))?;
    Ok(entry.and_then(|bytes| tunnel_schemas::decode(&bytes, MAX_RECORD_BYTES).ok()))
}
