//! What a trail query selects: a time range, a method, a status or class, a path glob, a
//! request id. The same filter reads audit records and recorded exchanges, from JetStream or
//! from a file, and travels to the session-host as a query string.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, UNIX_EPOCH};

use tunnel_schemas::audit::RequestAudit;
use tunnel_schemas::record::ExchangeRecord;

/// Why a filter could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// A time is neither RFC 3339, a duration ago (`5m`), nor unix milliseconds.
    #[error("invalid time {0:?}: use RFC 3339 (2026-11-30T10:00:00Z), a duration ago (90s, 5m, 2h) or unix ms")]
    Time(String),
    /// A status is neither a code (`404`) nor a class (`5xx`).
    #[error("invalid status {0:?}: use a code such as 404 or a class such as 5xx")]
    Status(String),
    /// A query-string key this filter does not know.
    #[error("unknown filter {0:?}")]
    Unknown(String),
}

/// A status code or a class of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// Exactly this code.
    Code(u16),
    /// Codes `N00`..=`N99` (`5xx`).
    Class(u16),
}

impl StatusFilter {
    /// Whether `status` is selected.
    pub fn matches(self, status: u16) -> bool {
        match self {
            Self::Code(code) => status == code,
            Self::Class(class) => status / 100 == class,
        }
    }
}

impl FromStr for StatusFilter {
    type Err = FilterError;

    fn from_str(text: &str) -> Result<Self, FilterError> {
        let invalid = || FilterError::Status(text.to_owned());
        let lower = text.to_ascii_lowercase();
        if let Some(class) = lower.strip_suffix("xx") {
            let class: u16 = class.parse().map_err(|_| invalid())?;
            return (1..=5).contains(&class).then_some(Self::Class(class)).ok_or_else(invalid);
        }
        let code: u16 = lower.parse().map_err(|_| invalid())?;
        (100..=999).contains(&code).then_some(Self::Code(code)).ok_or_else(invalid)
    }
}

impl fmt::Display for StatusFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code(code) => write!(f, "{code}"),
            Self::Class(class) => write!(f, "{class}xx"),
        }
    }
}

pub use tunnel_schemas::pattern::Glob;

/// The selection of a trail query. Empty selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Events logged at or after this unix time in milliseconds.
    pub since_ms: Option<u64>,
    /// Events logged at or before this unix time in milliseconds.
    pub until_ms: Option<u64>,
    /// Method, case-insensitive.
    pub method: Option<String>,
    /// Status code or class.
    pub status: Option<StatusFilter>,
    /// Path pattern (the query string is not part of the path).
    pub path: Option<Glob>,
    /// Exactly these request ids, when not empty.
    pub request_ids: Vec<String>,
}

impl Filter {
    /// Whether the audit record is selected (its log time is checked by the reader).
    pub fn matches_audit(&self, record: &RequestAudit) -> bool {
        self.matches(&record.method, &record.path, Some(record.status), &record.request_id)
    }

    /// Whether the recorded exchange is selected (its log time is checked by the reader).
    pub fn matches_exchange(&self, record: &ExchangeRecord) -> bool {
        let path = record.request.target.split('?').next().unwrap_or_default();
        let status = record.response.as_ref().map(|response| response.status);
        self.matches(&record.request.method, path, status, &record.request_id)
    }

    fn matches(&self, method: &str, path: &str, status: Option<u16>, request_id: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self.status.is_none_or(|s| status.is_some_and(|status| s.matches(status)))
            && self.path.as_ref().is_none_or(|glob| glob.matches(path))
            && (self.request_ids.is_empty() || self.request_ids.iter().any(|id| id == request_id))
    }

    /// Whether the filter selects by request (method, status, path, id): then session events,
    /// which belong to no request, are left out.
    pub fn selects_requests(&self) -> bool {
        self.method.is_some() || self.status.is_some() || self.path.is_some() || !self.request_ids.is_empty()
    }

    /// Whether a time of logging (unix ms) lies in the range.
    pub fn in_range(&self, logged_ms: u64) -> bool {
        self.since_ms.is_none_or(|since| logged_ms >= since) && self.until_ms.is_none_or(|until| logged_ms <= until)
    }

