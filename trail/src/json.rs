//! The JSON form of a recorded exchange, byte for byte.
//!
//! Used for JSON-lines export, for the trail's JSON output, and read back by replay. An
//! [`ExchangeRecord`] holds raw bytes (header values, bodies); JSON holds text. Each byte field is
//! written as text when it is valid UTF-8 (`"value"`, `"body"`) and as standard base64 otherwise
//! (`"value_base64"`, `"body_base64"`), so [`ExchangeJson`] → text → [`ExchangeRecord`] gives back
//! exactly the record it was made from.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tunnel_schemas::ErrorCode;
use tunnel_schemas::http::Header;
use tunnel_schemas::record::{ExchangeRecord, RecordedMessage, RecordedResponse};

/// Why a JSON or HAR form of an exchange cannot be read back into a record.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// A base64 field does not decode; `field` says where it is (`request.headers[2]`).
    #[error("{field}: invalid base64: {source}")]
    Base64 {
        /// Path of the field in the document.
        field: String,
        /// What the decoder refused.
        #[source]
        source: base64::DecodeError,
    },
    /// A byte field has neither its text nor its base64 form.
    #[error("{field}: neither a text nor a base64 value")]
    MissingValue {
        /// Path of the field in the document.
        field: String,
    },
    /// The text is not JSON, or not JSON of the expected shape.
    #[error("malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A HAR document lacks a required field or has one of the wrong type.
    #[error("malformed HAR: {0}")]
    Har(String),
}

/// One header: its name and its value as text or base64 (exactly one of the two is present).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderJson {
    /// Lowercase header name.
    pub name: String,
    /// The value, when it is valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value in standard base64, when it is not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

/// A recorded request: [`RecordedMessage`] with text or base64 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageJson {
    /// Method token.
    pub method: String,
    /// Raw path and query, as the local service received it.
    pub target: String,
    /// Headers in order.
    pub headers: Vec<HeaderJson>,
    /// The kept body, when it is valid UTF-8 (an empty body is `""`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The kept body in standard base64, when it is not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// Size of the whole body as exchanged.
    pub size: u64,
    /// The body is longer than what was kept.
    pub cut: bool,
}

/// A recorded response: [`RecordedResponse`] with text or base64 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseJson {
    /// HTTP status code.
    pub status: u16,
    /// Headers in order.
    pub headers: Vec<HeaderJson>,
    /// The kept body, when it is valid UTF-8 (an empty body is `""`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The kept body in standard base64, when it is not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// Size of the whole body as exchanged.
    pub size: u64,
    /// The body is longer than what was kept.
    pub cut: bool,
}

/// The JSON form of an [`ExchangeRecord`], field by field (see the record for each field's
/// meaning).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeJson {
    /// Protocol version of the recorder.
    pub v: u16,
    /// Request id.
    pub request_id: String,
    /// Tunnel name.
    pub tunnel: String,
    /// Owner key of the record.
    pub owner: String,
    /// The account of the recording session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Unix time of arrival, in milliseconds.
    pub at_ms: u64,
    /// Time to the response head, in microseconds.
    pub head_us: u64,
    /// Time to the end of the exchange, in microseconds.
    pub duration_us: u64,
    /// The request.
    pub request: MessageJson,
    /// The response; `null` when the exchange failed before one.
    #[serde(default)]
    pub response: Option<ResponseJson>,
    /// Why the exchange failed, when it did.
    #[serde(default)]
    pub error: Option<ErrorCode>,
    /// The exchange upgraded (WebSocket).
    #[serde(default)]
    pub upgraded: bool,
    /// Names of the headers whose values were masked.
    #[serde(default)]
    pub masked: Vec<String>,
    /// The request id this exchange replays.
    #[serde(default)]
    pub replay_of: Option<String>,
}

/// A header value as text for display: invalid UTF-8 sequences become `U+FFFD`.
pub fn header_text(value: &[u8]) -> String {
    String::from_utf8_lossy(value).into_owned()
}

/// Reads one line of a JSON-lines export back into a record.
///
/// # Errors
///
/// [`FormatError::Json`] when the line is not an [`ExchangeJson`], [`FormatError::Base64`] or
/// [`FormatError::MissingValue`] when a byte field cannot be decoded.
pub fn parse_line(line: &str) -> Result<ExchangeRecord, FormatError> {
    ExchangeRecord::try_from(serde_json::from_str::<ExchangeJson>(line)?)
}

/// Standard base64 of `bytes`.
pub(crate) fn encode_base64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes the standard base64 `text` of `field`.
pub(crate) fn decode_base64(field: &str, text: &str) -> Result<Bytes, FormatError> {
    STANDARD.decode(text).map(Bytes::from).map_err(|source| FormatError::Base64 { field: field.to_owned(), source })
}

