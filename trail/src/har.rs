//! Export to and import from HAR 1.2 (<http://www.softwareishard.com/blog/har-12-spec/>).
//!
//! [`to_har`] writes a document browsers open, and keeps what HAR cannot say in custom fields
//! (names starting with `_`, which HAR allows): the raw target, ids, exact times, masking, and
//! base64 forms of bytes that are not UTF-8. [`from_har`] reads these back into identical
//! records, and reads a HAR written by a browser on a best-effort basis.

use bytes::Bytes;
use serde_json::{Value, json};
use tunnel_schemas::PROTOCOL_VERSION;
use tunnel_schemas::http::Header;
use tunnel_schemas::record::{ExchangeRecord, RecordedMessage, RecordedResponse};

use crate::json::{FormatError, decode_base64, encode_base64, header_text};

/// HTTP version written on every message: the tunnel speaks HTTP/1.1 to the local service.
const HTTP_VERSION: &str = "HTTP/1.1";
/// MIME type written when a message has no `content-type`.
const UNKNOWN_MIME: &str = "x-unknown";
/// Milliseconds in a day.
const MS_PER_DAY: u64 = 86_400_000;

/// The HAR 1.2 document of `records`, in order.
pub fn to_har(records: &[ExchangeRecord]) -> Value {
    let entries: Vec<Value> = records.iter().map(entry).collect();
    json!({"log": {
        "version": "1.2",
        "creator": {"name": "http-tunnel", "version": env!("CARGO_PKG_VERSION")},
        "entries": entries,
    }})
}

/// Reads the records of a HAR document: exactly those [`to_har`] wrote, or a browser's entries
/// with what can be derived (target and tunnel from the URL, times from `startedDateTime`, an
/// empty request id).
///
/// # Errors
///
/// [`FormatError::Json`] when `text` is not JSON, [`FormatError::Har`] when an entry lacks its
/// request, method or URL or has an unknown `_error`, [`FormatError::Base64`] when a base64 field
/// does not decode.
pub fn from_har(text: &str) -> Result<Vec<ExchangeRecord>, FormatError> {
    let document: Value = serde_json::from_str(text)?;
    let entries = document
        .pointer("/log/entries")
        .and_then(Value::as_array)
        .ok_or_else(|| FormatError::Har("no log.entries array".into()))?;
    entries.iter().enumerate().map(|(i, entry)| read_entry(entry, &format!("entries[{i}]"))).collect()
}

fn entry(record: &ExchangeRecord) -> Value {
    let receive_us = record.duration_us.saturating_sub(record.head_us);
    json!({
        "startedDateTime": format_time(record.at_ms), "time": ms(record.duration_us),
        "request": request(record), "response": record.response.as_ref().map_or_else(no_response, response),
        "cache": {}, "timings": {"send": 0, "wait": ms(record.head_us), "receive": ms(receive_us)},
        "_v": record.v, "_requestId": record.request_id, "_tunnel": record.tunnel, "_owner": record.owner,
        "_atMs": record.at_ms, "_headUs": record.head_us, "_durationUs": record.duration_us,
        "_error": record.error, "_upgraded": record.upgraded, "_masked": record.masked,
        "_replayOf": record.replay_of, "_account": record.account,
    })
}

fn request(record: &ExchangeRecord) -> Value {
    let message = &record.request;
    let host = find_header(&message.headers, "host").map_or_else(|| record.tunnel.clone(), header_text);
    let url = match message.target.as_str() {
        target if target.contains("://") => target.to_owned(),
        target if target.starts_with('/') => format!("http://{host}{target}"),
        target => format!("http://{host}/{target}"),
    };
    let mut value = json!({
        "method": message.method, "url": url, "httpVersion": HTTP_VERSION, "cookies": [],
        "headers": headers(&message.headers), "queryString": query_string(&message.target),
        "headersSize": -1, "bodySize": message.size, "_target": message.target,
    });
    if !message.body.is_empty() {
        let mut post_data = json!({"mimeType": mime(&message.headers)});
        put_text(&mut post_data, &message.body, "_encoding");
        value["postData"] = post_data;
    }
    if message.cut {
        value["_cut"] = json!(true);
    }
    value
}

