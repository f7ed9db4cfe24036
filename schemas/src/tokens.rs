//! Accounts and their tokens, as stored in JetStream KV.
//!
//! A token is `tt_<id>_<secret>`: the id (16 hex digits) is the key of its record in the bucket
//! [`TOKENS_BUCKET`], the secret (48 hex digits) is stored only as a SHA-256 hash. A token is shown
//! once, when it is created; revoking it deletes its record, which every session-host watches.
//! Each token may name the tunnels it may bind ([`TokenRecord::names`], patterns such as
//! `*-acme`); none means any name.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::pattern::Glob;

/// KV bucket of accounts: key `a.<account>`, value [`AccountRecord`].
pub const ACCOUNTS_BUCKET: &str = "tunnel_accounts";
/// KV bucket of tokens: key `t.<id>`, value [`TokenRecord`].
pub const TOKENS_BUCKET: &str = "tunnel_tokens";
/// KV bucket of name reservations: key `r.<name>`, value [`ReservationRecord`].
pub const RESERVATIONS_BUCKET: &str = "tunnel_reservations";

/// A tunnel name reserved by an account: no one else may bind it, even while it is free.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationRecord {
    /// The owning account.
    pub account: String,
    /// Unix time of the reservation, in milliseconds.
    pub created_ms: u64,
}

/// KV key of the reservation of tunnel `name`.
pub fn reservation_key(name: &str) -> String {
    format!("r.{name}")
}

/// Whether two byte strings are equal, in time that depends on their length only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0_u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Prefix of every token.
pub const TOKEN_PREFIX: &str = "tt_";
/// Hex digits of a token id.
const ID_DIGITS: usize = 16;
/// Hex digits of a token secret.
const SECRET_DIGITS: usize = 48;

/// An account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecord {
    /// Unix time of creation, in milliseconds.
    pub created_ms: u64,
}

/// A token, as stored: never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The account the token acts for.
    pub account: String,
    /// SHA-256 of the secret, hex.
    pub secret_hash: String,
    /// Name patterns the token may bind; empty for any name.
    #[serde(default)]
    pub names: Vec<String>,
    /// Unix time of creation, in milliseconds.
    pub created_ms: u64,
}

impl TokenRecord {
    /// Whether the token may bind `name`.
    pub fn allows(&self, name: &str) -> bool {
        names_allow(&self.names, name)
    }

    /// Whether the token may take a random name: it names no tunnels, or allows any (`*`).
    pub fn allows_random(&self) -> bool {
        names_allow_random(&self.names)
    }

    /// Whether `secret` is this token's, compared in constant time.
    pub fn verifies(&self, secret: &str) -> bool {
        constant_time_eq(hash_secret(secret).as_bytes(), self.secret_hash.as_bytes())
    }
}

/// Whether the name rules `names` (patterns; empty for any name) allow binding `name`.
pub fn names_allow(names: &[String], name: &str) -> bool {
    names.is_empty() || names.iter().any(|pattern| Glob(pattern.clone()).matches(name))
}

/// Whether the name rules `names` allow a random name: they are empty, or allow any (`*`).
pub fn names_allow_random(names: &[String]) -> bool {
    names.is_empty() || names.iter().any(|pattern| pattern == "*")
}

/// A parsed token: its id and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The public id, the key of its record.
    pub id: String,
    /// The secret.
    pub secret: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("id", &self.id).field("secret", &"***").finish()
    }
}

impl Token {
    /// A new random token.
    pub fn generate() -> Self {
        Self { id: random_hex(ID_DIGITS / 2), secret: random_hex(SECRET_DIGITS / 2) }
    }

    /// Reads `tt_<id>_<secret>`.
    pub fn parse(text: &str) -> Option<Self> {
        let (id, secret) = text.strip_prefix(TOKEN_PREFIX)?.split_once('_')?;
        let hex = |s: &str, digits: usize| s.len() == digits && s.bytes().all(|b| b.is_ascii_hexdigit());
        (hex(id, ID_DIGITS) && hex(secret, SECRET_DIGITS))
            .then(|| Self { id: id.to_owned(), secret: secret.to_owned() })
    }

    /// The token as the user types it.
    pub fn reveal(&self) -> String {
        format!("{TOKEN_PREFIX}{}_{}", self.id, self.secret)
    }
}

/// KV key of token `id`.
pub fn token_key(id: &str) -> String {
    format!("t.{id}")
}

/// KV key of account `name`.
pub fn account_key(name: &str) -> String {
    format!("a.{name}")
}

/// Whether `name` is a valid account name: 1–63 of `a-z 0-9 - _`.
pub fn valid_account(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// SHA-256 of a token secret, hex.
pub fn hash_secret(secret: &str) -> String {
    Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0_u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_back_and_verify_their_secret_only() {
        let token = Token::generate();
        let parsed = Token::parse(&token.reveal()).expect("parses");
        assert_eq!(parsed, token);
        assert!(!format!("{token:?}").contains(&token.secret));
        let record = TokenRecord {
            account: "acme".into(),
            secret_hash: hash_secret(&token.secret),
            names: vec!["*-acme".into()],
            created_ms: 0,
        };
        assert!(record.verifies(&token.secret));
        assert!(!record.verifies(&Token::generate().secret));
        assert!(record.allows("shop-acme"));
        assert!(!record.allows("shop-other"));
        assert!(!record.allows_random());
        for bad in ["", "tt_", "tt_abc_def", "xx_0123456789abcdef_00", &token.reveal().replace("tt_", "tx_")] {
            assert!(Token::parse(bad).is_none(), "{bad}");
        }
        assert!(valid_account("acme-1") && !valid_account("Acme") && !valid_account(""));
    }
}
