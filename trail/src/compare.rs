//! A replayed response against the recorded one.
//!
//! [`compare`] checks the status, the headers that are expected to stay the same (values in
//! order; volatile, hop-by-hop and ignored headers are skipped, masked ones are compared by count
//! only) and the body: structurally when both are JSON (with ignored paths), as a unified diff
//! when both are text, by first differing byte otherwise. A cut body is compared on its kept
//! prefix and its total size.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;
use tunnel_schemas::record::RecordedResponse;

use crate::json::header_text;

/// Headers whose values change from one response to the next (lowercase); never compared.
#[rustfmt::skip]
pub const VOLATILE_HEADERS: &[&str] = &[
    "date", "x-request-id", "traceparent", "tracestate", "x-trace-id", "x-amzn-trace-id", "x-b3-traceid",
    "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "b3", "x-cloud-trace-context", "server-timing", "age",
    "expires", "x-runtime", "x-response-time",
];

/// Hop-by-hop headers: about the connection, not the response; never compared.
const HOP_BY_HOP_HEADERS: &[&str] =
    &["connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"];

/// What a comparison leaves out, beyond [`VOLATILE_HEADERS`] and hop-by-hop headers.
#[derive(Debug, Clone, Default)]
pub struct CompareOptions {
    /// More header names not to compare (any case).
    pub ignore_headers: Vec<String>,
    /// JSON paths not to compare (`$.id`, `$.items[*].created_at`, `$["a b"][0]`, `$.*`); a
    /// path also ignores everything under it.
    pub ignore_json_paths: Vec<String>,
}

/// The outcome of [`compare`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// Every difference found; empty when the responses match.
    pub mismatches: Vec<Mismatch>,
    /// What the reader should know about how the comparison was made (a cut body, an invalid
    /// ignored path).
    pub notes: Vec<String>,
}

/// One difference between the recorded and the replayed response.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum Mismatch {
    /// The status codes differ.
    Status {
        /// Recorded status.
        recorded: u16,
        /// Replayed status.
        replayed: u16,
    },
    /// The values of a header differ (masked values are shown as `*`s on both sides).
    Header {
        /// Lowercase header name.
        name: String,
        /// Recorded values in order, as text.
        recorded: Vec<String>,
        /// Replayed values in order, as text.
        replayed: Vec<String>,
    },
    /// Both bodies are JSON and differ at these paths.
    JsonBody {
        /// Each differing path, in document order.
        paths: Vec<JsonDiff>,
    },
    /// Both bodies are text and differ.
    TextBody {
        /// Unified diff from `recorded` to `replayed`.
        diff: String,
    },
    /// The bodies differ as bytes.
    BinaryBody {
        /// Offset of the first differing byte (or where the shorter one ends).
        offset: u64,
        /// Size of the recorded body.
        recorded_size: u64,
        /// Size of the replayed body.
        replayed_size: u64,
    },
}

/// One differing JSON value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JsonDiff {
    /// Where (`$.items[1].name`).
    pub path: String,
    /// Recorded value; absent when the path does not exist there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded: Option<Value>,
    /// Replayed value; absent when the path does not exist there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed: Option<Value>,
}

/// An ignored JSON path that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON path {path:?}: {reason}")]
pub struct InvalidJsonPath {
    /// The path as given.
    pub path: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Comparison {
    /// The responses match: no mismatch.
    pub fn matches(&self) -> bool {
        self.mismatches.is_empty()
    }

    /// Human text: one block per mismatch, then the notes.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.matches() {
            out.push_str("responses match\n");
        }
        for mismatch in &self.mismatches {
            // Writing to a String cannot fail.
            let _ = match mismatch {
                Mismatch::Status { recorded, replayed } => {
                    writeln!(out, "status: recorded {recorded} → replayed {replayed}")
                }
                Mismatch::Header { name, recorded, replayed } => {
                    writeln!(out, "header {name}: recorded {recorded:?} → replayed {replayed:?}")
                }
                Mismatch::JsonBody { paths } => {
                    let show = |v: &Option<Value>| v.as_ref().map_or_else(|| "absent".to_owned(), Value::to_string);
                    out.push_str("body (JSON) differs:\n");
                    paths.iter().try_for_each(|d| {
                        writeln!(out, "  {}: recorded {} → replayed {}", d.path, show(&d.recorded), show(&d.replayed))
                    })
                }
                Mismatch::TextBody { diff } => writeln!(out, "body differs:\n{}", diff.trim_end()),
                Mismatch::BinaryBody { offset, recorded_size, replayed_size } => writeln!(
                    out,
                    "body differs at byte {offset} (recorded {recorded_size} bytes, replayed {replayed_size} bytes)"
                ),
            };
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }
}

