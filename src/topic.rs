//! Topics: validated names such as `sensors/lidar/front`, with the wildcards `*` and `**`.
//!
//! A topic is a list of fragments separated by `/`. A fragment is one or more characters of
//! `[A-Za-z0-9_-]`, or a wildcard: `*` stands for exactly one fragment and `**` for one or more
//! fragments (never zero). A topic is at most [`MAX_TOPIC_LEN`] bytes long.
//!
//! Wildcards are allowed on both sides of the bus: a subscriber on pattern `S` receives a publish on
//! topic `P` when some concrete (wildcard-free) topic is matched by both `S` and `P`. That relation is
//! [`overlaps`]; it is symmetric.
//!
//! ```
//! use shmbus::topic::{overlaps, Topic};
//!
//! let sub = Topic::new("sensors/*/front")?;
//! assert!(overlaps(&sub, &Topic::new("sensors/lidar/front")?));
//! assert!(overlaps(&sub, &Topic::new("sensors/**")?));
//! assert!(!overlaps(&sub, &Topic::new("sensors/lidar")?));
//! # Ok::<(), shmbus::topic::TopicError>(())
//! ```

use std::fmt;
use std::iter::FusedIterator;
use std::str::FromStr;

/// The longest topic accepted, in bytes (every valid topic is ASCII, so also in characters).
pub const MAX_TOPIC_LEN: usize = 255;

/// Topics longer than this many characters are shortened, with a trailing `…`, inside a
/// [`TopicError`], so that its message stays readable on one line.
const ERROR_TOPIC_MAX_CHARS: usize = 300;

/// A validated topic: fragments of `[A-Za-z0-9_-]` or the wildcards `*` and `**`, separated by `/`,
/// at most [`MAX_TOPIC_LEN`] bytes.
///
/// Equality, hashing and ordering are those of the topic string; `a/*` and `a/b` are different
/// topics even though they [overlap](overlaps).
///
/// Invariant: the string passed `validate`; in particular it is non-empty ASCII.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(String);

impl Topic {
    /// Validates `topic` and returns it as a [`Topic`].
    ///
    /// # Errors
    ///
    /// Returns a [`TopicError`] naming the topic and what is wrong with it: it is empty, longer than
    /// [`MAX_TOPIC_LEN`] bytes, has an empty fragment (leading, trailing or double `/`), holds a
    /// character outside `[A-Za-z0-9_-]`, or a fragment mixes `*` with other characters (`a*`, `***`).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::topic::{Topic, TopicError};
    ///
    /// let t = Topic::new("robot/arm-2/joint_state")?;
    /// assert_eq!(t.as_str(), "robot/arm-2/joint_state");
    /// assert!(!t.is_wildcard());
    /// assert!(Topic::new("robot/**/state")?.is_wildcard());
    ///
    /// let err = Topic::new("a//b").unwrap_err();
    /// assert!(matches!(err, TopicError::EmptyFragment { position: 2, .. }));
    /// assert_eq!(err.to_string(), r#"invalid topic "a//b": empty fragment at position 2"#);
    /// # Ok::<(), TopicError>(())
    /// ```
    pub fn new(topic: &str) -> Result<Topic, TopicError> {
        validate(topic)?;
        Ok(Topic(topic.to_owned()))
    }

    /// The topic as written, e.g. `"a/*/c"`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether any fragment is a wildcard (`*` or `**`).
    pub fn is_wildcard(&self) -> bool {
        // Validation guarantees `*` appears only in the fragments `*` and `**`.
        self.0.contains('*')
    }

