//! Tunnel names: DNS labels that form the public host name `<name>.<domain>`.

use std::fmt;

use rand::Rng;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};

/// Shortest accepted name.
pub const MIN_NAME_LEN: usize = 3;
/// Longest accepted name (the DNS label limit).
pub const MAX_NAME_LEN: usize = 63;

/// Names nobody may take: they would shadow the operator's own hosts.
pub const RESERVED_NAMES: &[&str] = &[
    "www",
    "api",
    "admin",
    "app",
    "auth",
    "dashboard",
    "docs",
    "ftp",
    "help",
    "imap",
    "localhost",
    "mail",
    "ns1",
    "ns2",
    "pop",
    "smtp",
    "static",
    "status",
    "support",
    "tunnel",
];

/// Why a requested name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not a DNS label of the accepted shape.
    #[error("invalid tunnel name {0:?}: use 3-63 characters of a-z, 0-9 and '-', not starting or ending with '-'")]
    Invalid(String),
    /// On the reserved list.
    #[error("tunnel name {0:?} is reserved")]
    Reserved(String),
}

/// A validated tunnel name: lowercase `[a-z0-9-]`, 3–63 characters, no leading or trailing hyphen,
/// not reserved.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TunnelName(String);

impl TunnelName {
    /// Validates `name` as given (no case folding: the wire carries lowercase names only).
    ///
    /// # Errors
    /// [`NameError`] when the name is malformed or reserved.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        let bytes = name.as_bytes();
        let shape_ok = (MIN_NAME_LEN..=MAX_NAME_LEN).contains(&bytes.len())
            && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes.first() != Some(&b'-')
            && bytes.last() != Some(&b'-');
        if !shape_ok {
            return Err(NameError::Invalid(name.to_owned()));
        }
        if RESERVED_NAMES.contains(&name) {
            return Err(NameError::Reserved(name.to_owned()));
        }
        Ok(Self(name.to_owned()))
    }

    /// A random, readable name such as `brave-otter-3f9k`.
    pub fn random() -> Self {
        let mut rng = rand::rng();
        let adjective = ADJECTIVES.choose(&mut rng).copied().unwrap_or("quick");
        let animal = ANIMALS.choose(&mut rng).copied().unwrap_or("fox");
        let suffix: String =
            (0..4).map(|_| char::from(SUFFIX_ALPHABET[rng.random_range(0..SUFFIX_ALPHABET.len())])).collect();
        Self(format!("{adjective}-{animal}-{suffix}"))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

const SUFFIX_ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";

const ADJECTIVES: &[&str] = &[
    "amber", "bold", "brave", "bright", "calm", "clever", "cosmic", "crisp", "eager", "fancy", "gentle", "happy",
    "jolly", "keen", "lively", "lucky", "mellow", "nimble", "proud", "quiet", "rapid", "shiny", "silent", "swift",
    "tidy", "vivid", "warm", "wise", "witty", "zesty",
];

const ANIMALS: &[&str] = &[
    "badger", "beaver", "bison", "crane", "eagle", "falcon", "ferret", "gecko", "heron", "ibex", "koala", "lemur",
    "lynx", "marten", "moose", "otter", "panda", "puffin", "quokka", "raven", "salmon", "seal", "stoat", "tapir",
    "tiger", "walrus", "weasel", "whale", "yak", "zebra",
];

impl fmt::Display for TunnelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for TunnelName {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<TunnelName> for String {
    fn from(name: TunnelName) -> Self {
        name.0
    }
}

impl AsRef<str> for TunnelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for name in ["abc", "my-app", "a1b", "x".repeat(63).as_str(), "0-0"] {
            assert!(TunnelName::parse(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn refuses_malformed_names() {
        for name in ["", "ab", "-abc", "abc-", "ABC", "a_b", "a.bc", "é-abc", &"x".repeat(64), "a b"] {
            assert_eq!(TunnelName::parse(name), Err(NameError::Invalid(name.to_owned())), "{name}");
        }
    }

    #[test]
    fn refuses_reserved_names() {
        assert_eq!(TunnelName::parse("www"), Err(NameError::Reserved("www".into())));
    }

    #[test]
    fn random_names_are_valid_and_vary() {
        let names: std::collections::HashSet<_> = (0..200).map(|_| TunnelName::random()).collect();
        assert!(names.len() > 190);
        for name in &names {
            assert_eq!(TunnelName::parse(name.as_str()).as_ref(), Ok(name));
        }
    }

    #[test]
    fn decoding_validates() {
        let bad = crate::encode(&"Bad_Name");
        assert!(crate::decode::<TunnelName>(&bad, 100).is_err());
    }
}
