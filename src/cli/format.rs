//! Output formats of `shmbus sub`.

use std::fmt::Write as _;

use crate::Sample;

/// How `sub` prints messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `TOPIC<TAB>PAYLOAD`, the payload as UTF-8 with `\n`, `\t`, `\\` and non-printable bytes
    /// escaped.
    Text,
    /// One JSON object per line: topic, payload (a string if it is UTF-8, else `payload_hex`),
    /// publisher, sequence.
    Json,
    /// `TOPIC<TAB>HEX`: the payload's bytes in hexadecimal.
    Hex,
    /// The payloads' bytes exactly as published, nothing added (back to back: save one message
    /// with `--count 1`).
    Raw,
}

/// The payload as one line of text: valid UTF-8 passes through, except `\n`, `\t`, `\r`, `\\`
/// and other control characters, which are escaped; invalid bytes become `\xNN`.
pub fn escape(payload: &[u8]) -> String {
    let mut out = String::with_capacity(payload.len());
    for chunk in payload.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// What `sub` writes for `sample`: a line (with its newline), or for `Raw` the bytes alone.
pub fn write(
    out: &mut impl std::io::Write,
    format: Format,
    sample: &Sample<'_>,
) -> std::io::Result<()> {
    match format {
        Format::Raw => out.write_all(sample.payload()),
        _ => writeln!(out, "{}", line(format, sample)),
    }
}

/// The payload in hexadecimal.
fn hex(payload: &[u8]) -> String {
    payload.iter().map(|b| format!("{b:02x}")).collect()
}

/// One line (without the newline) for `sample`.
pub fn line(format: Format, sample: &Sample<'_>) -> String {
    match format {
        Format::Hex => format!("{}\t{}", sample.topic(), hex(sample.payload())),
        Format::Raw => String::from_utf8_lossy(sample.payload()).into_owned(),
        Format::Text => format!("{}\t{}", sample.topic(), escape(sample.payload())),
        Format::Json => {
            let mut obj = serde_json::Map::new();
            obj.insert("topic".into(), sample.topic().into());
            match std::str::from_utf8(sample.payload()) {
                Ok(s) => obj.insert("payload".into(), s.into()),
                Err(_) => obj.insert("payload_hex".into(), hex(sample.payload()).into()),
            };
            obj.insert("publisher".into(), sample.publisher().get().into());
            obj.insert("sequence".into(), sample.sequence().into());
            serde_json::Value::Object(obj).to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_would_break_a_line() {
        assert_eq!(escape(b"plain text"), "plain text");
        assert_eq!(escape(b"a\tb\nc\\d\re"), "a\\tb\\nc\\\\d\\re");
        assert_eq!(escape(b"bell\x07"), "bell\\u{7}");
        assert_eq!(escape("héllo".as_bytes()), "héllo");
        assert_eq!(escape(b"\xff\xfeok"), "\\xff\\xfeok");
        assert_eq!(escape(b""), "");
    }
}
