//! Public-side policies, enforced before anything is published to NATS.
//!
//! The policies live in the KV bucket [`POLICIES_BUCKET`]: the owner's of each tunnel (stored by
//! the session-host at bind) and the operator's for name patterns (`tunnel admin policy`). Each
//! ingress watches the bucket and keeps them in memory, compiled. A request must pass every
//! policy that covers its tunnel: the client's address against the denied and allowed networks
//! (403 `policy_denied`), the required headers (403 `policy_denied`), then basic auth (401
//! `auth_required` with `WWW-Authenticate`).
//!
//! Until the watch has read the whole bucket the ingress forwards nothing ([`PolicyBook::applied`]
//! is `None`), and it stamps every request with the last revision it applied, so a session-host
//! can refuse requests that reached an ingress before the tunnel's new policy did.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use axum::http::{HeaderMap, header};
use base64::Engine;
use ipnet::IpNet;
use tunnel_kit::mirror::Mirror;
use tunnel_schemas::ErrorCode;
use tunnel_schemas::pattern::Glob;
use tunnel_schemas::policy::{HashCheck, OperatorPolicy, POLICIES_BUCKET, PublicPolicy, TunnelRecord};

/// Largest stored policy read.
const MAX_POLICY_BYTES: usize = 512 << 10;

/// The policies of every tunnel, as last read from the bucket.
pub struct PolicyBook {
    mirror: Arc<Mirror<Compiled>>,
}

/// The policies in force, compiled for checking.
#[derive(Default)]
struct Compiled {
    /// Bound tunnels by name: their owners' policies and accounts.
    owners: HashMap<String, Owner>,
    /// Operator policies by id, with the names they cover.
    operators: HashMap<String, (Glob, Arc<Rules>)>,
}

/// What the bucket says of a bound tunnel.
struct Owner {
    rules: Rules,
    /// The account its session was admitted for.
    account: Option<Arc<str>>,
}

/// One policy, ready to check: networks parsed, hashes decoded.
struct Rules {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    /// Required headers: name, and the check of the value (none: a hash no value matches).
    headers: Vec<(String, Option<HashCheck>)>,
    /// Basic-auth users: name, and the check of the password.
    users: Vec<(String, Option<HashCheck>)>,
}

/// A request the policies refuse: its code (`policy_denied` or `auth_required`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub ErrorCode);

/// What a request that passed carries on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// Its `Authorization` was the tunnel's basic auth: strip it before forwarding.
    pub consumed_authorization: bool,
}

impl PolicyBook {
    /// A book filled and kept current from the bucket over `nats`.
    pub fn start(nats: &async_nats::Client) -> Arc<Self> {
        Arc::new(Self { mirror: Mirror::start(nats, POLICIES_BUCKET, Compiled::apply) })
    }

    /// The last bucket revision applied, or `None` until the bucket has been read whole.
    pub fn applied(&self) -> Option<u64> {
        self.mirror.applied()
    }

    /// Waits up to `timeout` until `revision` is applied; whether it was.
    pub async fn wait_applied(&self, revision: u64, timeout: Duration) -> bool {
        self.mirror.wait_applied(revision, timeout).await
    }

    /// Checks a request to `tunnel` from `client` against every policy covering the tunnel.
    ///
    /// # Errors
    /// [`Refused`] with `policy_denied` or `auth_required`.
    pub fn check(&self, tunnel: &str, client: IpAddr, headers: &HeaderMap) -> Result<Admitted, Refused> {
        let compiled = self.mirror.read();
        let mut admitted = Admitted { consumed_authorization: false };
        if compiled.owners.is_empty() && compiled.operators.is_empty() {
            return Ok(admitted);
        }
        let client = client.to_canonical();
        let operators = compiled.operators.values().filter(|(pattern, _)| pattern.matches(tunnel)).map(|(_, r)| &**r);
        let owner = compiled.owners.get(tunnel).map(|owner| &owner.rules);
        for rules in owner.into_iter().chain(operators) {
            rules.check(client, headers)?;
            admitted.consumed_authorization |= !rules.users.is_empty();
        }
        Ok(admitted)
    }

    /// The account of `tunnel`'s session, as its session-host stored it.
    pub fn account(&self, tunnel: &str) -> Option<Arc<str>> {
        self.mirror.read().owners.get(tunnel).and_then(|owner| owner.account.clone())
    }
}

