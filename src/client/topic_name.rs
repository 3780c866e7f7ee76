//! [`TopicName`]: a ring's topic as a subscriber keeps it, NUL-terminated, so that C callers get
//! a C string with each message without a copy or a lookup.

use std::ffi::CStr;

/// A topic stored with one trailing NUL byte, and no other.
pub(crate) struct TopicName(Box<str>);

impl TopicName {
    /// `None` if `topic` holds a NUL byte (valid topics never do).
    pub(crate) fn new(topic: &str) -> Option<TopicName> {
        if topic.contains('\0') {
            return None;
        }
        let mut name = String::with_capacity(topic.len() + 1);
        name.push_str(topic);
        name.push('\0');
        Some(TopicName(name.into_boxed_str()))
    }

    /// The topic, without the NUL.
    #[inline]
    pub(crate) fn as_str(&self) -> &str {
        &self.0[..self.0.len() - 1]
    }

    /// The topic as a C string.
    #[inline]
    pub(crate) fn as_c_str(&self) -> &CStr {
        // SAFETY: `new` made the last byte a NUL and checked that the topic holds no other.
        unsafe { CStr::from_bytes_with_nul_unchecked(self.0.as_bytes()) }
    }
}

impl std::fmt::Debug for TopicName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_topic_and_its_c_form() {
        let name = TopicName::new("a/b").unwrap();
        assert_eq!(name.as_str(), "a/b");
        assert_eq!(name.as_c_str(), c"a/b");
        assert_eq!(format!("{name:?}"), "\"a/b\"");
        assert!(TopicName::new("a\0b").is_none());
    }
}