/// Checks that `path` is a valid ignored JSON path (for validating options up front).
///
/// # Errors
///
/// [`InvalidJsonPath`] saying what is wrong.
pub fn validate_json_path(path: &str) -> Result<(), InvalidJsonPath> {
    parse_path(path).map(drop)
}

/// Compares `replayed` with `recorded`, whose headers named in `masked` were masked.
pub fn compare(
    recorded: &RecordedResponse,
    masked: &[String],
    replayed: &RecordedResponse,
    options: &CompareOptions,
) -> Comparison {
    let mut comparison = Comparison { mismatches: Vec::new(), notes: Vec::new() };
    if recorded.status != replayed.status {
        comparison.mismatches.push(Mismatch::Status { recorded: recorded.status, replayed: replayed.status });
    }
    compare_headers(recorded, masked, replayed, options, &mut comparison.mismatches);
    compare_body(recorded, replayed, options, &mut comparison);
    comparison
}

fn compare_headers(
    recorded: &RecordedResponse,
    masked: &[String],
    replayed: &RecordedResponse,
    options: &CompareOptions,
    out: &mut Vec<Mismatch>,
) {
    let ignored = |name: &str| {
        VOLATILE_HEADERS.iter().chain(HOP_BY_HOP_HEADERS).any(|h| h.eq_ignore_ascii_case(name))
            || options.ignore_headers.iter().any(|h| h.eq_ignore_ascii_case(name))
            || (recorded.cut && name.eq_ignore_ascii_case("content-length"))
    };
    let mut names: Vec<String> = Vec::new();
    for header in recorded.headers.iter().chain(&replayed.headers) {
        let name = header.0.to_ascii_lowercase();
        if !ignored(&name) && !names.contains(&name) {
            names.push(name);
        }
    }
    for name in names {
        let (before, after) = (header_values(recorded, &name), header_values(replayed, &name));
        let is_masked = masked.iter().any(|m| m.eq_ignore_ascii_case(&name));
        let differ = if is_masked { before.len() != after.len() } else { before != after };
        if differ {
            // A replayed secret is not shown either.
            let text = |v: &[u8]| if is_masked { "*".repeat(v.len()) } else { header_text(v) };
            let (recorded, replayed) =
                (before.iter().map(|v| text(v)).collect(), after.iter().map(|v| text(v)).collect());
            out.push(Mismatch::Header { name, recorded, replayed });
        }
    }
}

/// The values of the headers named `name` (any case), in order.
fn header_values<'a>(response: &'a RecordedResponse, name: &str) -> Vec<&'a [u8]> {
    response.headers.iter().filter(|h| h.0.eq_ignore_ascii_case(name)).map(|h| &h.1[..]).collect()
}

fn compare_body(
    recorded: &RecordedResponse,
    replayed: &RecordedResponse,
    options: &CompareOptions,
    comparison: &mut Comparison,
) {
    let (before, after) = (&recorded.body[..], &replayed.body[..]);
    if recorded.cut || replayed.cut {
        let kept = before.len().min(after.len());
        let which = match (recorded.cut, replayed.cut) {
            (true, true) => "the recorded and the replayed bodies were",
            (true, false) => "the recorded body was",
            _ => "the replayed body was",
        };
        comparison.notes.push(format!("{which} cut: compared the first {kept} bytes and the total sizes"));
        let offset = first_difference(&before[..kept], &after[..kept]);
        if offset.is_some() || recorded.size != replayed.size {
            comparison.mismatches.push(Mismatch::BinaryBody {
                offset: offset.unwrap_or(kept) as u64,
                recorded_size: recorded.size,
                replayed_size: replayed.size,
            });
        }
        return;
    }
    if before == after {
        return;
    }
    if let (Ok(a), Ok(b)) = (serde_json::from_slice::<Value>(before), serde_json::from_slice::<Value>(after)) {
        let mut ignore = Vec::new();
        for path in &options.ignore_json_paths {
            match parse_path(path) {
                Ok(steps) => ignore.push(steps),
                Err(err) => comparison.notes.push(format!("{err}; not ignored")),
            }
        }
        let mut paths = Vec::new();
        diff_json(Some(&a), Some(&b), &mut Vec::new(), &ignore, &mut paths);
        if !paths.is_empty() {
            comparison.mismatches.push(Mismatch::JsonBody { paths });
        }
        return;
    }
    let mismatch = match (std::str::from_utf8(before), std::str::from_utf8(after)) {
        (Ok(a), Ok(b)) => Mismatch::TextBody {
            diff: similar::TextDiff::from_lines(a, b)
                .unified_diff()
                .context_radius(3)
                .header("recorded", "replayed")
                .to_string(),
        },
        _ => Mismatch::BinaryBody {
            offset: first_difference(before, after).unwrap_or(before.len().min(after.len())) as u64,
            recorded_size: before.len() as u64,
            replayed_size: after.len() as u64,
        },
    };
    comparison.mismatches.push(mismatch);
}