    /// The fragments of the topic, in order; there is always at least one.
    ///
    /// ```
    /// use shmbus::topic::{Fragment, Topic};
    ///
    /// let t = Topic::new("a/*/**")?;
    /// let f: Vec<Fragment<'_>> = t.fragments().collect();
    /// assert_eq!(f, [Fragment::Literal("a"), Fragment::One, Fragment::OneOrMore]);
    /// # Ok::<(), shmbus::topic::TopicError>(())
    /// ```
    pub fn fragments(&self) -> Fragments<'_> {
        Fragments(self.0.split('/'))
    }

    /// Gives back the topic string.
    pub fn into_string(self) -> String {
        self.0
    }

    /// Whether this topic (usually a subscription pattern) matches the concrete topic `concrete`.
    ///
    /// This is exactly [`overlaps(self, concrete)`](overlaps). When `concrete` has no wildcards that
    /// is ordinary pattern matching; when it does have some, the answer is still that of
    /// [`overlaps`] (some concrete topic is matched by both), so `a/b` "matches" `a/*`.
    ///
    /// ```
    /// use shmbus::topic::Topic;
    ///
    /// let pattern = Topic::new("logs/**")?;
    /// assert!(pattern.matches(&Topic::new("logs/app/error")?));
    /// assert!(!pattern.matches(&Topic::new("logs")?));
    /// # Ok::<(), shmbus::topic::TopicError>(())
    /// ```
    pub fn matches(&self, concrete: &Topic) -> bool {
        overlaps(self, concrete)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for Topic {
    type Err = TopicError;

    fn from_str(s: &str) -> Result<Topic, TopicError> {
        Topic::new(s)
    }
}

impl TryFrom<&str> for Topic {
    type Error = TopicError;

    fn try_from(s: &str) -> Result<Topic, TopicError> {
        Topic::new(s)
    }
}

impl TryFrom<String> for Topic {
    type Error = TopicError;

    /// Validates `s` and keeps its allocation.
    fn try_from(s: String) -> Result<Topic, TopicError> {
        validate(&s)?;
        Ok(Topic(s))
    }
}

impl From<Topic> for String {
    fn from(t: Topic) -> String {
        t.0
    }
}

/// One fragment of a [`Topic`], as yielded by [`Topic::fragments`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fragment<'a> {
    /// A literal fragment such as `lidar`: matches exactly that one fragment.
    Literal(&'a str),
    /// `*`: matches exactly one fragment, whatever it is.
    One,
    /// `**`: matches one or more fragments (never zero).
    OneOrMore,
}

impl<'a> Fragment<'a> {
    /// Classifies one fragment of an already validated topic.
    fn of(s: &'a str) -> Fragment<'a> {
        match s {
            "*" => Fragment::One,
            "**" => Fragment::OneOrMore,
            _ => Fragment::Literal(s),
        }
    }
}

/// Iterator over the fragments of a [`Topic`]; see [`Topic::fragments`].
#[derive(Debug, Clone)]
pub struct Fragments<'a>(std::str::Split<'a, char>);

impl<'a> Iterator for Fragments<'a> {
    type Item = Fragment<'a>;

    fn next(&mut self) -> Option<Fragment<'a>> {
        self.0.next().map(Fragment::of)
    }
}

impl DoubleEndedIterator for Fragments<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.0.next_back().map(Fragment::of)
    }
}

impl FusedIterator for Fragments<'_> {}

/// Why a string is not a valid [`Topic`].
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
}

