//! Connecting to NATS.

use std::time::Duration;

/// Why NATS could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to NATS at {url}: {source}")]
pub struct ConnectError {
    url: String,
    #[source]
    source: async_nats::ConnectError,
}

/// Connects to `url` (comma-separated list) as `name`, with replies under `inbox_prefix`, and
/// logs connection events. A `user:password@` in the first URL authenticates (async-nats does not
/// read it from the URL by itself).
///
/// # Errors
/// [`ConnectError`] when no server answers within the connection timeout.
pub async fn connect(url: &str, name: &str, inbox_prefix: &str) -> Result<async_nats::Client, ConnectError> {
    let servers: Vec<&str> = url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let mut options = async_nats::ConnectOptions::new();
    let first = servers.first().and_then(|server| server.parse::<async_nats::ServerAddr>().ok());
    if let Some((user, password)) = first.as_ref().and_then(|addr| Some((addr.username()?, addr.password()?))) {
        options = options.user_and_password(user.to_owned(), password.to_owned());
    }
    options
        .name(name)
        .custom_inbox_prefix(inbox_prefix)
        .ping_interval(Duration::from_secs(10))
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("nats connected"),
                async_nats::Event::SlowConsumer(_) => metrics::counter!("nats_slow_consumer_total").increment(1),
                async_nats::Event::Draining | async_nats::Event::Closed => tracing::info!(event = %event, "nats event"),
                other => tracing::warn!(event = %other, "nats event"),
            }
        })
        .connect(servers)
        .await
        .map_err(|source| ConnectError { url: crate::config::redact_url(url), source })
}

/// Longest delay between reconnection attempts: a server that comes back is reached within it
/// (async-nats waits up to 4 s by default).
const MOST_RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// Delay before reconnection attempt `attempts`: none for the first, then 10 ms doubling up to
/// [`MOST_RECONNECT_DELAY`]. async-nats adds no jitter of its own; a few services per node
/// reconnecting in step cost the server little.
fn reconnect_delay(attempts: usize) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX).min(16);
    if attempts <= 1 {
        Duration::ZERO
    } else {
        (Duration::from_millis(10) * (1 << doublings)).min(MOST_RECONNECT_DELAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_at_once_then_at_most_every_half_second() {
        let delays: Vec<u128> = [1, 2, 3, 6, 7, 100, usize::MAX].map(|a| reconnect_delay(a).as_millis()).to_vec();
        assert_eq!(delays, [0, 20, 40, 320, 500, 500, 500]);
    }
}
