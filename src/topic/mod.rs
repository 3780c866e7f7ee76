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

mod grammar;
mod matching;

use std::ffi::CStr;
use std::fmt;
use std::iter::FusedIterator;
use std::str::FromStr;
use std::sync::Arc;

use grammar::validate;
pub use grammar::{MAX_TOPIC_LEN, TopicError};
pub use matching::{covers, overlaps};

/// A validated topic: fragments of `[A-Za-z0-9_-]` or the wildcards `*` and `**`, separated by `/`,
/// at most [`MAX_TOPIC_LEN`] bytes.
///
/// Equality, hashing and ordering are those of the topic string; `a/*` and `a/b` are different
/// topics even though they [overlap](overlaps). Cloning is cheap (the string is shared), so errors
/// and samples can carry their topic without allocating.
///
/// Invariant: the string is a topic that passed `validate` (non-empty ASCII without NUL) followed
/// by one NUL byte, so that [`Topic::as_c_str`] needs no copy.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

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
        let mut s = String::with_capacity(topic.len() + 1);
        s.push_str(topic);
        s.push('\0');
        Ok(Topic(s.into()))
    }

    /// Whether `other` is the same topic: the same shared string (no comparison needed), or an
    /// equal one.
    #[inline]
    pub(crate) fn same(&self, other: &Topic) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }

    /// The topic as written, e.g. `"a/*/c"`.
    #[inline]
    pub fn as_str(&self) -> &str {
        &self.0[..self.0.len() - 1]
    }

    /// The topic as a NUL-terminated C string, without a copy (for foreign-function interfaces).
    #[inline]
    pub fn as_c_str(&self) -> &CStr {
        // SAFETY: `new` made the last byte a NUL, and validation admits no other.
        unsafe { CStr::from_bytes_with_nul_unchecked(self.0.as_bytes()) }
    }

    /// Whether any fragment is a wildcard (`*` or `**`).
    pub fn is_wildcard(&self) -> bool {
        // Validation guarantees `*` appears only in the fragments `*` and `**`.
        self.as_str().contains('*')
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
        Fragments(self.as_str().split('/'))
    }

    /// The topic as an owned string.
    pub fn into_string(self) -> String {
        self.as_str().to_owned()
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
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<str> for Topic {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Topic {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
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

    fn try_from(s: String) -> Result<Topic, TopicError> {
        Topic::new(&s)
    }
}

impl From<Topic> for String {
    fn from(t: Topic) -> String {
        t.into_string()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Topic {
        Topic::new(s).unwrap()
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
        assert_eq!(t.as_c_str(), c"a/*/**/b");
        assert_eq!(format!("{t:?}"), "\"a/*/**/b\"");
        assert_eq!(t, "a/*/**/b");
        assert_eq!(t.into_string(), "a/*/**/b");
        assert!(ok("a") < ok("b"));
    }
}