fn response(response: &RecordedResponse) -> Value {
    let mut content = json!({"size": response.size, "mimeType": mime(&response.headers)});
    put_text(&mut content, &response.body, "encoding");
    let mut value = json!({
        "status": response.status, "statusText": "", "httpVersion": HTTP_VERSION, "cookies": [],
        "headers": headers(&response.headers), "content": content, "redirectURL": "",
        "headersSize": -1, "bodySize": response.size,
    });
    if response.cut {
        value["_cut"] = json!(true);
    }
    value
}

fn no_response() -> Value {
    json!({
        "status": 0, "statusText": "", "httpVersion": "", "cookies": [], "headers": [],
        "content": {"size": 0, "mimeType": UNKNOWN_MIME, "text": ""},
        "redirectURL": "", "headersSize": -1, "bodySize": -1, "_noResponse": true,
    })
}

/// Sets `text` to `bytes` as text, or as base64 with `encoding_field: "base64"`.
fn put_text(object: &mut Value, bytes: &[u8], encoding_field: &str) {
    match std::str::from_utf8(bytes) {
        Ok(text) => object["text"] = json!(text),
        Err(_) => {
            object["text"] = json!(encode_base64(bytes));
            object[encoding_field] = json!("base64");
        }
    }
}

fn mime(headers: &[Header]) -> String {
    find_header(headers, "content-type").map_or_else(|| UNKNOWN_MIME.into(), header_text)
}

fn headers(headers: &[Header]) -> Vec<Value> {
    let one = |Header(name, value): &Header| match std::str::from_utf8(value) {
        Ok(text) => json!({"name": name, "value": text}),
        Err(_) => json!({"name": name, "value": header_text(value), "_valueBase64": encode_base64(value)}),
    };
    headers.iter().map(one).collect()
}

fn find_header<'a>(headers: &'a [Header], name: &str) -> Option<&'a [u8]> {
    headers.iter().find(|h| h.0.eq_ignore_ascii_case(name)).map(|h| &h.1[..])
}

/// The query of `target` as name/value pairs, percent-decoded loosely (for display only).
fn query_string(target: &str) -> Vec<Value> {
    let Some((_, query)) = target.split_once('?') else { return Vec::new() };
    let pair = |pair: &str| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        json!({"name": percent_decode(name), "value": percent_decode(value)})
    };
    query.split('&').filter(|p| !p.is_empty()).map(pair).collect()
}

