//! How long each kind of data is kept, applied to its JetStream stream at start and checked
//! while the service runs.
//!
//! A service that owns a stream (the session-host `RECORDINGS`, the auditor `AUDIT` and the usage
//! bucket's `KV_tunnel_usage`) creates it with its settings, then [`reconcile`]s an existing one:
//! when its retention differs it is updated (idempotent: nothing is sent when it matches), and
//! read back. What still differs (the server refused the update, the component's user may not
//! update that stream, or the server changed a value) is reported: an error in the log and the
//! gauge `jetstream_settings_drift{stream}` at 1. [`watch`] reads the settings again every
//! [`CHECK_INTERVAL`], so a change made behind the service's back is reported too.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

/// Time between two checks of a stream's settings by [`watch`].
pub const CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// Gauge: 1 while a stream's settings differ from the configured ones, 0 once they match.
pub const DRIFT_GAUGE: &str = "jetstream_settings_drift";

/// The settings of a stream that decide what is kept, and what may be removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Age after which messages are removed (zero: never).
    pub max_age: Duration,
    /// Bytes the stream keeps, oldest removed first (-1: no limit).
    pub max_bytes: i64,
    /// Single messages may not be deleted.
    pub deny_delete: bool,
    /// The stream may not be purged.
    pub deny_purge: bool,
}

impl Retention {
    /// The retention part of `config` (a byte limit of 0, which the server reads as none, is
    /// -1).
    pub fn of(config: &stream::Config) -> Self {
        Self {
            max_age: config.max_age,
            max_bytes: if config.max_bytes > 0 { config.max_bytes } else { -1 },
            deny_delete: config.deny_delete,
            deny_purge: config.deny_purge,
        }
    }

    /// `config` with this retention.
    fn applied_to(self, mut config: stream::Config) -> stream::Config {
        config.max_age = self.max_age;
        config.max_bytes = self.max_bytes;
        config.deny_delete = self.deny_delete;
        config.deny_purge = self.deny_purge;
        config
    }
}

/// Updates stream `name` to `wanted` when its retention differs, reads it back and reports what
/// still differs. Never fails: a stream that cannot be brought in line is used as it is.
///
/// Returns whether the stream now has the wanted retention.
pub async fn reconcile(js: &jetstream::Context, name: &str, wanted: Retention) -> bool {
    let actual = match js.get_stream(name).await {
        Ok(mut stream) => match stream.info().await {
            Ok(info) => info.config.clone(),
            Err(e) => return report_unknown(name, &e.to_string()),
        },
        Err(e) => return report_unknown(name, &e.to_string()),
    };
    if Retention::of(&actual) == wanted {
        return report(name, wanted, Retention::of(&actual));
    }
    tracing::info!(stream = name, from = ?Retention::of(&actual), to = ?wanted, "applying the configured retention");
    let now = match js.update_stream(wanted.applied_to(actual.clone())).await {
        Ok(info) => Retention::of(&info.config),
        Err(e) => {
            tracing::error!(
                stream = name,
                error = %e,
                "cannot apply the configured retention (may this user update the stream?); it is used as it is"
            );
            Retention::of(&actual)
        }
    };
    report(name, wanted, now)
}

/// Checks stream `name` against `wanted` every [`CHECK_INTERVAL`], for the life of the runtime,
/// reporting a change (it does not undo it: a change by the operator may be meant; the next
/// start applies the configuration again).
pub async fn watch(js: jetstream::Context, name: String, wanted: Retention) {
    loop {
        tokio::time::sleep(CHECK_INTERVAL).await;
        let actual = match js.get_stream(&name).await {
            Ok(mut stream) => stream.info().await.map(|info| Retention::of(&info.config)),
            Err(e) => {
                tracing::debug!(stream = %name, error = %e, "stream settings not checked");
                continue;
            }
        };
        if let Ok(actual) = actual {
            report(&name, wanted, actual);
        }
    }
}

fn report(name: &str, wanted: Retention, actual: Retention) -> bool {
    let matches = wanted == actual;
    metrics::gauge!(DRIFT_GAUGE, "stream" => name.to_owned()).set(if matches { 0.0 } else { 1.0 });
    if !matches {
        tracing::error!(stream = name, wanted = ?wanted, actual = ?actual, "the stream's retention differs from the configuration");
    }
    matches
}

fn report_unknown(name: &str, error: &str) -> bool {
    tracing::warn!(stream = name, error, "stream settings could not be read");
    false
}