/// Splits `bytes` into its text form (when valid UTF-8) or its base64 form.
fn text_or_base64(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (None, Some(encode_base64(bytes))),
    }
}

/// The bytes of a field written by [`text_or_base64`]; the text form wins when both are present.
fn bytes_of(text: Option<String>, base64: Option<String>, field: &str) -> Result<Bytes, FormatError> {
    match (text, base64) {
        (Some(text), _) => Ok(Bytes::from(text)),
        (None, Some(base64)) => decode_base64(&format!("{field}_base64"), &base64),
        (None, None) => Err(FormatError::MissingValue { field: field.to_owned() }),
    }
}

fn headers_json(headers: &[Header]) -> Vec<HeaderJson> {
    headers
        .iter()
        .map(|Header(name, value)| {
            let (value, value_base64) = text_or_base64(value);
            HeaderJson { name: name.clone(), value, value_base64 }
        })
        .collect()
}

fn headers_of(headers: Vec<HeaderJson>, field: &str) -> Result<Vec<Header>, FormatError> {
    headers
        .into_iter()
        .enumerate()
        .map(|(i, h)| Ok(Header(h.name, bytes_of(h.value, h.value_base64, &format!("{field}[{i}].value"))?)))
        .collect()
}

impl From<&RecordedMessage> for MessageJson {
    fn from(message: &RecordedMessage) -> Self {
        let (body, body_base64) = text_or_base64(&message.body);
        MessageJson {
            method: message.method.clone(),
            target: message.target.clone(),
            headers: headers_json(&message.headers),
            body,
            body_base64,
            size: message.size,
            cut: message.cut,
        }
    }
}

impl From<&RecordedResponse> for ResponseJson {
    fn from(response: &RecordedResponse) -> Self {
        let (body, body_base64) = text_or_base64(&response.body);
        ResponseJson {
            status: response.status,
            headers: headers_json(&response.headers),
            body,
            body_base64,
            size: response.size,
            cut: response.cut,
        }
    }
}

impl From<&ExchangeRecord> for ExchangeJson {
    fn from(record: &ExchangeRecord) -> Self {
        ExchangeJson {
            v: record.v,
            request_id: record.request_id.clone(),
            tunnel: record.tunnel.clone(),
            owner: record.owner.clone(),
            account: record.account.clone(),
            at_ms: record.at_ms,
            head_us: record.head_us,
            duration_us: record.duration_us,
            request: MessageJson::from(&record.request),
            response: record.response.as_ref().map(ResponseJson::from),
            error: record.error,
            upgraded: record.upgraded,
            masked: record.masked.clone(),
            replay_of: record.replay_of.clone(),
        }
    }
}

impl TryFrom<MessageJson> for RecordedMessage {
    type Error = FormatError;

    fn try_from(message: MessageJson) -> Result<Self, FormatError> {
        Ok(RecordedMessage {
            method: message.method,
            target: message.target,
            headers: headers_of(message.headers, "request.headers")?,
            body: bytes_of(message.body, message.body_base64, "request.body")?,
            size: message.size,
            cut: message.cut,
        })
    }
}

impl TryFrom<ResponseJson> for RecordedResponse {
    type Error = FormatError;

    fn try_from(response: ResponseJson) -> Result<Self, FormatError> {
        Ok(RecordedResponse {
            status: response.status,
            headers: headers_of(response.headers, "response.headers")?,
            body: bytes_of(response.body, response.body_base64, "response.body")?,
            size: response.size,
            cut: response.cut,
        })
    }
}

impl TryFrom<ExchangeJson> for ExchangeRecord {
    type Error = FormatError;

    fn try_from(json: ExchangeJson) -> Result<Self, FormatError> {
        Ok(ExchangeRecord {
            v: json.v,
            request_id: json.request_id,
            tunnel: json.tunnel,
            owner: json.owner,
            account: json.account,
            at_ms: json.at_ms,
            head_us: json.head_us,
            duration_us: json.duration_us,
            request: json.request.try_into()?,
            response: json.response.map(RecordedResponse::try_from).transpose()?,
            error: json.error,
            upgraded: json.upgraded,
            masked: json.masked,
            replay_of: json.replay_of,
        })
    }
}

/// Records exercising every byte-exact case, shared with the HAR tests.
#[cfg(test)]
pub(crate) mod samples {
    use super::*;

    fn header(name: &str, value: &[u8]) -> Header {
        Header(name.to_owned(), Bytes::copy_from_slice(value))
    }