/// Offset of the first differing byte within the common length of `a` and `b`.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// One step of a concrete JSON path.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// An object member.
    Key(String),
    /// An array element.
    Index(usize),
}

/// One step of an ignored path: a concrete step, or `*` (any member or element).
type Pattern = Option<Step>;

fn parse_path(path: &str) -> Result<Vec<Pattern>, InvalidJsonPath> {
    let err = |reason| InvalidJsonPath { path: path.to_owned(), reason };
    let mut rest = path.strip_prefix('$').ok_or_else(|| err("must start with `$`"))?;
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let (key, tail) = after.split_at(after.find(['.', '[']).unwrap_or(after.len()));
            match key {
                "" => return Err(err("empty name after `.`")),
                "*" => steps.push(None),
                key => steps.push(Some(Step::Key(key.to_owned()))),
            }
            rest = tail;
        } else if let Some(after) = rest.strip_prefix('[') {
            let (step, tail) = if let Some(tail) = after.strip_prefix("*]") {
                (None, tail)
            } else if after.starts_with('"') {
                let mut strings = serde_json::Deserializer::from_str(after).into_iter::<String>();
                let Some(Ok(key)) = strings.next() else { return Err(err("bad quoted name")) };
                let tail = after.get(strings.byte_offset()..).and_then(|t| t.strip_prefix(']'));
                (Some(Step::Key(key)), tail.ok_or_else(|| err("missing `]`"))?)
            } else {
                let (index, tail) = after.split_once(']').ok_or_else(|| err("missing `]`"))?;
                (Some(Step::Index(index.parse().map_err(|_| err("bad index"))?)), tail)
            };
            steps.push(step);
            rest = tail;
        } else {
            return Err(err("expected `.` or `[`"));
        }
    }
    Ok(steps)
}

fn render_path(path: &[Step]) -> String {
    let mut out = String::from("$");
    for step in path {
        match step {
            Step::Key(key) if is_identifier(key) => {
                out.push('.');
                out.push_str(key);
            }
            Step::Key(key) => out.push_str(&format!("[{}]", Value::String(key.clone()))),
            Step::Index(index) => out.push_str(&format!("[{index}]")),
        }
    }
    out
}

