//! `tunnel admin`: the operator's accounts, tokens, reserved names, policies and quotas, straight in JetStream KV (NATS
//! credentials needed). A token is printed once, when it is created; only its hash is stored.

use std::process::ExitCode;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use tunnel_schemas::names::TunnelName;
use tunnel_schemas::policy::POLICIES_BUCKET;
use tunnel_schemas::tokens::{
    ACCOUNTS_BUCKET, AccountRecord, RESERVATIONS_BUCKET, ReservationRecord, TOKENS_BUCKET, Token, TokenRecord,
    account_key, hash_secret, reservation_key, token_key, valid_account,
};
use tunnel_schemas::usage::{QUOTA_STATE_BUCKET, QUOTAS_BUCKET};
use tunnel_trail::filter::now_ms;

use super::fail;

/// Flags of `tunnel admin`.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// NATS URL with the operator's credentials (`nats://admin:password@host:4222`).
    #[arg(long, value_name = "NATS_URL", env = "TUNNEL_NATS_URL", hide_env_values = true)]
    nats: String,
    /// TLS to NATS.
    #[command(flatten)]
    nats_tls: tunnel_kit::nats::NatsTls,
    /// Replicas of the buckets when they are created (3 on a cluster).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    #[command(subcommand)]
    command: AdminCommand,
}

/// What to administer.
#[derive(Debug, clap::Subcommand)]
enum AdminCommand {
    /// The commands on the admission buckets.
    #[command(flatten)]
    Buckets(BucketCommand),
    /// The system as NATS sees it: servers, streams and consumers with their lag, the running
    /// ingresses, session-hosts (with their sessions) and auditors, the leased tunnels.
    Status,
    /// Erases recorded exchanges (a deletion request): by tunnel, account, request id or time;
    /// the erasure is itself put on record in the audit log.
    Erase(super::erase::EraseArgs),
}

/// The commands that read and write the admission buckets (opened, and created when missing,
/// before any of them runs).
#[derive(Debug, clap::Subcommand)]
enum BucketCommand {
    /// Accounts.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Tokens of accounts.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Tunnel names reserved by accounts.
    #[command(subcommand)]
    Name(NameCommand),
    /// Operator policies: who on the public side may reach the tunnels whose names match.
    #[command(subcommand)]
    Policy(super::policy::PolicyCommand),
    /// Quotas: limits of requests and bytes per tunnel or account, in force within 2 s.
    #[command(subcommand)]
    Quota(super::quota::QuotaCommand),
}

#[derive(Debug, clap::Subcommand)]
enum NameCommand {
    /// Reserves a tunnel name for an account: its tokens alone may bind it, and its client takes
    /// it back at once after a crash.
    Reserve {
        /// The tunnel name.
        name: String,
        /// The account.
        account: String,
    },
    /// Lists the reserved names and their accounts.
    List,
    /// Ends a reservation.
    Release {
        /// The tunnel name.
        name: String,
    },
}

#[derive(Debug, clap::Subcommand)]
enum AccountCommand {
    /// Creates an account.
    Create {
        /// Its name: 1–63 of a-z 0-9 - _.
        name: String,
    },
    /// Lists the accounts.
    List,
    /// Deletes an account and revokes its tokens (their sessions close at once).
    Delete {
        /// The account.
        name: String,
    },
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Creates a token for an account and prints it, once.
    Create {
        /// The account.
        account: String,
        /// A tunnel name (or pattern, `*-acme`) the token may bind; repeat for several; none for any.
        #[arg(long = "name", value_name = "PATTERN")]
        names: Vec<String>,
    },
    /// Lists tokens (ids, accounts, names; never secrets).
    List {
        /// Only this account's.
        account: Option<String>,
    },
    /// Revokes a token: its live sessions close on every host.
    Revoke {
        /// The token's id (`tunnel admin token list`).
        id: String,
    },
}

