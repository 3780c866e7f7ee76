//! The topic grammar: what a valid topic is, and the error that says why a string is not one.

/// The longest topic accepted, in bytes (every valid topic is ASCII, so also in characters).
pub const MAX_TOPIC_LEN: usize = 255;

/// Topics longer than this many characters are shortened, with a trailing `…`, inside a
/// [`TopicError`], so that its message stays readable on one line.
const ERROR_TOPIC_MAX_CHARS: usize = 300;

/// Why a string is not a valid [`Topic`](super::Topic).
///
/// Every variant carries the offending topic (shortened to 300 characters plus `…` if it is longer)
/// and its message names it in quotes, on one line; control characters are escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The topic is the empty string.
    #[error("invalid topic {topic:?}: topic is empty")]
    Empty {
        /// The offending topic (always `""`).
        topic: String,
    },
    /// The topic is longer than [`MAX_TOPIC_LEN`] bytes.
    #[error("invalid topic {topic:?}: {len} bytes long, the limit is {max} bytes")]
    TooLong {
        /// The offending topic, shortened if over 300 characters.
        topic: String,
        /// Its length in bytes.
        len: usize,
        /// The limit, [`MAX_TOPIC_LEN`].
        max: usize,
    },
    /// A fragment is empty: the topic starts or ends with `/`, or has `//`.
    #[error("invalid topic {topic:?}: empty fragment at position {position}")]
    EmptyFragment {
        /// The offending topic.
        topic: String,
        /// Which fragment is empty, counting from 1 (`/a` → 1, `a//b` → 2, `a/` → 2).
        position: usize,
    },
    /// A character other than `A-Z a-z 0-9 _ - / *`.
    #[error(
        "invalid topic {topic:?}: invalid character {ch:?} at byte {offset} \
         (fragments are made of A-Z a-z 0-9 _ -, or are the wildcard * or **)"
    )]
    InvalidChar {
        /// The offending topic.
        topic: String,
        /// The character at fault.
        ch: char,
        /// Its byte offset in the topic.
        offset: usize,
    },
    /// A fragment contains `*` but is neither `*` nor `**` (e.g. `a*`, `*b`, `***`).
    #[error(
        "invalid topic {topic:?}: malformed wildcard {fragment:?} at position {position} \
         (a wildcard is a whole fragment, * or **)"
    )]
    MalformedWildcard {
        /// The offending topic.
        topic: String,
        /// The fragment at fault.
        fragment: String,
        /// Its position, counting fragments from 1.
        position: usize,
    },
    /// The topic has wildcards where one exact topic is needed (serving, requests).
    #[error(
        "invalid topic {topic:?}: wildcards are not allowed here (it must name one exact topic)"
    )]
    Wildcard {
        /// The offending topic.
        topic: String,
    },
}

impl TopicError {
    /// The offending topic, as carried by the error (shortened with `…` if over 300 characters).
    pub fn topic(&self) -> &str {
        match self {
            TopicError::Empty { topic }
            | TopicError::TooLong { topic, .. }
            | TopicError::EmptyFragment { topic, .. }
            | TopicError::InvalidChar { topic, .. }
            | TopicError::MalformedWildcard { topic, .. }
            | TopicError::Wildcard { topic } => topic,
        }
    }
}

/// The topic as stored in an error: in full up to [`ERROR_TOPIC_MAX_CHARS`] characters, otherwise
/// its first [`ERROR_TOPIC_MAX_CHARS`] characters and `…`.
fn shown(topic: &str) -> String {
    match topic.char_indices().nth(ERROR_TOPIC_MAX_CHARS) {
        None => topic.to_owned(),
        Some((cut, _)) => {
            let mut s = String::with_capacity(cut + '…'.len_utf8());
            s.push_str(topic.get(..cut).unwrap_or_default());
            s.push('…');
            s
        }
    }
}

