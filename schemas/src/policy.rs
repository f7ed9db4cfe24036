//! Public-side access policies: who on the internet may reach a tunnel.
//!
//! A policy lists client networks allowed or denied, headers a request must carry, and basic-auth
//! users. The owner chooses one from the client (`tunnel http --basic-auth … --allow-cidr …`) and
//! the session-host stores it in the KV bucket [`POLICIES_BUCKET`] under [`owner_key`], with the
//! session's account ([`TunnelRecord`]), when the tunnel is bound; the operator may add policies for name patterns under [`operator_key`]
//! (`tunnel admin policy`). Every ingress watches the bucket and checks each request against the
//! tunnel's policies before publishing anything to NATS; a request must pass all of them.
//!
//! Secrets (passwords, required header values) are never stored: only a salted SHA-256 of each,
//! made where the secret was typed.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// KV bucket of policies: [`owner_key`] → [`TunnelRecord`], [`operator_key`] →
/// [`OperatorPolicy`].
pub const POLICIES_BUCKET: &str = "tunnel_policies";

/// NATS header on each tunnel request: the last revision of [`POLICIES_BUCKET`] the ingress had
/// applied. A session-host refuses a request whose ingress had not yet seen the session's own
/// policy, so no request slips through between a bind and the ingress learning its policy.
pub const POLICY_REVISION_HEADER: &str = "Tunnel-Policy-Rev";

/// The refusal of a request whose ingress had not applied policy `revision` yet.
pub fn pending(revision: u64) -> crate::events::Failure {
    crate::events::Failure::new(crate::ErrorCode::PolicyPending, format!("{PENDING_DETAIL}{revision}"))
}

/// The revision a [`pending`] refusal waits for.
pub fn pending_revision(failure: &crate::events::Failure) -> Option<u64> {
    let revision = failure.detail.strip_prefix(PENDING_DETAIL)?;
    (failure.code == crate::ErrorCode::PolicyPending).then(|| revision.parse().ok()).flatten()
}

const PENDING_DETAIL: &str = "the ingress has not applied the tunnel's policy, revision ";

/// Most rules of each kind in one policy.
pub const MAX_RULES: usize = 64;

/// Longest user name, password, header name or header value in a rule, in bytes.
pub const MAX_RULE_BYTES: usize = 1024;

/// KV key of the policy the owner of tunnel `name` chose.
pub fn owner_key(name: &str) -> String {
    format!("o.{name}")
}

/// KV key of operator policy `id`.
pub fn operator_key(id: &str) -> String {
    format!("p.{id}")
}

/// What the session-host stores for a bound tunnel under [`owner_key`]: the account its session
/// was admitted for, and its owner's policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelRecord {
    /// The account (none in anonymous mode); ingresses stamp it on the tunnel's audit records.
    #[serde(default)]
    pub account: Option<String>,
    /// Who on the public side may reach the tunnel.
    #[serde(default)]
    pub policy: PublicPolicy,
}

/// What a request must satisfy to reach a tunnel. An empty policy admits everyone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicPolicy {
    /// Networks a client may come from (`10.0.0.0/8`, `2001:db8::/32`, single addresses); empty
    /// for any.
    #[serde(default)]
    pub allow_cidrs: Vec<String>,
    /// Networks refused, even when allowed.
    #[serde(default)]
    pub deny_cidrs: Vec<String>,
    /// Headers each request must carry, with the value given.
    #[serde(default)]
    pub require_headers: Vec<HashedHeader>,
    /// Users of HTTP basic auth; when any, a request must present one of them.
    #[serde(default)]
    pub basic_auth: Vec<HashedUser>,
}

/// A basic-auth user, with its password salted and hashed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashedUser {
    /// The user name.
    pub user: String,
    /// The password's [`SaltedHash`].
    pub password: SaltedHash,
}

/// A header a request must carry, with its value salted and hashed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashedHeader {
    /// The header name, lowercase.
    pub name: String,
    /// The value's [`SaltedHash`].
    pub value: SaltedHash,
}

/// SHA-256 of a random salt and a secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaltedHash {
    /// Random, hex.
    pub salt: String,
    /// SHA-256 of the salt, a zero byte and the secret, hex.
    pub hash: String,
}

impl std::fmt::Debug for HashedUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashedUser").field("user", &self.user).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for HashedHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashedHeader").field("name", &self.name).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SaltedHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SaltedHash(***)")
    }
}

impl SaltedHash {
    /// Hashes `secret` with a new random salt.
    pub fn new(secret: &[u8]) -> Self {
        let salt = crate::tokens::random_hex(16);
        let hash = salted(salt.as_bytes(), secret).iter().map(|b| format!("{b:02x}")).collect();
        Self { salt, hash }
    }