    /// The filter as query-string pairs, read back by [`Filter::from_pairs`].
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        pairs.extend(self.since_ms.map(|ms| ("since", ms.to_string())));
        pairs.extend(self.until_ms.map(|ms| ("until", ms.to_string())));
        pairs.extend(self.method.clone().map(|m| ("method", m)));
        pairs.extend(self.status.map(|s| ("status", s.to_string())));
        pairs.extend(self.path.as_ref().map(|p| ("path", p.0.clone())));
        pairs.extend(self.request_ids.iter().map(|id| ("request_id", id.clone())));
        pairs
    }

    /// The filter as `key=value` pairs joined by `&`, for people (`status=5xx&since=…`); empty
    /// when it selects everything.
    pub fn describe(&self) -> String {
        self.to_pairs().iter().map(|(key, value)| format!("{key}={value}")).collect::<Vec<_>>().join("&")
    }

    /// Reads the pairs of [`Filter::to_pairs`]; `now_ms` anchors relative times.
    ///
    /// # Errors
    /// [`FilterError`] naming the first bad value or unknown key.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        now_ms: u64,
    ) -> Result<Self, FilterError> {
        let mut filter = Self::default();
        for (key, value) in pairs {
            match key {
                "since" => filter.since_ms = Some(parse_time(value, now_ms)?),
                "until" => filter.until_ms = Some(parse_time(value, now_ms)?),
                "method" => filter.method = Some(value.to_owned()),
                "status" => filter.status = Some(value.parse()?),
                "path" => filter.path = Some(Glob(value.to_owned())),
                "request_id" => filter.request_ids.push(value.to_owned()),
                other => return Err(FilterError::Unknown(other.to_owned())),
            }
        }
        Ok(filter)
    }
}

/// Reads a time: RFC 3339 (`2026-11-30T10:00:00Z`), a duration ago (`90s`, `5m`, `1h30m`), or
/// unix milliseconds.
///
/// # Errors
/// [`FilterError::Time`] when it is none of them.
pub fn parse_time(text: &str, now_ms: u64) -> Result<u64, FilterError> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(now_ms.saturating_sub(u64::try_from(ago.as_millis()).unwrap_or(u64::MAX)));
    }
    humantime::parse_rfc3339_weak(text)
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
        .ok_or_else(|| FilterError::Time(text.to_owned()))
}

pub use tunnel_schemas::now_ms;

/// A unix time in milliseconds as RFC 3339 with milliseconds, UTC; a time RFC 3339 cannot
/// write (after the year 9999, as a peer may send) as its milliseconds.
pub fn format_ms(ms: u64) -> String {
    use std::fmt::Write;
    let mut text = String::new();
    match UNIX_EPOCH.checked_add(Duration::from_millis(ms)) {
        Some(time) if write!(text, "{}", humantime::format_rfc3339_millis(time)).is_ok() => text,
        _ => format!("unix {ms} ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_any_time_without_panicking() {
        assert_eq!(format_ms(1_000), "1970-01-01T00:00:01.000Z");
        assert_eq!(format_ms(u64::MAX), format!("unix {} ms", u64::MAX));
    }

    #[test]
    fn statuses_and_classes() {
        assert_eq!("5xx".parse(), Ok(StatusFilter::Class(5)));
        assert_eq!("404".parse(), Ok(StatusFilter::Code(404)));
        assert!("6xx".parse::<StatusFilter>().is_err());
        assert!("abc".parse::<StatusFilter>().is_err());
        assert!(StatusFilter::Class(5).matches(503));
        assert!(!StatusFilter::Class(5).matches(404));
    }

    #[test]
    fn times_in_three_forms() {
        assert_eq!(parse_time("1700000000000", 0), Ok(1_700_000_000_000));
        assert_eq!(parse_time("5m", 600_000), Ok(300_000));
        assert_eq!(parse_time("1970-01-01T00:00:01Z", 0), Ok(1000));
        assert!(parse_time("yesterday-ish", 0).is_err());
        assert_eq!(format_ms(1500), "1970-01-01T00:00:01.500Z");
    }

    #[test]
    fn filters_travel_as_pairs() {
        let filter = Filter {
            since_ms: Some(1),
            until_ms: Some(2),
            method: Some("POST".into()),
            status: Some(StatusFilter::Class(4)),
            path: Some(Glob("/hooks/*".into())),
            request_ids: vec!["a".into(), "b".into()],
        };
        let pairs = filter.to_pairs();
        let read = Filter::from_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())), 0).expect("valid");
        assert_eq!(read, filter);
        assert_eq!(Filter::from_pairs([("colour", "red")], 0), Err(FilterError::Unknown("colour".into())));
    }
}