fn is_literal_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Checks the grammar of a topic; reports the first fault, scanning left to right.
pub(super) fn validate(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty {
            topic: String::new(),
        });
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong {
            topic: shown(topic),
            len: topic.len(),
            max: MAX_TOPIC_LEN,
        });
    }
    let mut start = 0; // byte offset of the current fragment
    for (index, fragment) in topic.split('/').enumerate() {
        let position = index + 1;
        if fragment.is_empty() {
            return Err(TopicError::EmptyFragment {
                topic: shown(topic),
                position,
            });
        }
        if let Some((i, ch)) = fragment
            .char_indices()
            .find(|&(_, c)| !is_literal_char(c) && c != '*')
        {
            return Err(TopicError::InvalidChar {
                topic: shown(topic),
                ch,
                offset: start + i,
            });
        }
        if fragment.contains('*') && fragment != "*" && fragment != "**" {
            return Err(TopicError::MalformedWildcard {
                topic: shown(topic),
                fragment: fragment.to_owned(),
                position,
            });
        }
        start += fragment.len() + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::Topic;

    fn err(s: &str) -> TopicError {
        match Topic::new(s) {
            Ok(t) => panic!("{s:?} was accepted as {t:?}"),
            Err(e) => e,
        }
    }

    fn ok(s: &str) -> Topic {
        match Topic::new(s) {
            Ok(t) => t,
            Err(e) => panic!("{s:?} was rejected: {e}"),
        }
    }

    #[test]
    fn accepts_valid_topics() {
        for s in [
            "a",
            "A",
            "0",
            "-",
            "_",
            "a-b_c",
            "under_score/da-sh",
            "*",
            "**",
            "a/*",
            "*/a",
            "a/**",
            "**/a",
            "a/**/b",
            "*/*/**/**",
            "Sensors/LIDAR_2/front-left",
        ] {
            assert_eq!(ok(s).as_str(), s);
        }
    }

    #[test]
    fn empty_topic() {
        let e = err("");
        assert_eq!(
            e,
            TopicError::Empty {
                topic: String::new()
            }
        );
        assert_eq!(e.to_string(), r#"invalid topic "": topic is empty"#);
    }

    #[test]
    fn length_boundary() {
        let max = "a".repeat(MAX_TOPIC_LEN);
        assert_eq!(ok(&max).as_str().len(), 255);
        let max_fragments = vec!["a"; 128].join("/");
        assert_eq!(max_fragments.len(), 255);
        assert_eq!(ok(&max_fragments).fragments().count(), 128);

        let long = "a".repeat(MAX_TOPIC_LEN + 1);
        let e = err(&long);
        assert_eq!(
            e,
            TopicError::TooLong {
                topic: long.clone(),
                len: 256,
                max: 255
            }
        );
        assert!(e.to_string().contains(&long));
        assert!(
            e.to_string()
                .contains("256 bytes long, the limit is 255 bytes")
        );
        // Length is in bytes: 128 two-byte characters are too long even though 128 chars are fewer.
        assert!(matches!(
            err(&"é".repeat(128)),
            TopicError::TooLong { len: 256, .. }
        ));
    }

    #[test]
    fn huge_topic_is_shortened_in_the_error() {
        let huge = "x/".repeat(10_000);
        let e = err(&huge);
        let TopicError::TooLong { topic, len, .. } = &e else {
            panic!("unexpected {e:?}");
        };
        assert_eq!(*len, 20_000);
        assert_eq!(topic.chars().count(), ERROR_TOPIC_MAX_CHARS + 1);
        assert!(topic.ends_with('…'));
        assert!(huge.starts_with(topic.trim_end_matches('…')));
        let msg = e.to_string();
        assert!(msg.len() < 400, "{msg}");
        assert!(!msg.contains('\n'));

        // Exactly 300 characters (multi-byte) are kept whole; the cut respects char boundaries.
        let s = "é".repeat(300);
        assert_eq!(shown(&s), s);
        let s = "é".repeat(301);
        assert_eq!(shown(&s), format!("{}…", "é".repeat(300)));
    }

    #[test]
    fn empty_fragments() {
        for (s, position) in [
            ("/a", 1),
            ("a/", 2),
            ("a//b", 2),
            ("/", 1),
            ("a/b/", 3),
            ("**//", 2),
        ] {
            assert_eq!(
                err(s),
                TopicError::EmptyFragment {
                    topic: s.to_owned(),
                    position
                },
                "{s:?}"
            );
        }
        assert_eq!(
            err("a//b").to_string(),
            r#"invalid topic "a//b": empty fragment at position 2"#
        );
    }

    #[test]
    fn invalid_characters() {
        for (s, ch, offset) in [
            ("a b", ' ', 1),
            ("ab/c.d", '.', 4),
            ("caf\u{e9}", '\u{e9}', 3),
            ("a/\u{e9}/\u{e9}x", '\u{e9}', 2),
            ("x/y\u{e9}z/w", '\u{e9}', 3),
            ("a\nb", '\n', 1),
            ("a/b\0", '\0', 3),
            ("a+", '+', 1),
            ("a/#", '#', 2),
            ("*?", '?', 1),
            ("a\\b", '\\', 1),
        ] {
            assert_eq!(
                err(s),
                TopicError::InvalidChar {
                    topic: s.to_owned(),
                    ch,
                    offset
                },
                "{s:?}"
            );
        }
        assert_eq!(
            err("a b").to_string(),
            "invalid topic \"a b\": invalid character ' ' at byte 1 \
             (fragments are made of A-Z a-z 0-9 _ -, or are the wildcard * or **)"
        );
        // Control characters are escaped, so the message stays on one line.
        let msg = err("a\nb").to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains(r#""a\nb""#), "{msg}");
        assert!(msg.contains(r"'\n' at byte 1"), "{msg}");
    }

    #[test]
    fn malformed_wildcards() {
        for (s, fragment, position) in [
            ("a*", "a*", 1),
            ("*a", "*a", 1),
            ("***", "***", 1),
            ("x/**b/y", "**b", 2),
            ("x/y/*-*", "*-*", 3),
            ("a/****", "****", 2),
        ] {
            assert_eq!(
                err(s),
                TopicError::MalformedWildcard {
                    topic: s.to_owned(),
                    fragment: fragment.to_owned(),
                    position
                },
                "{s:?}"
            );
        }
        assert_eq!(
            err("x/a*").to_string(),
            "invalid topic \"x/a*\": malformed wildcard \"a*\" at position 2 \
             (a wildcard is a whole fragment, * or **)"
        );
    }

    #[test]
    fn first_fault_wins() {
        assert!(matches!(
            err("a /"),
            TopicError::InvalidChar { offset: 1, .. }
        ));
        assert!(matches!(
            err("a*//"),
            TopicError::MalformedWildcard { position: 1, .. }
        ));
        assert!(matches!(
            err("a//b c"),
            TopicError::EmptyFragment { position: 2, .. }
        ));
        assert!(matches!(err("*** x"), TopicError::InvalidChar { .. }));
    }

    #[test]
    fn every_message_names_the_topic() {
        for s in ["", "/", "a//b", "a b", "a*", &"z".repeat(280)] {
            let e = err(s);
            assert_eq!(e.topic(), s);
            let msg = e.to_string();
            assert!(msg.contains(&format!("{s:?}")), "{msg}");
            assert!(msg.starts_with("invalid topic "), "{msg}");
        }
    }
}
