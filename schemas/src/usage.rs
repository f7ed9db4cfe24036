//! Usage counters and quotas, kept by the auditor from the `AUDIT` stream.
//!
//! - [`USAGE_BUCKET`]: one [`UsageCounter`] per scope (a tunnel or an account) and period
//!   (minute, hour, day, month, in UTC), under [`usage_key`]. Each counter keeps the stream
//!   sequence of the last audit message applied to it, so that a redelivered message is never
//!   counted twice.
//! - [`QUOTAS_BUCKET`]: the operator's [`QuotaLimits`] per scope, under [`Scope::key`]
//!   (`tunnel admin quota set`); the auditor's configuration gives the defaults.
//! - [`QUOTA_STATE_BUCKET`]: a [`QuotaState`] per scope at 80 % of a limit or over it, written by
//!   the auditor and watched by every ingress (which refuses an exceeded scope's requests with 429
//!   `quota_exceeded` until the period ends) and every session-host (which tells its clients).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// KV bucket of usage counters: [`usage_key`] → [`UsageCounter`].
pub const USAGE_BUCKET: &str = "tunnel_usage";
/// KV bucket of quota limits: [`Scope::key`] → [`QuotaLimits`].
pub const QUOTAS_BUCKET: &str = "tunnel_quotas";
/// KV bucket of quotas near or over their limit: [`Scope::key`] → [`QuotaState`].
pub const QUOTA_STATE_BUCKET: &str = "tunnel_quota_state";

/// Share of a limit at which the client is warned, in percent.
pub const WARN_PERCENT: u64 = 80;

/// Whose usage: one tunnel's, or all the tunnels of an account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    /// A tunnel, by name.
    Tunnel(String),
    /// An account, by name.
    Account(String),
}

impl Scope {
    /// KV key of the scope: `t.<name>` or `a.<account>`.
    pub fn key(&self) -> String {
        match self {
            Self::Tunnel(name) => format!("t.{name}"),
            Self::Account(account) => format!("a.{account}"),
        }
    }

    /// The scope a [`Scope::key`] names.
    pub fn from_key(key: &str) -> Option<Self> {
        let (kind, id) = key.split_once('.')?;
        if id.is_empty() || id.contains('.') {
            return None;
        }
        match kind {
            "t" => Some(Self::Tunnel(id.to_owned())),
            "a" => Some(Self::Account(id.to_owned())),
            _ => None,
        }
    }
}

/// A counting period. Periods are aligned in UTC; the length of a "minute" may be shortened by
/// configuration (for tests), the others are calendar hours, days and months.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// A minute (or the configured short period).
    Minute,
    /// An hour.
    Hour,
    /// A day, midnight to midnight UTC.
    Day,
    /// A calendar month, UTC.
    Month,
}

impl Period {
    /// Every period, shortest first.
    pub const ALL: [Self; 4] = [Self::Minute, Self::Hour, Self::Day, Self::Month];

    /// The name used in keys, flags and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    /// The period named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|period| period.as_str() == name)
    }

    /// The start of the period holding `at_ms` (Unix milliseconds), a minute lasting `minute_ms`.
    pub fn start(self, at_ms: u64, minute_ms: u64) -> u64 {
        match self {
            Self::Minute => at_ms - at_ms % minute_ms.max(1),
            Self::Hour => at_ms - at_ms % HOUR_MS,
            Self::Day => at_ms - at_ms % DAY_MS,
            Self::Month => {
                let (year, month, _) = civil_from_days(at_ms / DAY_MS);
                days_from_civil(year, month, 1) * DAY_MS
            }
        }
    }

    /// The end (exclusive) of the period starting at `start_ms`.
    pub fn end(self, start_ms: u64, minute_ms: u64) -> u64 {
        match self {
            Self::Minute => start_ms + minute_ms.max(1),
            Self::Hour => start_ms + HOUR_MS,
            Self::Day => start_ms + DAY_MS,
            Self::Month => {
                let (year, month, _) = civil_from_days(start_ms / DAY_MS);
                let (year, month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
                days_from_civil(year, month, 1) * DAY_MS
            }
        }
    }
}

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 86_400_000;

/// KV key of the counter of `scope` for the `period` starting at `start_ms`:
/// `<scope key>.<period>.<start_ms>`.
pub fn usage_key(scope: &Scope, period: Period, start_ms: u64) -> String {
    format!("{}.{}.{start_ms}", scope.key(), period.as_str())
}

/// What a scope used in one period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageCounter {
    /// Public requests that reached the tunnel's client (replays excluded).
    pub requests: u64,
    /// Bytes received from public clients: request heads and bodies.
    pub bytes_in: u64,
    /// Bytes sent to public clients: response heads and bodies.
    pub bytes_out: u64,
    /// Requests refused or failed, by error code (`upstream_unreachable`, `quota_exceeded`, …).
    #[serde(default)]
    pub refused: BTreeMap<String, u64>,
    /// Replayed requests (`tunnel replay`, marked `X-Replay-Of`), counted apart.
    #[serde(default)]
    pub replay_requests: u64,
    /// Bytes in and out of replayed requests.
    #[serde(default)]
    pub replay_bytes: u64,
    /// Stream sequence of the last audit message applied: a message at or below it is not
    /// applied again.
    pub last_seq: u64,
}