    /// Binary request body, repeated and non-UTF-8 headers, a raw query, masked values.
    pub(crate) fn full() -> ExchangeRecord {
        ExchangeRecord {
            v: 1,
            request_id: "r1".into(),
            tunnel: "demo".into(),
            owner: "0123abcd".into(),
            account: Some("acme".into()),
            at_ms: 1_796_032_800_123,
            head_us: 1_500,
            duration_us: 2_750,
            request: RecordedMessage {
                method: "POST".into(),
                target: "/a%2Fb?x=1&x=2&y=%ZZ".into(),
                headers: vec![
                    header("host", b"demo.tunnel.example"),
                    header("x-multi", b"a"),
                    header("x-multi", b"b"),
                    header("x-bin", &[0xff, 0xfe, b'a']),
                    header("authorization", b"******"),
                    header("content-type", b"application/octet-stream"),
                ],
                body: Bytes::from_static(&[0, 0x9f, 0x92, 0x96, 0xff]),
                size: 5,
                cut: false,
            },
            response: Some(RecordedResponse {
                status: 200,
                headers: vec![
                    header("content-type", b"application/json"),
                    header("set-cookie", b"***"),
                    header("set-cookie", b"****"),
                ],
                body: Bytes::from_static(br#"{"ok":true}"#),
                size: 11,
                cut: false,
            }),
            error: None,
            upgraded: false,
            masked: vec!["authorization".into(), "set-cookie".into()],
            replay_of: Some("r0".into()),
        }
    }

    /// A failed exchange: no response, an error code, a cut text body.
    pub(crate) fn failed() -> ExchangeRecord {
        let mut record = full();
        record.request_id = "r2".into();
        record.request.method = "PUT".into();
        record.request.headers.truncate(1);
        record.request.body = Bytes::from_static(b"first part of a long body");
        record.request.size = 4096;
        record.request.cut = true;
        record.response = None;
        record.error = Some(ErrorCode::UpstreamTimeout);
        record.masked.clear();
        record.replay_of = None;
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(record: &ExchangeRecord) -> ExchangeRecord {
        let text = serde_json::to_string(&ExchangeJson::from(record)).expect("serializes");
        let back: ExchangeJson = serde_json::from_str(&text).expect("parses");
        ExchangeRecord::try_from(back).expect("decodes")
    }

    #[test]
    fn records_round_trip_byte_for_byte() {
        for record in [samples::full(), samples::failed()] {
            assert_eq!(round_trip(&record), record);
        }
    }

    #[test]
    fn bytes_are_text_when_utf8_and_base64_otherwise() {
        let value = serde_json::to_value(ExchangeJson::from(&samples::full())).expect("serializes");
        let headers = &value["request"]["headers"];
        assert_eq!(headers[1], serde_json::json!({"name": "x-multi", "value": "a"}));
        assert_eq!(headers[3], serde_json::json!({"name": "x-bin", "value_base64": "//5h"}));
        assert_eq!(value["request"]["body_base64"], "AJ+Slv8=");
        assert!(value["request"].get("body").is_none());
        assert_eq!(value["request"]["target"], "/a%2Fb?x=1&x=2&y=%ZZ");
        assert_eq!(value["response"]["body"], r#"{"ok":true}"#);

        let mut empty = samples::full();
        empty.request.body = Bytes::new();
        let value = serde_json::to_value(ExchangeJson::from(&empty)).expect("serializes");
        assert_eq!(value["request"]["body"], "");
        assert_eq!(round_trip(&empty), empty);
    }

    #[test]
    fn a_json_line_reads_back() {
        let record = samples::failed();
        let line = serde_json::to_string(&ExchangeJson::from(&record)).expect("serializes");
        assert!(!line.contains('\n'));
        assert_eq!(parse_line(&line).expect("reads"), record);
        assert!(line.contains(r#""error":"upstream_timeout""#));
    }

    #[test]
    fn bad_base64_and_missing_values_name_the_field() {
        let mut json = ExchangeJson::from(&samples::full());
        json.request.headers[3].value_base64 = Some("not base64!".into());
        let err = ExchangeRecord::try_from(json).expect_err("refused");
        assert!(matches!(&err, FormatError::Base64 { field, .. } if field == "request.headers[3].value_base64"));

        let mut json = ExchangeJson::from(&samples::full());
        if let Some(response) = json.response.as_mut() {
            response.body = None;
        }
        let err = ExchangeRecord::try_from(json).expect_err("refused");
        assert!(matches!(&err, FormatError::MissingValue { field } if field == "response.body"), "{err}");

        assert!(matches!(parse_line("{"), Err(FormatError::Json(_))));
    }

    #[test]
    fn header_text_is_lossy() {
        assert_eq!(header_text(b"plain"), "plain");
        assert_eq!(header_text(&[b'a', 0xff]), "a\u{fffd}");
    }
}