/// Decodes `%XX` and `+`; a `%` not followed by two hex digits stays as is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        match (bytes[i], hex) {
            (b'%', Some(hex)) => {
                let digit = |d: u8| char::from(d).to_digit(16).unwrap_or(0) as u8;
                out.push((digit(hex[0]) << 4) | digit(hex[1]));
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn read_entry(entry: &Value, at: &str) -> Result<ExchangeRecord, FormatError> {
    let missing = |what: &str| FormatError::Har(format!("{at}: no {what}"));
    let request = entry.get("request").ok_or_else(|| missing("request"))?;
    let method = str_of(request, "method").ok_or_else(|| missing("request.method"))?;
    let url = str_of(request, "url").ok_or_else(|| missing("request.url"))?;
    let (authority, url_target) = split_url(url);
    let headers = read_headers(request, &format!("{at}.request.headers"))?;
    let body = match request.get("postData") {
        Some(data) => read_text(data, "_encoding", &format!("{at}.request.postData.text"))?,
        None => Bytes::new(),
    };
    let response = read_response(entry.get("response"), &format!("{at}.response"))?;
    let error = match entry.get("_error") {
        None | Some(Value::Null) => None,
        Some(code) => Some(
            serde_json::from_value(code.clone())
                .map_err(|_| FormatError::Har(format!("{at}._error: unknown error code {code}")))?,
        ),
    };
    let status = response.as_ref().map_or(0, |r| r.status);
    Ok(ExchangeRecord {
        v: u64_of(entry, "_v").and_then(|v| u16::try_from(v).ok()).unwrap_or(PROTOCOL_VERSION),
        request_id: str_of(entry, "_requestId").unwrap_or_default().to_owned(),
        tunnel: str_of(entry, "_tunnel").map_or_else(|| first_label(authority), str::to_owned),
        owner: str_of(entry, "_owner").unwrap_or_default().to_owned(),
        account: str_of(entry, "_account").map(str::to_owned),
        at_ms: u64_of(entry, "_atMs").or_else(|| str_of(entry, "startedDateTime").and_then(parse_time)).unwrap_or(0),
        head_us: u64_of(entry, "_headUs").unwrap_or_else(|| head_from_timings(entry.get("timings"))),
        duration_us: u64_of(entry, "_durationUs").unwrap_or_else(|| us(entry.get("time"))),
        request: RecordedMessage {
            method: method.to_owned(),
            target: str_of(request, "_target").map_or(url_target, str::to_owned),
            headers,
            size: u64_of(request, "bodySize").unwrap_or(body.len() as u64),
            body,
            cut: request.get("_cut").and_then(Value::as_bool).unwrap_or(false),
        },
        response,
        error,
        upgraded: entry.get("_upgraded").and_then(Value::as_bool).unwrap_or(status == 101),
        masked: entry
            .get("_masked")
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default(),
        replay_of: str_of(entry, "_replayOf").map(str::to_owned),
    })
}

/// The response of an entry; `None` when marked `_noResponse` or of status 0 (a browser's
/// failed request).
fn read_response(response: Option<&Value>, at: &str) -> Result<Option<RecordedResponse>, FormatError> {
    let Some(response) = response else { return Ok(None) };
    let status = u64_of(response, "status").and_then(|s| u16::try_from(s).ok()).unwrap_or(0);
    if status == 0 || response.get("_noResponse").and_then(Value::as_bool) == Some(true) {
        return Ok(None);
    }
    let content = response.get("content");
    let body = match content {
        Some(content) => read_text(content, "encoding", &format!("{at}.content.text"))?,
        None => Bytes::new(),
    };
    let size = content.and_then(|c| u64_of(c, "size")).or_else(|| u64_of(response, "bodySize"));
    Ok(Some(RecordedResponse {
        status,
        headers: read_headers(response, &format!("{at}.headers"))?,
        size: size.unwrap_or(body.len() as u64),
        body,
        cut: response.get("_cut").and_then(Value::as_bool).unwrap_or(false),
    }))
}

/// The `text` of a postData or content object, base64-decoded when `encoding_field` says so.
fn read_text(object: &Value, encoding_field: &str, at: &str) -> Result<Bytes, FormatError> {
    let text = str_of(object, "text").unwrap_or_default();
    match str_of(object, encoding_field) {
        Some("base64") => decode_base64(at, text),
        _ => Ok(Bytes::copy_from_slice(text.as_bytes())),
    }
}

/// Headers with lowercase names, `_valueBase64` preferred; HTTP/2 pseudo-headers are skipped.
fn read_headers(message: &Value, at: &str) -> Result<Vec<Header>, FormatError> {
    let Some(headers) = message.get("headers").and_then(Value::as_array) else { return Ok(Vec::new()) };
    let mut out = Vec::with_capacity(headers.len());
    for (i, header) in headers.iter().enumerate() {
        let name = str_of(header, "name").unwrap_or_default();
        if name.is_empty() || name.starts_with(':') {
            continue;
        }
        let value = match str_of(header, "_valueBase64") {
            Some(base64) => decode_base64(&format!("{at}[{i}]._valueBase64"), base64)?,
            None => Bytes::copy_from_slice(str_of(header, "value").unwrap_or_default().as_bytes()),
        };
        out.push(Header(name.to_ascii_lowercase(), value));
    }
    Ok(out)
}

fn str_of<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get(field).and_then(Value::as_str)
}

fn u64_of(object: &Value, field: &str) -> Option<u64> {
    object.get(field).and_then(Value::as_u64)
}

/// Microseconds of a HAR time in milliseconds; 0 when absent or negative (`-1`: unknown).
fn us(ms: Option<&Value>) -> u64 {
    let ms = ms.and_then(Value::as_f64).filter(|ms| ms.is_finite() && *ms >= 0.0).unwrap_or(0.0);
    (ms * 1000.0).round() as u64
}

/// Time to the response head from a browser's timings: every phase before `receive`.
fn head_from_timings(timings: Option<&Value>) -> u64 {
    let phases = ["blocked", "dns", "connect", "send", "wait"];
    timings.map_or(0, |t| phases.iter().map(|phase| us(t.get(*phase))).sum())
}

