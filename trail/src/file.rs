//! Exchanges saved to a file (`tunnel export`, or `tunnel trail --recorded --json`), read back
//! for replay without NATS: JSON lines or HAR 1.2, told apart by their content.

use tunnel_schemas::record::ExchangeRecord;

use crate::json::{FormatError, parse_line};

/// The exchanges in `text`: a HAR document, or JSON lines of exchanges (lines of other kinds,
/// such as audit records, are skipped).
///
/// # Errors
/// [`FormatError`] naming the first line or field that cannot be read.
pub fn read_exchanges(text: &str) -> Result<Vec<ExchangeRecord>, FormatError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{')
        && let Ok(document) = serde_json::from_str::<serde_json::Value>(trimmed)
        && document.get("log").is_some()
    {
        return crate::har::from_har(trimmed);
    }
    let mut records = Vec::new();
    for (number, line) in text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| FormatError::Har(format!("line {}: {e}", number + 1)))?;
        if value.get("kind").and_then(serde_json::Value::as_str).is_some_and(|kind| kind != "exchange") {
            continue;
        }
        records.push(parse_line(line).map_err(|e| FormatError::Har(format!("line {}: {e}", number + 1)))?);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::TrailEvent;
    use crate::json::ExchangeJson;

    #[test]
    fn reads_json_lines_with_other_kinds_and_har() {
        let record = crate::json::samples::full();
        let exchange =
            serde_json::to_string(&TrailEvent::Exchange(Box::new(ExchangeJson::from(&record)))).expect("json");
        let behind = serde_json::to_string(&TrailEvent::Behind { pending: 3 }).expect("json");
        let lines = format!("{behind}\n{exchange}\n\n");
        assert_eq!(read_exchanges(&lines).expect("lines"), vec![record.clone()]);
        let har = crate::har::to_har(std::slice::from_ref(&record)).to_string();
        assert_eq!(read_exchanges(&har).expect("har"), vec![record]);
        assert!(read_exchanges("not json\n").is_err());
    }
}
