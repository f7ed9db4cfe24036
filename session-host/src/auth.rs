//! Who may open a session: a client presenting a valid account token, or anyone in anonymous
//! mode (local development only, chosen explicitly).
//!
//! Tokens live in the KV bucket [`TOKENS_BUCKET`], made by `tunnel admin`; only their secrets'
//! hashes are stored. A host checks the token at every hello, again at every lease renewal, and
//! watches the bucket: a revoked (deleted) token closes its sessions on every host at once.

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use tunnel_schemas::ErrorCode;
use tunnel_schemas::events::Failure;
use tunnel_schemas::tokens::{TOKENS_BUCKET, Token, TokenRecord, token_key};

use crate::registry::Registry;

/// Largest stored token record read.
const MAX_RECORD_BYTES: usize = 64 << 10;

/// How sessions are admitted.
#[derive(Clone)]
pub enum Auth {
    /// Anyone may open any free name.
    Anonymous,
    /// A token from the bucket is required.
    Tokens(Box<kv::Store>),
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
        match mode {
            "anonymous" => {
                tracing::warn!(
                    "ANONYMOUS MODE: any client may open any free tunnel name; for local development only \
                     (set auth = \"tokens\" and create tokens with `tunnel admin`)"
                );
                Ok(Self::Anonymous)
            }
            "tokens" => js
                .get_key_value(TOKENS_BUCKET)
                .await
                .map(|kv| Self::Tokens(Box::new(kv)))
                .map_err(|e| AuthError::NoTokenStore(e.to_string())),
            other => Err(AuthError::UnknownMode(other.to_owned())),
        }
    }

    /// Checks the token a client presented; `None` in anonymous mode.
    ///
    /// # Errors
    /// A typed failure: `unauthorized` for a missing, malformed, unknown or wrong token,
    /// `unavailable` when the store does not answer.
    pub async fn admit(&self, presented: Option<&str>) -> Result<Option<Credential>, Failure> {
        let Self::Tokens(kv) = self else { return Ok(None) };
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
        let Self::Tokens(kv) = self else { return Ok(true) };
        Ok(lookup(kv, &credential.token)
            .await?
            .is_some_and(|record| record.secret_hash == credential.record.secret_hash))
    }

    /// Closes the sessions of revoked tokens as their records are deleted, until the watch ends.
    pub async fn watch_revocations(self, registry: Registry) {
        let Self::Tokens(kv) = self else { return };
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
