//! Who may open a session: a client presenting a valid account token, or anyone in anonymous
//! mode (local development only, chosen explicitly).
//!
//! Tokens live in the KV bucket [`TOKENS_BUCKET`], made by `tunnel admin`; only their secrets'
//! hashes are stored. A host checks the token at every hello, again at every lease renewal, and
//! watches the bucket: a revoked (deleted) token closes its sessions on every host at once.
//!
//! Names reserved by an account ([`RESERVATIONS_BUCKET`]) are bound by that account's tokens
//! only, even while free, and checked at every bind, resume and renewal.

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use tunnel_schemas::ErrorCode;
use tunnel_schemas::events::Failure;
use tunnel_schemas::tokens::{
    RESERVATIONS_BUCKET, ReservationRecord, TOKENS_BUCKET, Token, TokenRecord, reservation_key, token_key,
};

use crate::registry::Registry;

/// Largest stored token record read.
const MAX_RECORD_BYTES: usize = 64 << 10;

/// How sessions are admitted.
#[derive(Clone)]
pub struct Auth {
    /// The token bucket; `None` in anonymous mode (anyone may open any free name).
    tokens: Option<Box<kv::Store>>,
    /// The reservations, once `tunnel admin` has made the bucket (looked for at each bind until
    /// then).
    reservations: std::sync::Arc<tokio::sync::OnceCell<kv::Store>>,
    js: jetstream::Context,
}

/// What a valid token grants a session.
#[derive(Debug, Clone)]
pub struct Credential {
    /// The token's id (public).
    pub token: String,
    /// The account it acts for.
    pub account: String,
    /// Its record.
    pub record: TokenRecord,
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
    /// Neither `tokens` nor `anonymous`.
    #[error("auth must be \"tokens\" or \"anonymous\", not {0:?}")]
    UnknownMode(String),
}

impl Auth {
    /// The admission of `mode` (`tokens` or `anonymous`).
    ///
    /// # Errors
    /// [`AuthError`] when tokens are required and the bucket is missing, or the mode is unknown.
    pub async fn open(js: &jetstream::Context, mode: &str) -> Result<Self, AuthError> {
        let tokens = match mode {
            "anonymous" => {
                tracing::warn!(
                    "ANONYMOUS MODE: any client may open any free tunnel name; for local development only \
                     (set auth = \"tokens\" and create tokens with `tunnel admin`)"
                );
                None
            }
            "tokens" => Some(Box::new(
                js.get_key_value(TOKENS_BUCKET).await.map_err(|e| AuthError::NoTokenStore(e.to_string()))?,
            )),
            other => return Err(AuthError::UnknownMode(other.to_owned())),
        };
        Ok(Self { tokens, reservations: std::sync::Arc::default(), js: js.clone() })
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

    /// Checks the token a client presented; `None` in anonymous mode.
    ///
    /// # Errors
    /// A typed failure: `unauthorized` for a missing, malformed, unknown or wrong token,
    /// `unavailable` when the store does not answer.
    pub async fn admit(&self, presented: Option<&str>) -> Result<Option<Credential>, Failure> {
        let Some(kv) = &self.tokens else { return Ok(None) };
        let unauthorized = |detail: &str| Failure::new(ErrorCode::Unauthorized, detail);
        let token = presented.and_then(Token::parse).ok_or_else(|| unauthorized("no valid token presented"))?;
        let record = lookup(kv, &token.id).await?.ok_or_else(|| unauthorized("unknown or revoked token"))?;
        if !record.verifies(&token.secret) {
            return Err(unauthorized("wrong token secret"));
        }
        Ok(Some(Credential { token: token.id, account: record.account.clone(), record }))
    }

    /// Whether `credential`'s token still exists (checked at every lease renewal).
    ///
    /// # Errors
    /// `unavailable` when the store does not answer.
    pub async fn still_valid(&self, credential: &Credential) -> Result<bool, Failure> {
        let Some(kv) = &self.tokens else { return Ok(true) };
        Ok(lookup(kv, &credential.token)
            .await?
            .is_some_and(|record| record.secret_hash == credential.record.secret_hash))
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
/// `name_not_allowed`, naming what the token may bind.
pub fn may_bind(credential: &Credential, name: Option<&str>) -> Result<(), Failure> {
    let allowed = match name {
        Some(name) => credential.record.allows(name),
        None => credential.record.allows_random(),
    };
    if allowed {
        return Ok(());
    }
    let detail = match name {
        Some(name) => format!("this token may not bind {name:?}; it may bind {}", credential.record.names.join(", ")),
        None => format!("this token binds only {}: pass --name", credential.record.names.join(", ")),
    };
    Err(Failure::new(ErrorCode::NameNotAllowed, detail))
}

async fn lookup(kv: &kv::Store, id: &str) -> Result<Option<TokenRecord>, Failure> {
    let entry = kv.get(token_key(id)).await.map_err(|e| Failure::new(ErrorCode::Unavailable, e.to_string()))?;
    Ok(entry.and_then(|bytes| tunnel_schemas::decode(&bytes, MAX_RECORD_BYTES).ok()))
}