/// Why an admin command failed: its code and message.
pub type Refusal = (&'static str, String);

/// Runs `tunnel admin`.
pub async fn run(args: AdminArgs, json: bool) -> ExitCode {
    match admin(args, json).await {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => fail(json, code, &message),
    }
}

async fn admin(args: AdminArgs, json: bool) -> Result<(), Refusal> {
    let nats = crate::trail::operator_nats(&args.nats, &args.nats_tls, "tunnel-admin")
        .await
        .map_err(|e| ("unavailable", e.to_string()))?;
    let js = jetstream::new(nats.clone());
    let command = match args.command {
        AdminCommand::Erase(erase) => return super::erase::admin(&js, &args.nats, erase, json).await,
        AdminCommand::Status => return super::status::show(&nats, &js, json).await,
        AdminCommand::Buckets(command) => command,
    };
    let accounts = bucket(&js, ACCOUNTS_BUCKET, args.replicas).await?;
    let tokens = bucket(&js, TOKENS_BUCKET, args.replicas).await?;
    let reservations = bucket(&js, RESERVATIONS_BUCKET, args.replicas).await?;
    match command {
        BucketCommand::Account(AccountCommand::Create { name }) => {
            if !valid_account(&name) {
                return Err(("invalid_arguments", format!("account {name:?}: use 1-63 of a-z 0-9 - _")));
            }
            let record = tunnel_schemas::encode(&AccountRecord { created_ms: now_ms() });
            accounts.create(account_key(&name), record.into()).await.map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => ("already_exists", format!("account {name} exists")),
                _ => ("unavailable", e.to_string()),
            })?;
            print(
                json,
                &serde_json::json!({ "event": "account_created", "account": name }),
                &format!("account {name} created"),
            );
        }
        BucketCommand::Account(AccountCommand::List) => {
            for name in keys(&accounts, "a.").await? {
                print(json, &serde_json::json!({ "account": name }), &name);
            }
        }
        BucketCommand::Account(AccountCommand::Delete { name }) => {
            let revoked = token_records(&tokens).await?.into_iter().filter(|(_, record)| record.account == name);
            let mut count = 0;
            for (id, _) in revoked {
                tokens.delete(token_key(&id)).await.map_err(|e| ("unavailable", e.to_string()))?;
                count += 1;
            }
            accounts.delete(account_key(&name)).await.map_err(|e| ("unavailable", e.to_string()))?;
            let text = format!("account {name} deleted, {count} tokens revoked");
            print(
                json,
                &serde_json::json!({ "event": "account_deleted", "account": name, "tokens_revoked": count }),
                &text,
            );
        }
        BucketCommand::Token(TokenCommand::Create { account, names }) => {
            if accounts.get(account_key(&account)).await.map_err(|e| ("unavailable", e.to_string()))?.is_none() {
                return Err((
                    "unknown_account",
                    format!("no account {account}: tunnel admin account create {account}"),
                ));
            }
            let token = Token::generate();
            let record = TokenRecord {
                account: account.clone(),
                secret_hash: hash_secret(&token.secret),
                names: names.clone(),
                created_ms: now_ms(),
            };
            tokens
                .create(token_key(&token.id), tunnel_schemas::encode(&record).into())
                .await
                .map_err(|e| ("unavailable", e.to_string()))?;
            let revealed = token.reveal();
            let value = serde_json::json!({ "event": "token_created", "id": token.id, "account": account, "names": names, "token": revealed });
            let text = format!("token {} for {account} (shown once; keep it secret):\n{revealed}", token.id);
            print(json, &value, &text);
        }
        BucketCommand::Token(TokenCommand::List { account }) => {
            for (id, record) in token_records(&tokens).await? {
                if account.as_ref().is_some_and(|account| *account != record.account) {
                    continue;
                }
                let names = if record.names.is_empty() { "*".to_owned() } else { record.names.join(",") };
                let value = serde_json::json!({ "id": id, "account": record.account, "names": record.names, "created_ms": record.created_ms });
                print(json, &value, &format!("{id}  {:<20} {names}", record.account));
            }
        }
        BucketCommand::Name(NameCommand::Reserve { name, account }) => {
            let name = TunnelName::parse(&name).map_err(|e| ("invalid_arguments", e.to_string()))?;
            if accounts.get(account_key(&account)).await.map_err(|e| ("unavailable", e.to_string()))?.is_none() {
                return Err(("unknown_account", format!("no account {account}")));
            }
            let record = tunnel_schemas::encode(&ReservationRecord { account: account.clone(), created_ms: now_ms() });
            reservations.create(reservation_key(name.as_str()), record.into()).await.map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => ("already_exists", format!("{name} is reserved already")),
                _ => ("unavailable", e.to_string()),
            })?;
            let value = serde_json::json!({ "event": "name_reserved", "name": name.as_str(), "account": account });
            print(json, &value, &format!("{name} reserved for {account}"));
        }
        BucketCommand::Name(NameCommand::List) => {
            for name in keys(&reservations, "r.").await? {
                let bytes =
                    reservations.get(reservation_key(&name)).await.map_err(|e| ("unavailable", e.to_string()))?;
                let Some(record) = bytes.and_then(|b| tunnel_schemas::decode::<ReservationRecord>(&b, 64 << 10).ok())
                else {
                    continue;
                };
                let value = serde_json::json!({ "name": name, "account": record.account });
                print(json, &value, &format!("{name}  {}", record.account));
            }
        }
        BucketCommand::Name(NameCommand::Release { name }) => {
            reservations.delete(reservation_key(&name)).await.map_err(|e| ("unavailable", e.to_string()))?;
            print(json, &serde_json::json!({ "event": "name_released", "name": name }), &format!("{name} released"));
        }
        BucketCommand::Policy(command) => {
            let policies = bucket(&js, POLICIES_BUCKET, args.replicas).await?;
            super::policy::admin(&policies, command, json).await?;
        }
        BucketCommand::Quota(command) => {
            let quotas = bucket(&js, QUOTAS_BUCKET, args.replicas).await?;
            let states = bucket(&js, QUOTA_STATE_BUCKET, args.replicas).await?;
            super::quota::admin(&quotas, &states, command, json).await?;
        }
        BucketCommand::Token(TokenCommand::Revoke { id }) => {
            if tokens.get(token_key(&id)).await.map_err(|e| ("unavailable", e.to_string()))?.is_none() {
                return Err(("unknown_token", format!("no token {id}")));
            }
            tokens.delete(token_key(&id)).await.map_err(|e| ("unavailable", e.to_string()))?;
            print(json, &serde_json::json!({ "event": "token_revoked", "id": id }), &format!("token {id} revoked"));
        }
    }
    Ok(())
}

