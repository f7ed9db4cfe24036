//! Public-side policies: the flags `tunnel http` takes for its own tunnel, and the operator's
//! `tunnel admin policy` for name patterns. Secrets are hashed here, where they are typed, and
//! never sent or stored in the clear.

use async_nats::jetstream::kv;
use tunnel_schemas::policy::{OperatorPolicy, PolicyError, PolicySpec, PublicPolicy, operator_key};
use tunnel_trail::filter::now_ms;

use super::admin::{Refusal, keys, print};

/// Who on the public side may reach a tunnel, checked by the ingress before a request is
/// forwarded.
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// Require HTTP basic auth with this user and password (8+ bytes); repeat for more users.
    #[arg(long, value_name = "USER:PASSWORD")]
    pub basic_auth: Vec<String>,
    /// Admit only clients from this network or address (10.0.0.0/8, 203.0.113.7); repeatable.
    #[arg(long, value_name = "CIDR")]
    pub allow_cidr: Vec<String>,
    /// Refuse clients from this network or address; repeatable.
    #[arg(long, value_name = "CIDR")]
    pub deny_cidr: Vec<String>,
    /// Admit only requests carrying this header with this value; repeatable.
    #[arg(long, value_name = "NAME:VALUE")]
    pub require_header: Vec<String>,
}

impl PolicyArgs {
    /// The policy, its secrets hashed.
    ///
    /// # Errors
    /// [`PolicyError`] naming the first flag that cannot be used.
    pub fn build(self) -> Result<PublicPolicy, PolicyError> {
        let spec = PolicySpec {
            basic_auth: self.basic_auth,
            allow_cidrs: self.allow_cidr,
            deny_cidrs: self.deny_cidr,
            require_headers: self.require_header,
        };
        spec.build()
    }
}

/// `tunnel admin policy`.
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Sets (or replaces) an operator policy: every tunnel whose name matches must pass it, on
    /// top of its owner's.
    Set {
        /// The policy's id: 1–63 of a-z 0-9 - _.
        id: String,
        /// Tunnel names it covers: `*`, `shop-*`, an exact name.
        #[arg(long, default_value = "*")]
        pattern: String,
        /// The rules.
        #[command(flatten)]
        rules: PolicyArgs,
    },
    /// Lists the operator policies (never their secrets).
    List,
    /// Removes an operator policy.
    Remove {
        /// The policy's id.
        id: String,
    },
}

/// Runs `command` on the policy bucket `store`.
///
/// # Errors
/// `invalid_arguments`, `unknown_policy` or `unavailable`.
pub async fn admin(store: &kv::Store, command: PolicyCommand, json: bool) -> Result<(), Refusal> {
    match command {
        PolicyCommand::Set { id, pattern, rules } => {
            if !tunnel_schemas::tokens::valid_account(&id) {
                return Err(("invalid_arguments", format!("policy id {id:?}: use 1-63 of a-z 0-9 - _")));
            }
            let policy = rules.build().map_err(|e| ("invalid_arguments", e.to_string()))?;
            if policy.is_empty() {
                return Err(("invalid_arguments", "give at least one rule (--allow-cidr, --basic-auth, …)".into()));
            }
            let record = OperatorPolicy { pattern: pattern.clone(), policy, created_ms: now_ms() };
            store
                .put(operator_key(&id), tunnel_schemas::encode(&record).into())
                .await
                .map_err(|e| ("unavailable", e.to_string()))?;
            let value = serde_json::json!({ "event": "policy_set", "id": id, "pattern": pattern });
            print(json, &value, &format!("policy {id} set for {pattern}"));
        }
        PolicyCommand::List => {
            for id in keys(store, "p.").await? {
                let bytes = store.get(operator_key(&id)).await.map_err(|e| ("unavailable", e.to_string()))?;
                let Some(record) = bytes.and_then(|b| tunnel_schemas::decode::<OperatorPolicy>(&b, 512 << 10).ok())
                else {
                    continue;
                };
                let policy = &record.policy;
                let users: Vec<&str> = policy.basic_auth.iter().map(|u| u.user.as_str()).collect();
                let headers: Vec<&str> = policy.require_headers.iter().map(|h| h.name.as_str()).collect();
                let value = serde_json::json!({
                    "id": id, "pattern": record.pattern, "allow_cidrs": policy.allow_cidrs,
                    "deny_cidrs": policy.deny_cidrs, "require_headers": headers, "basic_auth_users": users,
                });
                let text = format!(
                    "{id}  {}  allow={} deny={} headers={} users={}",
                    record.pattern,
                    policy.allow_cidrs.join(","),
                    policy.deny_cidrs.join(","),
                    headers.join(","),
                    users.join(",")
                );
                print(json, &value, &text);
            }
        }
        PolicyCommand::Remove { id } => {
            if store.get(operator_key(&id)).await.map_err(|e| ("unavailable", e.to_string()))?.is_none() {
                return Err(("unknown_policy", format!("no policy {id}")));
            }
            store.delete(operator_key(&id)).await.map_err(|e| ("unavailable", e.to_string()))?;
            print(json, &serde_json::json!({ "event": "policy_removed", "id": id }), &format!("policy {id} removed"));
        }
    }
    Ok(())
}