fn is_identifier(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_ignored(path: &[Step], ignore: &[Vec<Pattern>]) -> bool {
    ignore.iter().any(|pattern| {
        pattern.len() == path.len() && pattern.iter().zip(path).all(|(p, s)| p.as_ref().is_none_or(|p| p == s))
    })
}

fn diff_json(
    a: Option<&Value>,
    b: Option<&Value>,
    path: &mut Vec<Step>,
    ignore: &[Vec<Pattern>],
    out: &mut Vec<JsonDiff>,
) {
    if a == b || is_ignored(path, ignore) {
        return;
    }
    match (a, b) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let extra = b.keys().filter(|k| !a.contains_key(*k));
            for key in a.keys().chain(extra) {
                path.push(Step::Key(key.clone()));
                diff_json(a.get(key), b.get(key), path, ignore, out);
                path.pop();
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            for index in 0..a.len().max(b.len()) {
                path.push(Step::Index(index));
                diff_json(a.get(index), b.get(index), path, ignore, out);
                path.pop();
            }
        }
        _ => out.push(JsonDiff { path: render_path(path), recorded: a.cloned(), replayed: b.cloned() }),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::json;
    use tunnel_schemas::http::Header;

    use super::*;

    fn response(headers: &[(&str, &str)], body: &[u8]) -> RecordedResponse {
        RecordedResponse {
            status: 200,
            headers: headers.iter().map(|(n, v)| Header((*n).to_owned(), Bytes::from(v.to_string()))).collect(),
            body: Bytes::copy_from_slice(body),
            size: body.len() as u64,
            cut: false,
        }
    }

    fn run(recorded: &RecordedResponse, replayed: &RecordedResponse) -> Comparison {
        compare(recorded, &[], replayed, &CompareOptions::default())
    }

    fn ignoring_paths(paths: &[&str]) -> CompareOptions {
        CompareOptions { ignore_json_paths: paths.iter().map(|p| (*p).to_owned()).collect(), ..Default::default() }
    }

    #[test]
    fn identical_responses_match() {
        let r = response(&[("content-type", "text/plain"), ("x-a", "1"), ("x-a", "2")], b"hello\n");
        let comparison = run(&r, &r.clone());
        assert!(comparison.matches(), "{}", comparison.render());
        assert_eq!(comparison.render(), "responses match\n");
    }

    #[test]
    fn status_and_header_values_in_order_are_compared() {
        let recorded = response(&[("x-a", "1"), ("x-a", "2"), ("connection", "close")], b"");
        let mut replayed = response(&[("x-a", "2"), ("x-a", "1"), ("x-new", "n"), ("connection", "keep-alive")], b"");
        replayed.status = 500;
        let comparison = run(&recorded, &replayed);
        let expected = [
            Mismatch::Status { recorded: 200, replayed: 500 },
            Mismatch::Header {
                name: "x-a".into(),
                recorded: vec!["1".into(), "2".into()],
                replayed: vec!["2".into(), "1".into()],
            },
            Mismatch::Header { name: "x-new".into(), recorded: vec![], replayed: vec!["n".into()] },
        ];
        assert_eq!(comparison.mismatches, expected);
        assert!(comparison.render().contains("status: recorded 200 → replayed 500"));
    }

    #[test]
    fn volatile_headers_are_not_compared() {
        let recorded = response(&[("date", "Mon, 30 Nov 2026 10:00:00 GMT"), ("x-request-id", "a")], b"x");
        let replayed = response(&[("Date", "Mon, 30 Nov 2026 10:05:00 GMT"), ("X-Request-Id", "b")], b"x");
        assert!(run(&recorded, &replayed).matches());
    }

    #[test]
    fn ignored_headers_are_not_compared() {
        let recorded = response(&[("x-version", "1.0")], b"x");
        let replayed = response(&[("x-version", "1.1")], b"x");
        assert!(!run(&recorded, &replayed).matches());
        let options = CompareOptions { ignore_headers: vec!["X-Version".into()], ..Default::default() };
        assert!(compare(&recorded, &[], &replayed, &options).matches());
    }

    #[test]
    fn masked_headers_are_compared_by_count_only() {
        let recorded = response(&[("set-cookie", "*****"), ("set-cookie", "***")], b"");
        let replayed = response(&[("set-cookie", "a=123"), ("set-cookie", "b=4")], b"");
        let (masked, none) = (vec!["set-cookie".to_owned()], CompareOptions::default());
        assert!(compare(&recorded, &masked, &replayed, &none).matches());
        assert!(!run(&recorded, &replayed).matches());

        let one = response(&[("set-cookie", "a=secret")], b"");
        let comparison = compare(&recorded, &masked, &one, &none);
        let expected = Mismatch::Header {
            name: "set-cookie".into(),
            recorded: vec!["*****".into(), "***".into()],
            replayed: vec!["********".into()],
        };
        assert_eq!(comparison.mismatches, [expected]);
        assert!(!comparison.render().contains("secret"));
    }

    #[test]
    fn json_bodies_are_compared_by_path() {
        let recorded =
            response(&[], br#"{"id": 1, "items": [{"name": "a", "created_at": 1}, {"name": "b", "created_at": 2}]}"#);
        let replayed =
            response(&[], br#"{"items":[{"created_at":5,"name":"a"},{"created_at":6,"name":"c"}],"id":2,"new":null}"#);
        let comparison = run(&recorded, &replayed);
        let Some(Mismatch::JsonBody { paths }) = comparison.mismatches.first() else { panic!("{comparison:?}") };
        let found: Vec<&str> = paths.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(found, ["$.id", "$.items[0].created_at", "$.items[1].created_at", "$.items[1].name", "$.new"]);
        assert_eq!(
            paths[3],
            JsonDiff { path: "$.items[1].name".into(), recorded: Some(json!("b")), replayed: Some(json!("c")) }
        );
        assert_eq!(paths[4].recorded, None);
        let text = comparison.render();
        assert!(text.contains("  $.items[1].name: recorded \"b\" → replayed \"c\"\n"), "{text}");
        assert!(text.contains("  $.new: recorded absent → replayed null\n"), "{text}");

        let options = ignoring_paths(&["$.id", "$.items[*].created_at", "$[\"new\"]"]);
        let comparison = compare(&recorded, &[], &replayed, &options);
        let Some(Mismatch::JsonBody { paths }) = comparison.mismatches.first() else { panic!("{comparison:?}") };
        assert_eq!(paths.len(), 1);
        assert_eq!(paths[0].path, "$.items[1].name");
        assert!(compare(&recorded, &[], &replayed, &ignoring_paths(&["$.id", "$.items", "$.new"])).matches());
        assert!(compare(&recorded, &[], &replayed, &ignoring_paths(&["$.*"])).matches());
        assert!(
            compare(&recorded, &[], &replayed, &ignoring_paths(&["$.id", "$.items[1]", "$.items[0].*", "$.new"]))
                .matches()
        );
    }

    #[test]
    fn json_paths_parse_and_render() {
        assert_eq!(validate_json_path("$.a[*][3][\"b.c\"].*"), Ok(()));
        for bad in ["a", "$.", "$[x]", "$[\"a\"", "$a", "$[1"] {
            assert!(validate_json_path(bad).is_err(), "{bad}");
        }
        let path = [Step::Key("a b".into()), Step::Index(2), Step::Key("_ok1".into())];
        assert_eq!(render_path(&path), "$[\"a b\"][2]._ok1");
        let comparison = compare(&response(&[], b"[1]"), &[], &response(&[], b"[2]"), &ignoring_paths(&["nope"]));
        assert!(comparison.notes[0].contains("invalid JSON path \"nope\""));
    }

    #[test]
    fn text_bodies_differ_by_unified_diff() {
        let recorded = response(&[], b"one\ntwo\nold line\nfour\n");
        let replayed = response(&[], b"one\ntwo\nnew line\nfour\n");
        let comparison = run(&recorded, &replayed);
        let Some(Mismatch::TextBody { diff }) = comparison.mismatches.first() else { panic!("{comparison:?}") };
        assert!(diff.starts_with("--- recorded\n+++ replayed\n"), "{diff}");
        assert!(diff.contains("\n-old line\n+new line\n"), "{diff}");
        assert!(comparison.render().contains("-old line"));
    }

    #[test]
    fn binary_bodies_report_the_first_differing_byte() {
        let recorded = response(&[], &[0xff, 0, 1, 2, 3]);
        let replayed = response(&[], &[0xff, 0, 1, 9, 3, 4]);
        let comparison = run(&recorded, &replayed);
        let expected = Mismatch::BinaryBody { offset: 3, recorded_size: 5, replayed_size: 6 };
        assert_eq!(comparison.mismatches, [expected]);
        let prefix = run(&recorded, &response(&[], &[0xff, 0]));
        assert!(matches!(prefix.mismatches[..], [Mismatch::BinaryBody { offset: 2, .. }]));
    }

    #[test]
    fn a_cut_body_is_compared_on_its_prefix_and_size() {
        let mut recorded = response(&[("content-length", "11")], b"hello");
        (recorded.size, recorded.cut) = (11, true);
        let replayed = response(&[("content-length", "12")], b"hello world");
        let comparison = run(&recorded, &replayed);
        assert!(comparison.matches(), "{}", comparison.render());
        assert!(comparison.notes[0].contains("recorded body was cut"), "{:?}", comparison.notes);

        let changed = response(&[], b"hellO world");
        let comparison = run(&recorded, &changed);
        let expected = Mismatch::BinaryBody { offset: 4, recorded_size: 11, replayed_size: 11 };
        assert_eq!(comparison.mismatches, [expected]);

        let longer = response(&[], b"hello world!");
        let comparison = run(&recorded, &longer);
        let expected = Mismatch::BinaryBody { offset: 5, recorded_size: 11, replayed_size: 12 };
        assert_eq!(comparison.mismatches, [expected]);
    }

    #[test]
    fn mismatches_serialize_with_their_kind() {
        let value = serde_json::to_value(Mismatch::Status { recorded: 200, replayed: 404 }).expect("serializes");
        assert_eq!(value, json!({"what": "status", "recorded": 200, "replayed": 404}));
        let diff = JsonDiff { path: "$.a".into(), recorded: None, replayed: Some(Value::Null) };
        assert_eq!(serde_json::to_value(diff).expect("serializes"), json!({"path": "$.a", "replayed": null}));
    }
}