impl TopicError {
    /// The offending topic, as carried by the error (shortened with `…` if over 300 characters).
    pub fn topic(&self) -> &str {
        match self {
            TopicError::Empty { topic }
            | TopicError::TooLong { topic, .. }
            | TopicError::EmptyFragment { topic, .. }
            | TopicError::InvalidChar { topic, .. }
            | TopicError::MalformedWildcard { topic, .. } => topic,
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
fn validate(topic: &str) -> Result<(), TopicError> {
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

/// Whether some concrete (wildcard-free) topic is matched by both `a` and `b`.
///
/// This is the delivery rule of the bus: a subscription on `a` receives a publish on `b` exactly
/// when `overlaps(a, b)`. It is symmetric and reflexive. Without wildcards it is string equality.
///
/// Runs in O(`a` fragments × `b` fragments) time and O(`b` fragments) extra space, with a dynamic
/// programme over the two fragment lists (no backtracking).
///
/// ```
/// use shmbus::topic::{overlaps, Topic};
///
/// let t = |s| Topic::new(s).unwrap();
/// assert!(overlaps(&t("a/*"), &t("a/b")));
/// assert!(!overlaps(&t("a/*"), &t("a/b/c")));
/// assert!(overlaps(&t("a/**"), &t("a/b/c")));
/// assert!(!overlaps(&t("a/**"), &t("a"))); // `**` is one or more fragments
/// assert!(overlaps(&t("a"), &t("**")));
/// assert!(!overlaps(&t("a/b"), &t("*")));
/// assert!(overlaps(&t("a/**/c"), &t("*/b/**"))); // both sides may be patterns: `a/b/c`
/// ```
pub fn overlaps(a: &Topic, b: &Topic) -> bool {
    if !a.is_wildcard() && !b.is_wildcard() {
        return a == b;
    }
    let a: Vec<Fragment<'_>> = a.fragments().collect();
    let b: Vec<Fragment<'_>> = b.fragments().collect();
    let m = b.len();

    // ov(i, j): some concrete fragment list is matched by both suffixes a[i..] and b[j..], where a
    // `**` at a[i] or b[j] still has to take at least one fragment. Then
    //   ov(n, m) = true;  ov(n, j<m) = ov(i<n, m) = false  (every fragment takes at least one);
    //   neither is `**`:  ov(i, j) = compatible(a[i], b[j]) && ov(i+1, j+1);
    //   only a[i] is `**`: ov(i, j) = ov(i+1, j+1) [`**` ends] || ov(i, j+1) [it takes more];
    //   only b[j] is `**`: ov(i, j) = ov(i+1, j+1) || ov(i+1, j);
    //   both are `**`:     ov(i, j) = ov(i+1, j+1) || ov(i+1, j) || ov(i, j+1)
    //     (both taking more is ov(i, j) again, which adds nothing to the least solution).
    // Rows are filled from i = n down to 0; `next` holds row i+1 and `cur` row i.
    let mut next = vec![false; m + 1];
    next[m] = true;
    let mut cur = vec![false; m + 1];
    for &fa in a.iter().rev() {
        cur[m] = false;
        for (j, &fb) in b.iter().enumerate().rev() {
            cur[j] = match (fa, fb) {
                (Fragment::OneOrMore, Fragment::OneOrMore) => next[j + 1] || next[j] || cur[j + 1],
                (Fragment::OneOrMore, _) => next[j + 1] || cur[j + 1],
                (_, Fragment::OneOrMore) => next[j + 1] || next[j],
                (Fragment::Literal(x), Fragment::Literal(y)) => x == y && next[j + 1],
                _ => next[j + 1], // `*` against `*` or a literal
            };
        }
        std::mem::swap(&mut cur, &mut next);
    }
    next[0]
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn conversions_and_accessors() {
        let t = ok("a/*/**/b");
        assert!(t.is_wildcard());
        assert!(!ok("a/b").is_wildcard());
        assert_eq!(t.to_string(), "a/*/**/b");
        assert_eq!(AsRef::<str>::as_ref(&t), "a/*/**/b");
        assert_eq!("a/*/**/b".parse::<Topic>(), Ok(t.clone()));
        assert_eq!(Topic::try_from("a/*/**/b"), Ok(t.clone()));
        assert_eq!(Topic::try_from(String::from("a/*/**/b")), Ok(t.clone()));
        assert!(Topic::try_from(String::from("a//b")).is_err());
        assert!("".parse::<Topic>().is_err());
        assert_eq!(
            t.fragments().collect::<Vec<_>>(),
            [
                Fragment::Literal("a"),
                Fragment::One,
                Fragment::OneOrMore,
                Fragment::Literal("b")
            ]
        );
        assert_eq!(t.fragments().next_back(), Some(Fragment::Literal("b")));
        assert_eq!(String::from(t.clone()), "a/*/**/b");
        assert_eq!(t.into_string(), "a/*/**/b");
        assert!(ok("a") < ok("b"));
    }

    #[test]
    fn overlaps_basics() {
        let o = |a: &str, b: &str| overlaps(&ok(a), &ok(b));
        assert!(o("a/b", "a/b"));
        assert!(!o("a/b", "a/c"));
        assert!(o("**", "**"));
        assert!(o("**", "*"));
        assert!(o("**/**", "*/*"));
        assert!(!o("**/**", "*"));
        assert!(!o("a/**/c", "a/c"));
        assert!(o("**/b/**", "a/**/c"));
        // Deep patterns stay fast (the DP is quadratic, not exponential).
        let deep = vec!["**"; 64].join("/") + "/x";
        let other = vec!["*"; 127].join("/") + "/y";
        assert!(!o(&deep, &other));
        assert!(ok(&deep).matches(&ok(&(vec!["q"; 127].join("/") + "/x"))));
    }
}