    /// Whether `secret` is the one hashed, compared in constant time.
    pub fn verifies(&self, secret: &[u8]) -> bool {
        self.check().is_some_and(|check| check.verifies(secret))
    }

    /// The hash decoded once, for checking many secrets (the ingress checks every request);
    /// `None` when the stored hash is not 64 hex digits.
    pub fn check(&self) -> Option<HashCheck> {
        let hex = self.hash.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut digest = [0_u8; 32];
        for (byte, pair) in digest.iter_mut().zip(hex.chunks_exact(2)) {
            let text = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(text, 16).ok()?;
        }
        Some(HashCheck { salt: self.salt.clone().into_bytes().into_boxed_slice(), digest })
    }
}

/// A [`SaltedHash`] ready to check secrets against: the salt and the digest as bytes.
#[derive(Clone)]
pub struct HashCheck {
    salt: Box<[u8]>,
    digest: [u8; 32],
}

impl std::fmt::Debug for HashCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashCheck(***)")
    }
}

impl HashCheck {
    /// Whether `secret` is the one hashed, compared in constant time.
    pub fn verifies(&self, secret: &[u8]) -> bool {
        crate::tokens::constant_time_eq(&salted(&self.salt, secret), &self.digest)
    }
}

/// SHA-256 of the salt, a zero byte and the secret.
fn salted(salt: &[u8], secret: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update([0]);
    hasher.update(secret);
    hasher.finalize().into()
}

/// An operator's policy for the tunnels whose names match `pattern`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorPolicy {
    /// Tunnel names it covers (`*`, `shop-*`, an exact name).
    pub pattern: String,
    /// The policy.
    pub policy: PublicPolicy,
    /// Unix time it was set, in milliseconds.
    pub created_ms: u64,
}

/// A policy rule that cannot be used, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

/// The rules of a policy as typed on a command line; secrets in the clear until hashed by
/// [`PolicySpec::build`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PolicySpec {
    /// `user:password` pairs.
    pub basic_auth: Vec<String>,
    /// Networks or addresses allowed.
    pub allow_cidrs: Vec<String>,
    /// Networks or addresses denied.
    pub deny_cidrs: Vec<String>,
    /// `Name:value` pairs.
    pub require_headers: Vec<String>,
}

impl std::fmt::Debug for PolicySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySpec")
            .field("basic_auth", &self.basic_auth.len())
            .field("allow_cidrs", &self.allow_cidrs)
            .field("deny_cidrs", &self.deny_cidrs)
            .field("require_headers", &self.require_headers.len())
            .finish()
    }
}

impl PolicySpec {
    /// Whether the spec has no rule.
    pub fn is_empty(&self) -> bool {
        self.basic_auth.is_empty()
            && self.allow_cidrs.is_empty()
            && self.deny_cidrs.is_empty()
            && self.require_headers.is_empty()
    }

    /// Checks every rule and hashes the secrets.
    ///
    /// # Errors
    /// [`PolicyError`] naming the first rule that cannot be used.
    pub fn build(&self) -> Result<PublicPolicy, PolicyError> {
        let policy = PublicPolicy {
            allow_cidrs: self.allow_cidrs.iter().map(|c| normalize_cidr(c)).collect::<Result<_, _>>()?,
            deny_cidrs: self.deny_cidrs.iter().map(|c| normalize_cidr(c)).collect::<Result<_, _>>()?,
            require_headers: self.require_headers.iter().map(|h| hashed_header(h)).collect::<Result<_, _>>()?,
            basic_auth: self.basic_auth.iter().map(|u| hashed_user(u)).collect::<Result<_, _>>()?,
        };
        policy.validate()?;
        Ok(policy)
    }
}

impl PublicPolicy {
    /// Whether the policy admits everyone.
    pub fn is_empty(&self) -> bool {
        self.allow_cidrs.is_empty()
            && self.deny_cidrs.is_empty()
            && self.require_headers.is_empty()
            && self.basic_auth.is_empty()
    }

    /// Checks a policy from the network (a client's hello, the KV bucket): bounded rule counts
    /// and sizes, parseable networks, header names that HTTP allows.
    ///
    /// # Errors
    /// [`PolicyError`] naming the first rule that cannot be used.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let counts = [
            ("allow-cidr", self.allow_cidrs.len()),
            ("deny-cidr", self.deny_cidrs.len()),
            ("require-header", self.require_headers.len()),
            ("basic-auth", self.basic_auth.len()),
        ];
        if let Some((rule, _)) = counts.iter().find(|(_, count)| *count > MAX_RULES) {
            return Err(PolicyError(format!("at most {MAX_RULES} {rule} rules")));
        }
        for cidr in self.allow_cidrs.iter().chain(&self.deny_cidrs) {
            normalize_cidr(cidr)?;
        }
        for header in &self.require_headers {
            check_header_name(&header.name)?;
        }
        for user in &self.basic_auth {
            check_user(&user.user)?;
        }
        Ok(())
    }
}