impl Compiled {
    /// Applies one bucket change: a put replaces the key's policy, a delete or purge removes it.
    fn apply(&mut self, entry: &kv::Entry) {
        let put = entry.operation == kv::Operation::Put;
        if let Some(name) = entry.key.strip_prefix("o.") {
            if put {
                let owner = tunnel_schemas::decode::<TunnelRecord>(&entry.value, MAX_POLICY_BYTES).map_or_else(
                    |_| Owner { rules: Rules::unusable(&entry.key), account: None },
                    |record| Owner {
                        rules: Rules::usable(&record.policy, &entry.key),
                        account: record.account.map(Arc::from),
                    },
                );
                self.owners.insert(name.to_owned(), owner);
            } else {
                self.owners.remove(name);
            }
        } else if let Some(id) = entry.key.strip_prefix("p.") {
            if put {
                let (pattern, rules) = tunnel_schemas::decode::<OperatorPolicy>(&entry.value, MAX_POLICY_BYTES)
                    .map_or_else(
                        |_| (Glob("*".into()), Rules::unusable(&entry.key)),
                        |op| (Glob(op.pattern), Rules::usable(&op.policy, &entry.key)),
                    );
                self.operators.insert(id.to_owned(), (pattern, Arc::new(rules)));
            } else {
                self.operators.remove(id);
            }
        }
    }
}

impl Rules {
    /// The rules of a stored `policy`, or [`Rules::unusable`] when it does not validate.
    fn usable(policy: &PublicPolicy, key: &str) -> Self {
        match policy.validate() {
            Ok(()) => Self::compile(policy),
            Err(_) => Self::unusable(key),
        }
    }

    /// Rules refusing everyone, in place of a stored policy that cannot be read or used: a
    /// broken policy must not open its tunnels.
    fn unusable(key: &str) -> Self {
        tracing::error!(key, "unusable policy in the bucket; the tunnels it covers refuse every request");
        let everyone = ["0.0.0.0/0", "::/0"].iter().filter_map(|net| net.parse().ok()).collect();
        Self { allow: Vec::new(), deny: everyone, headers: Vec::new(), users: Vec::new() }
    }

    fn compile(policy: &PublicPolicy) -> Self {
        let nets = |cidrs: &[String]| cidrs.iter().filter_map(|c| c.parse::<IpNet>().ok()).collect();
        Self {
            allow: nets(&policy.allow_cidrs),
            deny: nets(&policy.deny_cidrs),
            headers: policy.require_headers.iter().map(|h| (h.name.clone(), h.value.check())).collect(),
            users: policy.basic_auth.iter().map(|u| (u.user.clone(), u.password.check())).collect(),
        }
    }

    fn check(&self, client: IpAddr, headers: &HeaderMap) -> Result<(), Refused> {
        if self.deny.iter().any(|net| net.contains(&client))
            || (!self.allow.is_empty() && !self.allow.iter().any(|net| net.contains(&client)))
        {
            return Err(Refused(ErrorCode::PolicyDenied));
        }
        for (name, check) in &self.headers {
            let mut values = headers.get_all(name.as_str()).iter();
            if !values.any(|value| check.as_ref().is_some_and(|check| check.verifies(value.as_bytes()))) {
                return Err(Refused(ErrorCode::PolicyDenied));
            }
        }
        if self.users.is_empty() {
            return Ok(());
        }
        let (user, password) = basic_credentials(headers).ok_or(Refused(ErrorCode::AuthRequired))?;
        self.users
            .iter()
            .find(|(known, _)| known.as_bytes() == user.as_slice())
            .and_then(|(_, check)| check.as_ref())
            .filter(|check| check.verifies(&password))
            .map(|_| ())
            .ok_or(Refused(ErrorCode::AuthRequired))
    }
}

