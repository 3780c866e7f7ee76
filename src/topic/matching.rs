//! Matching: when a subscription pattern receives what a publisher writes on a topic.

use super::{Fragment, Topic};

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

/// Whether every concrete topic that `inner` matches is also matched by `outer`: a permission
/// on `outer` covers a subscription (or a wildcard publish) on `inner`.
///
/// A `*` of `outer` covers one fragment of `inner` that is not `**` (a `**` may stand for more
/// than one); a `**` of `outer` covers one or more fragments of any kind. Same dynamic programme
/// as [`overlaps`], in O(`outer` × `inner`) time.
///
/// ```
/// use shmbus::topic::{covers, Topic};
///
/// let t = |s| Topic::new(s).unwrap();
/// assert!(covers(&t("sensors/**"), &t("sensors/*/temp")));
/// assert!(covers(&t("a/*"), &t("a/b")));
/// assert!(!covers(&t("a/*"), &t("a/**")));
/// assert!(!covers(&t("sensors/**"), &t("**")));
/// ```
pub fn covers(outer: &Topic, inner: &Topic) -> bool {
    if !outer.is_wildcard() {
        return outer == inner;
    }
    let a: Vec<Fragment<'_>> = outer.fragments().collect();
    let b: Vec<Fragment<'_>> = inner.fragments().collect();
    let m = b.len();
    // cov(i, j): every expansion of b[j..] is matched by a[i..]. cov(n, m) = true, and false when
    // only one side is at its end (every fragment takes at least one). A `**` of `a` takes b[j]
    // and ends or takes more; a `*` takes one b[j] that is not `**`; a literal the same literal.
    let mut next = vec![false; m + 1];
    next[m] = true;
    let mut cur = vec![false; m + 1];
    for &fa in a.iter().rev() {
        cur[m] = false;
        for (j, &fb) in b.iter().enumerate().rev() {
            cur[j] = match (fa, fb) {
                (Fragment::OneOrMore, _) => next[j + 1] || cur[j + 1],
                (_, Fragment::OneOrMore) => false,
                (Fragment::Literal(x), Fragment::Literal(y)) => x == y && next[j + 1],
                (Fragment::Literal(_), _) => false,
                _ => next[j + 1], // `*` over `*` or a literal
            };
        }
        std::mem::swap(&mut cur, &mut next);
    }
    next[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Topic {
        Topic::new(s).unwrap()
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

    #[test]
    fn covers_basics() {
        let c = |a: &str, b: &str| covers(&ok(a), &ok(b));
        assert!(c("a/b", "a/b"));
        assert!(!c("a/b", "a/*"));
        assert!(c("**", "**"));
        assert!(c("**", "a/*/**"));
        assert!(c("**/**", "**/x"));
        assert!(!c("*/**", "**"));
        assert!(!c("*", "**"));
        assert!(c("*", "*"));
        assert!(c("a/**", "a/b/**"));
        assert!(!c("a/**", "a"));
        assert!(!c("a/*/c", "a/**/c"));
        assert!(c("a/**/c", "a/*/c"));
    }

    /// Covering agrees with matching: whatever concrete topic `inner` matches, `outer` matches
    /// too, over every pair of small patterns and topics.
    #[test]
    fn covers_agrees_with_matching() {
        let fragments = ["a", "b", "*", "**"];
        let mut patterns = Vec::new();
        for n in 1..=3 {
            let mut idx = vec![0usize; n];
            loop {
                patterns.push(ok(&idx
                    .iter()
                    .map(|&i| fragments[i])
                    .collect::<Vec<_>>()
                    .join("/")));
                let mut k = 0;
                while k < n && idx[k] == fragments.len() - 1 {
                    idx[k] = 0;
                    k += 1;
                }
                if k == n {
                    break;
                }
                idx[k] += 1;
            }
        }
        let concrete: Vec<Topic> = patterns
            .iter()
            .filter(|p| !p.is_wildcard())
            .cloned()
            .collect();
        let longer: Vec<Topic> = concrete
            .iter()
            .flat_map(|t| ["a", "b"].map(|f| ok(&format!("{}/{f}/{f}", t.as_str()))))
            .collect();
        for outer in &patterns {
            for inner in &patterns {
                if covers(outer, inner) {
                    for t in concrete.iter().chain(&longer) {
                        assert!(
                            !inner.matches(t) || outer.matches(t),
                            "{outer:?} covers {inner:?} but not {t:?}"
                        );
                    }
                }
            }
        }
    }
}
