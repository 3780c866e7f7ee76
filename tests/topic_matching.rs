//! Topic matching and validation, through the public API of `shmbus::topic` only.
//!
//! - a table of hand-written `(subscription, publication, expected)` rows;
//! - `overlaps` against a brute-force reference (enumerate concrete topics, match each side with a
//!   backtracking matcher), both exhaustively over a small domain and with proptest;
//! - algebraic properties (symmetry, reflexivity, `**`);
//! - `Topic::new` against a separately written reference validator, on arbitrary strings.

use proptest::prelude::*;
use shmbus::topic::{MAX_TOPIC_LEN, Topic, overlaps};

fn topic(s: &str) -> Topic {
    match Topic::new(s) {
        Ok(t) => t,
        Err(e) => panic!("test topic {s:?} rejected: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Table
// ---------------------------------------------------------------------------------------------

/// `(subscription, publication, expected)`. Every row is also checked with the sides swapped,
/// since delivery is symmetric.
const TABLE: &[(&str, &str, bool)] = &[
    // Literals.
    ("a", "a", true),
    ("a", "b", false),
    ("a/b", "a/b", true),
    ("a/b", "a/c", false),
    ("a/b", "a", false),
    ("a", "a/b", false),
    ("a/b/c", "a/b/c", true),
    ("a/b/c", "a/b", false),
    ("A", "a", false), // case-sensitive
    ("a-b", "a_b", false),
    ("a_b/c-d/0", "a_b/c-d/0", true),
    ("ab", "a/b", false),
    // `*` on the subscription side.
    ("a/*", "a/b", true),    // DESIGN
    ("a/*", "a/b/c", false), // DESIGN
    ("a/*", "a", false),
    ("*", "a", true),
    ("*", "a/b", false),
    ("*/b", "a/b", true),
    ("*/b", "a/c", false),
    ("a/*/c", "a/b/c", true),
    ("a/*/c", "a/c", false),
    ("a/*/c", "a/b/d", false),
    ("*/*", "a/b", true),
    ("*/*", "a", false),
    // `*` on the publication side.
    ("a", "*", true),    // DESIGN
    ("a/b", "*", false), // DESIGN
    ("a/b", "a/*", true),
    ("a/b/c", "a/*", false),
    ("a/b", "*/c", false),
    // `**` on the subscription side.
    ("a/**", "a/b/c", true), // DESIGN
    ("a/**", "a", false),    // DESIGN: `**` needs at least one fragment
    ("a/**", "a/b", true),
    ("**", "a", true),
    ("**", "a/b/c/d", true),
    ("**/c", "a/b/c", true),
    ("**/c", "c", false),
    ("**/c", "a/b/d", false),
    // `**` in the middle.
    ("a/**/c", "a/b/c", true),
    ("a/**/c", "a/b/x/c", true),
    ("a/**/c", "a/c", false), // `**` needs at least one fragment
    ("a/**/c", "a/b/c/d", false),
    ("a/**/c", "b/x/c", false),
    ("a/**/b/**/c", "a/x/b/y/c", true),
    ("a/**/b/**/c", "a/b/c", false),
    ("**/a/**", "a", false),
    ("**/a/**", "x/a/y", true),
    ("**/a/**", "x/y/a/b/c", true),
    // `**` on the publication side.
    ("a", "**", true), // DESIGN
    ("a/b/c", "**", true),
    ("a/b", "a/**", true),
    ("a", "a/**", false),
    ("a/c", "a/**/c", false),
    ("a/b/c", "**/c", true),
    // Wildcards on both sides.
    ("*", "*", true),
    ("**", "**", true),
    ("*", "**", true),
    ("**", "*", true),
    ("*/*", "**", true),
    ("*/*", "*", false),
    ("a/*", "*/b", true),
    ("a/*", "*/b/c", false),
    ("a/**", "**/b", true), // a/b
    ("a/**", "b/**", false),
    ("**/a", "a/**", true), // a/a
    ("a/**/b", "*", false),
    ("a/**/b", "*/*", false),  // needs three or more
    ("a/**/b", "*/*/*", true), // a/x/b
    ("a/**/b", "**", true),
    ("**/**", "*", false),
    ("**/**", "*/*/*/*", true),
    ("**/*/**", "*/*", false), // needs three or more
    ("**/*/**", "*/*/*", true),
    ("a/**/c", "a/**/c", true),
    ("a/**/c", "*/b/*", true),
    ("a/**/c", "*/b/d", false),
    ("**/x/**", "**/y/**", true), // q/x/y/q
    ("**/x", "**/y", false),
    ("x/**", "y/**", false),
    ("*/x/*", "*", false),
    ("**/b/*", "a/**", true),   // a/b/c
    ("a/*/**", "a/**/*", true), // a/b/c
    ("a/*/*", "a/**/*/*", false),
    ("**/**/**", "*/*", false),
    ("**/**/**", "**/**", true),
];

#[test]
fn table() {
    assert!(TABLE.len() >= 60, "only {} rows", TABLE.len());
    let mut failures = Vec::new();
    for (row, &(sub, publ, expected)) in TABLE.iter().enumerate() {
        let (s, p) = (topic(sub), topic(publ));
        let forward = overlaps(&s, &p);
        let backward = overlaps(&p, &s);
        let via_matches = s.matches(&p);
        if forward != expected || backward != expected || via_matches != expected {
            failures.push(format!(
                "row {row} ({sub:?}, {publ:?}): expected {expected}, \
                 overlaps(sub, pub) = {forward}, overlaps(pub, sub) = {backward}, \
                 sub.matches(pub) = {via_matches}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 2. Brute-force reference for `overlaps`
// ---------------------------------------------------------------------------------------------

/// Reference matcher: does the pattern (fragments as strings, `*` and `**` as wildcards) match the
/// concrete fragment list? Plain backtracking, written independently of the library.
fn ref_match(pattern: &[&str], concrete: &[&str]) -> bool {
    match pattern.split_first() {
        None => concrete.is_empty(),
        Some((&"**", rest)) => (1..=concrete.len()).any(|k| ref_match(rest, &concrete[k..])),
        Some((&"*", rest)) => !concrete.is_empty() && ref_match(rest, &concrete[1..]),
        Some((lit, rest)) => concrete.first() == Some(lit) && ref_match(rest, &concrete[1..]),
    }
}

/// Literals that patterns use in the brute-force tests.
const PATTERN_ALPHABET: [&str; 4] = ["a", "b", "*", "**"];
/// Fragments of the concrete topics enumerated: the pattern literals plus one fresh letter.
const CONCRETE_ALPHABET: [&str; 3] = ["a", "b", "c"];

/// Every concrete topic over [`CONCRETE_ALPHABET`] with exactly `len` fragments.
fn concrete_topics(len: usize) -> Vec<Vec<&'static str>> {
    let mut all = vec![Vec::new()];
    for _ in 0..len {
        all = all
            .into_iter()
            .flat_map(|prefix| {
                CONCRETE_ALPHABET.iter().map(move |f| {
                    let mut t = prefix.clone();
                    t.push(*f);
                    t
                })
            })
            .collect();
    }
    all
}

// Why enumerating concrete topics of at most `len_a + len_b - 1` fragments over {a, b, c} decides
// whether patterns `a` and `b` (over {a, b, *, **}) overlap:
//
// Take any common witness `w` (a concrete topic matched by both). Matching `w` against `a` cuts it
// into `len_a` consecutive non-empty segments, one per fragment of `a`; likewise for `b`. A literal or
// `*` fragment takes a segment of exactly one fragment of `w`, a `**` a segment of one or more.
// Call position k of `w` a *start* if a segment of `a` or of `b` starts at k. Position 0 starts
// a segment on both sides, so there are at most `len_a + len_b - 1` starts. If some position k is
// not a start, then on each side k lies inside a segment that started earlier, so that segment has
// at least two fragments and therefore belongs to a `**`. Deleting fragment k from `w` shrinks one
// `**` segment on each side by one, leaving it non-empty (it keeps its start), and leaves every
// other segment, in particular every literal one, unchanged: the shorter `w` is still a common
// witness. Repeating, some witness has only starts, i.e. at most `len_a + len_b - 1` fragments.
// Finally, replace every fragment of that witness that sits under no literal on either side by
// `c` (wildcards match anything) and every other one is `a` or `b` as its literal demands, so a
// witness over {a, b, c} of that length exists. Conversely anything found is a genuine witness.
// So with at most 4 fragments per pattern, 7 fragments always suffice.

/// Brute-force `overlaps`: the length of the shortest common witness, if there is one of at most
/// `max_len` fragments.
fn shortest_witness(a: &[&str], b: &[&str], max_len: usize) -> Option<usize> {
    (1..=max_len).find(|&len| {
        concrete_topics(len)
            .iter()
            .any(|w| ref_match(a, w) && ref_match(b, w))
    })
}

/// Every pattern over [`PATTERN_ALPHABET`] with 1..=`max` fragments.
fn all_patterns(max: usize) -> Vec<Vec<&'static str>> {
    let mut out = Vec::new();
    let mut layer = vec![Vec::new()];
    for _ in 0..max {
        layer = layer
            .into_iter()
            .flat_map(|prefix: Vec<&'static str>| {
                PATTERN_ALPHABET.iter().map(move |f| {
                    let mut p = prefix.clone();
                    p.push(*f);
                    p
                })
            })
            .collect();
        out.extend(layer.iter().cloned());
    }
    out
}

/// Exhaustive version of the brute-force comparison: all 340 × 340 pairs of patterns with 1..=4
/// fragments over {a, b, *, **}. Each pattern's matches among the concrete topics of 1..=7
/// fragments over {a, b, c} (7 = 4 + 4 - 1, see the argument above) are kept as a bit set; two
/// patterns overlap exactly when their bit sets intersect.
#[test]
fn overlaps_agrees_with_brute_force_on_every_small_pair() {
    const MAX_FRAGMENTS: usize = 4;
    let bound = 2 * MAX_FRAGMENTS - 1;
    let concrete: Vec<Vec<&str>> = (1..=bound).flat_map(concrete_topics).collect();
    let words = concrete.len().div_ceil(64);
    let patterns = all_patterns(MAX_FRAGMENTS);
    assert_eq!(patterns.len(), 4 + 16 + 64 + 256);

    let sets: Vec<Vec<u64>> = patterns
        .iter()
        .map(|p| {
            let mut bits = vec![0u64; words];
            for (i, w) in concrete.iter().enumerate() {
                if ref_match(p, w) {
                    bits[i / 64] |= 1 << (i % 64);
                }
            }
            bits
        })
        .collect();
    let topics: Vec<Topic> = patterns.iter().map(|p| topic(&p.join("/"))).collect();

    let mut failures = Vec::new();
    for (i, (ta, sa)) in topics.iter().zip(&sets).enumerate() {
        for (tb, sb) in topics.iter().zip(&sets).skip(i) {
            let expected = sa.iter().zip(sb).any(|(x, y)| x & y != 0);
            if overlaps(ta, tb) != expected || overlaps(tb, ta) != expected {
                failures.push(format!("overlaps({ta}, {tb}) should be {expected}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(20)]
    );
}

fn small_pattern() -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(prop::sample::select(&PATTERN_ALPHABET[..]), 1..=4)
}

/// A valid topic (wildcards allowed) over a wider alphabet, up to 12 fragments.
fn valid_topic() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            3 => "[A-Za-z0-9_-]{1,6}",
            1 => "[ab]",
            1 => Just("*".to_owned()),
            1 => Just("**".to_owned()),
        ],
        1..=12,
    )
    .prop_map(|v| v.join("/"))
}

/// A concrete topic over a small alphabet, so that it often matches patterns from [`valid_topic`].
fn concrete_topic() -> impl Strategy<Value = String> {
    prop::collection::vec("[abc]|[A-Za-z0-9_-]{1,4}", 1..=12).prop_map(|v| v.join("/"))
}

/// Reference validator, written without looking at the library: split on `/`, check each fragment.
fn ref_valid(s: &str) -> bool {
    s.len() <= MAX_TOPIC_LEN
        && s.split('/').all(|f| {
            f == "*"
                || f == "**"
                || (!f.is_empty()
                    && f.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        })
}

/// Strings that sit near the grammar's edges: valid fragments, stray slashes and stars, bad
/// characters, and lengths around [`MAX_TOPIC_LEN`].
fn tricky_string() -> impl Strategy<Value = String> {
    prop_oneof![
        // Short strings over an alphabet full of separators and wildcards.
        "[ab_*/ .\\-\u{e9}\u{0}\n\"]{0,12}",
        // Long, mostly valid topics (lengths from 1 to roughly 500 bytes), sometimes spoiled.
        (
            prop::collection::vec(
                prop_oneof![
                    4 => "[A-Za-z0-9_-]{1,6}",
                    1 => Just("*".to_owned()),
                    1 => Just("**".to_owned()),
                    1 => "[*a]{0,3}",
                    1 => "[a-z]{0,2}[^A-Za-z0-9_/*-][a-z]{0,2}",
                ],
                1..100,
            ),
            prop::option::of(prop::sample::select(&["/", "//", "/x", ""][..])),
        )
            .prop_map(|(frags, edge)| {
                let mut s = frags.join("/");
                if let Some(e) = edge {
                    s.push_str(e);
                }
                s
            }),
        // Exactly around the length limit.
        (250usize..=260, "[a-z]").prop_map(|(n, c)| c.repeat(n)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// (a) `overlaps` equals a brute-force search over every concrete topic of up to
    /// `len_a + len_b` fragments over {a, b, c} (one more than the bound proved above, and the
    /// shortest witness found must respect that bound).
    #[test]
    fn overlaps_matches_brute_force(a in small_pattern(), b in small_pattern()) {
        let (ta, tb) = (topic(&a.join("/")), topic(&b.join("/")));
        let proved_bound = a.len() + b.len() - 1;
        let shortest = shortest_witness(&a, &b, proved_bound + 1);
        prop_assert_eq!(overlaps(&ta, &tb), shortest.is_some(), "{} vs {}: witness {:?}", ta, tb, shortest);
        if let Some(len) = shortest {
            prop_assert!(len <= proved_bound, "{} vs {}: shortest witness has {} fragments", ta, tb, len);
        }
    }

    /// `matches` against a concrete topic equals the reference matcher, on bigger inputs.
    #[test]
    fn matches_concrete_equals_reference(p in valid_topic(), c in concrete_topic()) {
        let (tp, tc) = (topic(&p), topic(&c));
        let pf: Vec<&str> = p.split('/').collect();
        let cf: Vec<&str> = c.split('/').collect();
        prop_assert_eq!(tp.matches(&tc), ref_match(&pf, &cf), "{} vs {}", p, c);
    }

    /// (b) Symmetry, on the small domain and on bigger topics.
    #[test]
    fn overlaps_is_symmetric(a in valid_topic(), b in valid_topic(), sa in small_pattern(), sb in small_pattern()) {
        let (ta, tb) = (topic(&a), topic(&b));
        prop_assert_eq!(overlaps(&ta, &tb), overlaps(&tb, &ta), "{} vs {}", a, b);
        let (ta, tb) = (topic(&sa.join("/")), topic(&sb.join("/")));
        prop_assert_eq!(overlaps(&ta, &tb), overlaps(&tb, &ta), "{} vs {}", ta, tb);
    }

    /// (c) Reflexivity: every valid topic overlaps itself (and a copy of itself).
    #[test]
    fn overlaps_is_reflexive(a in valid_topic()) {
        let t = topic(&a);
        prop_assert!(overlaps(&t, &t), "{}", a);
        prop_assert!(overlaps(&t, &t.clone()), "{}", a);
    }

    /// (d) `Topic::new` never panics and accepts exactly what the reference validator accepts; on
    /// success it keeps the string, on failure the one-line message names the topic.
    #[test]
    fn new_agrees_with_reference_validator(s in prop_oneof![any::<String>(), "\\PC{0,400}", tricky_string()]) {
        let result = Topic::new(&s);
        prop_assert_eq!(result.is_ok(), ref_valid(&s), "{:?} -> {:?}", s, result);
        match result {
            Ok(t) => {
                prop_assert_eq!(t.as_str(), s.as_str());
                prop_assert_eq!(s.parse::<Topic>(), Ok(t.clone()));
                prop_assert_eq!(Topic::try_from(s.clone()), Ok(t));
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(!msg.contains('\n'), "{:?}", msg);
                prop_assert!(msg.starts_with("invalid topic \""), "{:?}", msg);
                if s.chars().count() <= 300 {
                    prop_assert_eq!(e.topic(), s.as_str());
                    let quoted = format!("{s:?}");
                    prop_assert!(msg.contains(&quoted), "{:?}", msg);
                } else {
                    prop_assert!(e.topic().ends_with('…'), "{:?}", e.topic());
                    prop_assert!(msg.len() < 2000, "{:?}", msg);
                }
            }
        }
    }

    /// (e) `**` overlaps every topic, concrete or not.
    #[test]
    fn double_star_overlaps_everything(c in concrete_topic(), p in valid_topic()) {
        let all = topic("**");
        let (tc, tp) = (topic(&c), topic(&p));
        prop_assert!(!tc.is_wildcard());
        prop_assert!(overlaps(&tc, &all), "{}", c);
        prop_assert!(all.matches(&tc), "{}", c);
        prop_assert!(overlaps(&all, &tp), "{}", p);
        prop_assert!(overlaps(&tp, &all), "{}", p);
    }
}