/// The user and password of the request's one `Authorization: Basic` field; the only place
/// the ingress reads credentials.
fn basic_credentials(headers: &HeaderMap) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut fields = headers.get_all(header::AUTHORIZATION).iter();
    let field = fields.next()?;
    if fields.next().is_some() {
        return None;
    }
    let (scheme, encoded) = field.to_str().ok()?.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use tunnel_schemas::policy::PolicySpec;

    use super::*;

    fn rules(spec: PolicySpec) -> Rules {
        Rules::compile(&spec.build().expect("valid"))
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                value.parse().expect("value"),
            );
        }
        map
    }

    fn basic(user_password: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_password))
    }

    #[test]
    fn networks_are_denied_before_they_are_allowed() {
        let rules = rules(PolicySpec {
            allow_cidrs: vec!["10.0.0.0/8".into(), "::1".into()],
            deny_cidrs: vec!["10.9.0.0/16".into()],
            ..PolicySpec::default()
        });
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip").to_canonical();
        let none = HeaderMap::new();
        assert_eq!(rules.check(ip("10.1.2.3"), &none), Ok(()));
        assert_eq!(rules.check(ip("::ffff:10.1.2.3"), &none), Ok(()), "a mapped IPv4 address is IPv4");
        assert_eq!(rules.check(ip("::1"), &none), Ok(()));
        assert_eq!(rules.check(ip("10.9.0.1"), &none), Err(Refused(ErrorCode::PolicyDenied)));
        assert_eq!(rules.check(ip("192.168.1.1"), &none), Err(Refused(ErrorCode::PolicyDenied)));
    }

    #[test]
    fn headers_and_basic_auth_are_checked_against_their_hashes() {
        let rules = rules(PolicySpec {
            require_headers: vec!["X-Key: k3y".into()],
            basic_auth: vec!["ann:long enough".into()],
            ..PolicySpec::default()
        });
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let good = basic("ann:long enough");
        assert_eq!(rules.check(ip, &headers(&[("x-key", "k3y"), ("authorization", &good)])), Ok(()));
        let refused = |pairs: &[(&str, &str)]| rules.check(ip, &headers(pairs)).expect_err("refused").0;
        assert_eq!(refused(&[("authorization", &good)]), ErrorCode::PolicyDenied, "header missing");
        assert_eq!(refused(&[("x-key", "K3Y"), ("authorization", &good)]), ErrorCode::PolicyDenied);
        assert_eq!(refused(&[("x-key", "k3y")]), ErrorCode::AuthRequired, "no credentials");
        assert_eq!(refused(&[("x-key", "k3y"), ("authorization", &basic("ann:long enougH"))]), ErrorCode::AuthRequired);
        assert_eq!(refused(&[("x-key", "k3y"), ("authorization", &basic("bob:long enough"))]), ErrorCode::AuthRequired);
        assert_eq!(
            refused(&[("x-key", "k3y"), ("authorization", &good), ("authorization", &good)]),
            ErrorCode::AuthRequired,
            "two Authorization fields are refused, not guessed between"
        );
        assert_eq!(refused(&[("x-key", "k3y"), ("authorization", "Bearer abc")]), ErrorCode::AuthRequired);
        assert_eq!(refused(&[("x-key", "k3y"), ("authorization", "Basic !!!")]), ErrorCode::AuthRequired);
    }

    #[test]
    fn every_covering_policy_must_pass() {
        let owner = rules(PolicySpec { allow_cidrs: vec!["10.0.0.0/8".into()], ..PolicySpec::default() });
        let operator = rules(PolicySpec { deny_cidrs: vec!["10.0.0.66".into()], ..PolicySpec::default() });
        let mut compiled = Compiled::default();
        compiled.owners.insert("shop".into(), Owner { rules: owner, account: Some("acme".into()) });
        compiled.operators.insert("ops".into(), (Glob("sho*".into()), Arc::new(operator)));
        let book = PolicyBook { mirror: Arc::new(Mirror::loaded_with(compiled, 7)) };
        let none = HeaderMap::new();
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(book.check("shop", ip("10.0.0.1"), &none).is_ok());
        assert!(book.check("shop", ip("10.0.0.66"), &none).is_err(), "the operator's deny applies too");
        assert!(book.check("shop", ip("8.8.8.8"), &none).is_err(), "the owner's allow applies");
        assert!(book.check("show", ip("10.0.0.66"), &none).is_err(), "the operator's pattern covers other names");
        assert!(book.check("other", ip("10.0.0.66"), &none).is_ok());
        assert_eq!(book.applied(), Some(7));
        assert_eq!(book.account("shop").as_deref(), Some("acme"));
    }

    /// The cost of the checks on the request path: `cargo test --release -p tunnel-ingress
    /// check_costs -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, run by hand in release mode"]
    fn check_costs() {
        let mut compiled = Compiled::default();
        let spec = PolicySpec {
            basic_auth: vec!["ann:long enough".into()],
            allow_cidrs: vec!["127.0.0.0/8".into()],
            deny_cidrs: vec!["10.0.0.0/8".into()],
            require_headers: vec!["X-Key: k3y".into()],
        };
        compiled.owners.insert("guarded".into(), Owner { rules: rules(spec), account: None });
        compiled.owners.insert("open".into(), Owner { rules: rules(PolicySpec::default()), account: None });
        let book = PolicyBook { mirror: Arc::new(Mirror::loaded_with(compiled, 1)) };
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let guarded = headers(&[("x-key", "k3y"), ("authorization", &basic("ann:long enough"))]);
        let none = HeaderMap::new();
        for (name, tunnel, headers) in [("a policy", "guarded", &guarded), ("no policy", "open", &none)] {
            let started = std::time::Instant::now();
            let rounds = 200_000;
            for _ in 0..rounds {
                assert!(book.check(tunnel, ip, headers).is_ok());
            }
            println!("{name}: {:.0} ns per check", started.elapsed().as_nanos() as f64 / f64::from(rounds));
        }
    }
}