/// Limits of a scope; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaLimits {
    /// Requests per minute (or the configured short period).
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    /// Requests per day.
    #[serde(default)]
    pub requests_per_day: Option<u64>,
    /// Bytes in and out per day.
    #[serde(default)]
    pub bytes_per_day: Option<u64>,
    /// Bytes in and out per month.
    #[serde(default)]
    pub bytes_per_month: Option<u64>,
}

/// One limit of [`QuotaLimits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quota {
    /// [`QuotaLimits::requests_per_minute`].
    RequestsPerMinute,
    /// [`QuotaLimits::requests_per_day`].
    RequestsPerDay,
    /// [`QuotaLimits::bytes_per_day`].
    BytesPerDay,
    /// [`QuotaLimits::bytes_per_month`].
    BytesPerMonth,
}

impl Quota {
    /// Every quota.
    pub const ALL: [Self; 4] = [Self::RequestsPerMinute, Self::RequestsPerDay, Self::BytesPerDay, Self::BytesPerMonth];

    /// The period it is counted over.
    pub fn period(self) -> Period {
        match self {
            Self::RequestsPerMinute => Period::Minute,
            Self::RequestsPerDay | Self::BytesPerDay => Period::Day,
            Self::BytesPerMonth => Period::Month,
        }
    }

    /// Its limit in `limits`.
    pub fn limit(self, limits: &QuotaLimits) -> Option<u64> {
        match self {
            Self::RequestsPerMinute => limits.requests_per_minute,
            Self::RequestsPerDay => limits.requests_per_day,
            Self::BytesPerDay => limits.bytes_per_day,
            Self::BytesPerMonth => limits.bytes_per_month,
        }
    }

    /// What of `counter` it limits: requests, or bytes in and out (replays excluded).
    pub fn used(self, counter: &UsageCounter) -> u64 {
        match self {
            Self::RequestsPerMinute | Self::RequestsPerDay => counter.requests,
            Self::BytesPerDay | Self::BytesPerMonth => counter.bytes_in + counter.bytes_out,
        }
    }

    /// The name used in flags and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequestsPerMinute => "requests_per_minute",
            Self::RequestsPerDay => "requests_per_day",
            Self::BytesPerDay => "bytes_per_day",
            Self::BytesPerMonth => "bytes_per_month",
        }
    }
}

/// How close a scope is to a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaLevel {
    /// At or over [`WARN_PERCENT`] of the limit: the client is told.
    Warning,
    /// Over the limit: new requests are refused until `until_ms`.
    Exceeded,
}

/// A scope near or over one of its limits, until the end of the period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaState {
    /// The scope.
    pub scope: Scope,
    /// The limit concerned (the one exceeded, else the nearest).
    pub quota: Quota,
    /// Warning or exceeded.
    pub level: QuotaLevel,
    /// What was used in the period so far.
    pub used: u64,
    /// The limit.
    pub limit: u64,
    /// End of the period (Unix milliseconds): the state lapses then.
    pub until_ms: u64,
}

impl QuotaState {
    /// Whether it refuses requests at `now_ms`.
    pub fn blocks(&self, now_ms: u64) -> bool {
        self.level == QuotaLevel::Exceeded && now_ms < self.until_ms
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    u64::try_from(era * 146_097 + day_of_era - 719_468).unwrap_or(0)
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(days: u64) -> (i64, u32, u32) {
    let z = i64::try_from(days).unwrap_or(i64::MAX / 2) + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = u32::try_from(day_of_year - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_align_in_utc_and_months_have_their_lengths() {
        // 2026-11-30T19:05:31.250Z
        let at = 1_796_065_531_250;
        assert_eq!(Period::Minute.start(at, 60_000), 1_796_065_500_000);
        assert_eq!(Period::Minute.start(at, 5_000), 1_796_065_530_000, "a shortened minute");
        assert_eq!(Period::Hour.start(at, 60_000), 1_796_065_200_000);
        assert_eq!(Period::Day.start(at, 60_000), 1_795_996_800_000);
        let november = Period::Month.start(at, 60_000);
        assert_eq!(november, 1_793_491_200_000, "2026-11-01T00:00:00Z");
        assert_eq!(Period::Month.end(november, 60_000), 1_796_083_200_000, "2026-12-01T00:00:00Z");
        let december = Period::Month.end(november, 60_000);
        assert_eq!(Period::Month.end(december, 60_000), 1_798_761_600_000, "2027-01-01T00:00:00Z");
        let february_2028 = days_from_civil(2028, 2, 1) * DAY_MS;
        assert_eq!(Period::Month.end(february_2028, 60_000) - february_2028, 29 * DAY_MS, "a leap year");
        for days in [0, 59, 365, 10_957, 20_000, 40_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn keys_name_scope_period_and_start() {
        let scope = Scope::Tunnel("demo".into());
        assert_eq!(usage_key(&scope, Period::Day, 1_796_000_000_000), "t.demo.day.1796000000000");
        assert_eq!(Scope::from_key("a.acme"), Some(Scope::Account("acme".into())));
        assert_eq!(Scope::from_key("t.demo.day"), None);
        assert_eq!(Scope::from_key("x.demo"), None);
        assert_eq!(Period::parse("month"), Some(Period::Month));
    }
}