/// A network in canonical form (`10.0.0.0/8`); a single address becomes `/32` or `/128`.
///
/// # Errors
/// [`PolicyError`] when `text` is neither a network nor an address.
pub fn normalize_cidr(text: &str) -> Result<String, PolicyError> {
    let text = text.trim();
    let net = match text.parse::<ipnet::IpNet>() {
        Ok(net) => net.trunc(),
        Err(_) => text
            .parse::<std::net::IpAddr>()
            .map(ipnet::IpNet::from)
            .map_err(|_| PolicyError(format!("{text:?} is not a network (10.0.0.0/8) or an address")))?,
    };
    Ok(net.to_string())
}

fn hashed_user(spec: &str) -> Result<HashedUser, PolicyError> {
    let (user, password) = spec.split_once(':').ok_or_else(|| PolicyError("basic auth is user:password".into()))?;
    check_user(user)?;
    if password.len() < 8 || password.len() > MAX_RULE_BYTES {
        return Err(PolicyError(format!("the password of {user:?} must have 8 to {MAX_RULE_BYTES} bytes")));
    }
    Ok(HashedUser { user: user.to_owned(), password: SaltedHash::new(password.as_bytes()) })
}

fn check_user(user: &str) -> Result<(), PolicyError> {
    if user.is_empty() || user.len() > MAX_RULE_BYTES || user.contains(':') || user.chars().any(char::is_control) {
        return Err(PolicyError(format!("{user:?} is not a basic-auth user name")));
    }
    Ok(())
}

fn hashed_header(spec: &str) -> Result<HashedHeader, PolicyError> {
    let (name, value) = spec.split_once(':').ok_or_else(|| PolicyError("a required header is Name:value".into()))?;
    let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
    check_header_name(&name)?;
    if value.is_empty() || value.len() > MAX_RULE_BYTES || value.bytes().any(|b| b.is_ascii_control()) {
        return Err(PolicyError(format!("the value required of {name} must have 1 to {MAX_RULE_BYTES} visible bytes")));
    }
    Ok(HashedHeader { name, value: SaltedHash::new(value.as_bytes()) })
}

fn check_header_name(name: &str) -> Result<(), PolicyError> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || name.len() > MAX_RULE_BYTES || !name.bytes().all(token) || name != name.to_ascii_lowercase() {
        return Err(PolicyError(format!("{name:?} is not a header name")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_refusals_name_their_revision() {
        assert_eq!(pending_revision(&pending(42)), Some(42));
        let other = crate::events::Failure::new(crate::ErrorCode::Unavailable, "revision 42");
        assert_eq!(pending_revision(&other), None);
    }

    #[test]
    fn specs_build_hashed_rules_and_refuse_bad_ones() {
        let spec = PolicySpec {
            basic_auth: vec!["ann:correct horse".into()],
            allow_cidrs: vec!["10.1.2.3/8".into(), "::1".into()],
            deny_cidrs: vec!["192.168.0.7".into()],
            require_headers: vec!["X-Key: s3cret".into()],
        };
        let policy = spec.build().expect("valid");
        assert_eq!(policy.allow_cidrs, ["10.0.0.0/8", "::1/128"]);
        assert_eq!(policy.deny_cidrs, ["192.168.0.7/32"]);
        assert_eq!(policy.require_headers[0].name, "x-key");
        assert!(policy.require_headers[0].value.verifies(b"s3cret"));
        assert!(policy.basic_auth[0].password.verifies(b"correct horse"));
        assert!(!policy.basic_auth[0].password.verifies(b"correct horsE"));
        let encoded = crate::encode(&policy);
        assert!(!encoded.windows(6).any(|w| w == b"s3cret"), "no secret is stored");
        assert!(!format!("{policy:?}").contains(&policy.basic_auth[0].password.hash), "Debug hides hashes");

        for bad in [
            PolicySpec { basic_auth: vec!["nopassword".into()], ..PolicySpec::default() },
            PolicySpec { basic_auth: vec!["ann:short".into()], ..PolicySpec::default() },
            PolicySpec { allow_cidrs: vec!["10.0.0.0/33".into()], ..PolicySpec::default() },
            PolicySpec { deny_cidrs: vec!["example.com".into()], ..PolicySpec::default() },
            PolicySpec { require_headers: vec!["Bad Name: v".into()], ..PolicySpec::default() },
            PolicySpec { require_headers: vec!["X-Key:".into()], ..PolicySpec::default() },
        ] {
            assert!(bad.build().is_err(), "{bad:?}");
        }
        let many = PolicySpec { allow_cidrs: vec!["10.0.0.1".into(); MAX_RULES + 1], ..PolicySpec::default() };
        assert!(many.build().is_err());
    }
}