/// The bucket `name`, created when missing.
pub async fn bucket(js: &jetstream::Context, name: &str, replicas: usize) -> Result<kv::Store, Refusal> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    let config = kv::Config { bucket: name.into(), history: 1, num_replicas: replicas, ..Default::default() };
    js.create_key_value(config).await.map_err(|e| ("unavailable", format!("bucket {name}: {e}")))
}

/// The keys of `store` starting with `prefix`, without it.
pub async fn keys(store: &kv::Store, prefix: &str) -> Result<Vec<String>, Refusal> {
    let mut keys = store.keys().await.map_err(|e| ("unavailable", e.to_string()))?;
    let mut found = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| ("unavailable", e.to_string()))?;
        found.extend(key.strip_prefix(prefix).map(str::to_owned));
    }
    found.sort();
    Ok(found)
}

/// Every token's id and record.
async fn token_records(tokens: &kv::Store) -> Result<Vec<(String, TokenRecord)>, Refusal> {
    let mut records = Vec::new();
    for id in keys(tokens, "t.").await? {
        if let Some(bytes) = tokens.get(token_key(&id)).await.map_err(|e| ("unavailable", e.to_string()))? {
            let record = tunnel_schemas::decode(&bytes, 64 << 10).map_err(|e| ("invalid_record", e.to_string()))?;
            records.push((id, record));
        }
    }
    Ok(records)
}

/// Prints `value` as a JSON line, or `text`.
pub fn print(json: bool, value: &serde_json::Value, text: &str) {
    if json {
        println!("{value}");
    } else {
        println!("{text}");
    }
}