/// The authority and the target (path and query, without fragment) of a URL.
fn split_url(url: &str) -> (&str, String) {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let path = path.split('#').next().unwrap_or_default();
    (authority, if path.starts_with('/') { path.to_owned() } else { format!("/{path}") })
}

/// The first DNS label of an authority (`demo` of `user@demo.example.com:443`).
fn first_label(authority: &str) -> String {
    let host = authority.rsplit('@').next().unwrap_or_default();
    host.split(['.', ':']).next().unwrap_or_default().to_owned()
}

/// RFC 3339 UTC with milliseconds: `2026-11-30T10:00:00.123Z`.
fn format_time(at_ms: u64) -> String {
    let (year, month, day) = civil_from_days((at_ms / MS_PER_DAY) as i64);
    let ms = at_ms % MS_PER_DAY;
    let (hour, minute, second, milli) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{milli:03}Z")
}

/// Unix milliseconds of an RFC 3339 time (`Z` or `±hh:mm`, any fraction); `None` when it does
/// not parse or is before 1970.
fn parse_time(text: &str) -> Option<u64> {
    let num = |from: usize, to: usize| -> Option<i64> {
        let digits = text.get(from..to)?;
        digits.bytes().all(|b| b.is_ascii_digit()).then(|| digits.parse().ok())?
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    let bytes = text.as_bytes();
    if separators.iter().any(|&(i, c)| bytes.get(i) != Some(&c)) || !matches!(bytes.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let (month, day) = (u32::try_from(num(5, 7)?).ok()?, u32::try_from(num(8, 10)?).ok()?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let mut rest = text.get(19..)?;
    let mut milli = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        let padded = format!("{:0<3}", fraction.get(..digits.min(3))?);
        milli = padded.parse::<i64>().ok()?;
        rest = fraction.get(digits..)?;
    }
    let offset_min = match rest.as_bytes().first() {
        Some(b'Z' | b'z') if rest.len() == 1 => 0,
        Some(&sign @ (b'+' | b'-')) if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let minutes = num(text.len() - 5, text.len() - 3)? * 60 + num(text.len() - 2, text.len())?;
            if sign == b'+' { minutes } else { -minutes }
        }
        _ => return None,
    };
    let days = days_from_civil(num(0, 4)?, month, day);
    let seconds = days * 86_400 + num(11, 13)? * 3600 + num(14, 16)? * 60 + num(17, 19)? - offset_min * 60;
    u64::try_from(seconds * 1000 + milli).ok()
}

/// Year, month and day of a count of days since 1970-01-01 (proleptic Gregorian; after
/// Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Days since 1970-01-01 of a date; the inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let (era, yoe) = (year.div_euclid(400), year.rem_euclid(400));
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::samples;

    #[test]
    fn records_round_trip_through_har() {
        let mut binary = samples::full();
        if let Some(response) = binary.response.as_mut() {
            response.body = Bytes::from_static(&[0x89, b'P', b'N', b'G', 0]);
        }
        binary.upgraded = true;
        let records = vec![samples::full(), samples::failed(), binary];
        let text = serde_json::to_string_pretty(&to_har(&records)).expect("serializes");
        assert_eq!(from_har(&text).expect("reads"), records);
    }

    #[test]
    fn entries_are_what_browsers_expect() {
        let har = to_har(&[samples::full(), samples::failed()]);
        assert_eq!(har["log"]["version"], "1.2");
        assert_eq!(har["log"]["creator"]["name"], "http-tunnel");
        let entry = &har["log"]["entries"][0];
        assert_eq!(entry["startedDateTime"], "2026-11-30T10:00:00.123Z");
        assert_eq!(entry["time"], 2.75);
        assert_eq!(entry["timings"], json!({"send": 0, "wait": 1.5, "receive": 1.25}));
        let request = &entry["request"];
        assert_eq!(request["url"], "http://demo.tunnel.example/a%2Fb?x=1&x=2&y=%ZZ");
        let query = json!([
            {"name": "x", "value": "1"}, {"name": "x", "value": "2"}, {"name": "y", "value": "%ZZ"}
        ]);
        assert_eq!(request["queryString"], query);
        assert_eq!(request["headers"][3]["_valueBase64"], "//5h");
        assert_eq!(request["headers"][3]["value"], "\u{fffd}\u{fffd}a");
        assert_eq!(request["postData"]["_encoding"], "base64");
        assert_eq!(request["postData"]["text"], "AJ+Slv8=");
        assert_eq!(entry["response"]["content"]["text"], r#"{"ok":true}"#);
        assert!(entry["response"]["content"].get("encoding").is_none());
        let failed = &har["log"]["entries"][1];
        assert_eq!(failed["response"]["status"], 0);
        assert_eq!(failed["response"]["_noResponse"], true);
        assert_eq!(failed["_error"], "upstream_timeout");
        assert_eq!(failed["request"]["_cut"], true);
    }

    #[test]
    fn a_browser_har_is_read_best_effort() {
        let har = json!({"log": {"version": "1.2", "entries": [{
            "startedDateTime": "2026-11-30T11:00:00.5+01:00",
            "time": 12.5,
            "request": {
                "method": "POST", "url": "https://demo.tunnel.example:8443/p/q?a=1#frag",
                "headers": [{"name": ":authority", "value": "x"}, {"name": "Content-Type", "value": "text/plain"}],
                "postData": {"mimeType": "text/plain", "text": "hi"}, "bodySize": -1,
            },
            "response": {"status": 201, "headers": [], "content": {"size": 3, "text": "AAEC", "encoding": "base64"}},
            "timings": {"blocked": -1, "send": 0.5, "wait": 10, "receive": 2},
        }]}});
        let records = from_har(&har.to_string()).expect("reads");
        let record = &records[0];
        assert_eq!((record.tunnel.as_str(), record.request_id.as_str()), ("demo", ""));
        assert_eq!(record.request.target, "/p/q?a=1");
        assert_eq!(record.request.headers, [Header("content-type".into(), Bytes::from_static(b"text/plain"))]);
        assert_eq!((&record.request.body[..], record.request.size), (&b"hi"[..], 2));
        assert_eq!(record.at_ms, 1_796_032_800_500);
        assert_eq!((record.head_us, record.duration_us), (10_500, 12_500));
        let response = record.response.as_ref().expect("a response");
        assert_eq!((response.status, &response.body[..], response.size), (201, &[0, 1, 2][..], 3));
    }

    #[test]
    fn malformed_documents_are_refused_with_their_place() {
        assert!(matches!(from_har("{}"), Err(FormatError::Har(_))));
        assert!(matches!(from_har("not json"), Err(FormatError::Json(_))));
        let no_url = json!({"log": {"entries": [{"request": {"method": "GET"}}]}}).to_string();
        assert!(matches!(from_har(&no_url), Err(FormatError::Har(m)) if m.contains("entries[0]")));
        let mut har = to_har(&[samples::full()]);
        har["log"]["entries"][0]["request"]["headers"][3]["_valueBase64"] = json!("%%");
        let err = from_har(&har.to_string()).expect_err("refused");
        assert!(
            matches!(err, FormatError::Base64 { field, .. } if field == "entries[0].request.headers[3]._valueBase64")
        );
    }

    #[test]
    fn dates_format_and_parse() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(1_709_164_800_007), "2024-02-29T00:00:00.007Z");
        assert_eq!(format_time(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
        for at_ms in [0, 1_709_164_800_007, 1_796_032_800_123, 4_102_444_799_999, 951_782_400_000] {
            assert_eq!(parse_time(&format_time(at_ms)), Some(at_ms));
        }
        assert_eq!(parse_time("2026-11-30T10:00:00Z"), Some(1_796_032_800_000));
        assert_eq!(parse_time("2026-11-30T05:30:00.123456-04:30"), Some(1_796_032_800_123));
        assert_eq!(parse_time("1969-12-31T23:59:59Z"), None);
        assert_eq!(parse_time("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn percent_decoding_is_loose() {
        assert_eq!(percent_decode("a%2Fb+c%ZZ%4"), "a/b c%ZZ%4");
        assert_eq!(percent_decode("%E2%82%AC%FF"), "€\u{fffd}");
    }
}
