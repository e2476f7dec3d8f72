//! The streaming secret matcher: finds the needles of the secrets in play in
//! a body that arrives chunk by chunk, to mask them in place (responses) or
//! to report the first (the leak scan of uploads). It holds back only the
//! bytes that could still begin a needle, never a whole body. It never logs,
//! and never hands out the bytes it matched.

use std::ops::Range;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, Input, MatchKind, Span, packed};

/// The byte a masked secret byte becomes: same length, so Content-Length and
/// chunk sizes stay true.
pub const MASK: u8 = b'*';

/// One credential's needles, compiled once (when the credential is loaded).
/// Matching is ASCII case-insensitive without folding the text first: the
/// vectorised searcher looks for every letter case of each needle's first
/// bytes, and each place it finds is compared whole, in any case.
pub struct Needles {
    /// `None` when there is nothing to look for.
    finder: Option<Finder>,
    /// The needles lowercased.
    lower: Vec<Box<[u8]>>,
    /// Whether a (lowercase) byte begins some needle.
    first: [bool; 256],
    longest: usize,
}

/// The most bytes of each needle the vectorised searcher looks for: three
/// keep chance finds in ordinary text rare.
const PREFIX_BYTES: usize = 3;
/// The most letter-case prefixes it is given: past this a shorter prefix
/// (fewer cases) searches faster.
const MOST_PREFIXES: usize = 32;

/// Finds where the next needle may begin.
enum Finder {
    /// Teddy over the needles' prefixes in every letter case, where the CPU
    /// has the vector instructions for it. Its finds are only candidates.
    Packed(packed::Searcher),
    /// The whole needles, ASCII case-insensitive.
    Automaton(AhoCorasick),
}

impl Finder {
    fn new(needles: &[Box<[u8]>]) -> Option<Finder> {
        let shortest = needles.iter().map(|n| n.len()).min()?;
        // One byte would stop the search at every common letter.
        for bytes in (2..=PREFIX_BYTES.min(shortest)).rev() {
            let prefixes = case_variants(needles, bytes);
            if prefixes.len() > MOST_PREFIXES {
                continue;
            }
            if let Some(searcher) = packed::Config::new().builder().extend(&prefixes).build() {
                return Some(Finder::Packed(searcher));
            }
        }
        AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostFirst)
            .build(needles)
            .ok()
            .map(Finder::Automaton)
    }

    /// The first place at or after `at` where a needle may begin.
    fn next(&self, text: &[u8], at: usize) -> Option<usize> {
        let span = Span::from(at..text.len());
        let found = match self {
            Finder::Packed(searcher) => searcher.find_in(text, span),
            Finder::Automaton(automaton) => automaton.find(Input::new(text).span(span)),
        };
        found.map(|m| m.start())
    }
}

/// The first `bytes` of each (lowercase) needle in every letter case.
fn case_variants(needles: &[Box<[u8]>], bytes: usize) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for needle in needles {
        let mut cases = vec![Vec::with_capacity(bytes)];
        for &b in &needle[..bytes] {
            let upper = b.to_ascii_uppercase();
            for i in 0..cases.len() {
                if upper != b {
                    let mut other = cases[i].clone();
                    other.push(upper);
                    cases.push(other);
                }
                cases[i].push(b);
            }
        }
        for case in cases {
            if !out.contains(&case) {
                out.push(case);
            }
        }
    }
    out
}

/// Whether `text` begins with the lowercase `needle`, in any ASCII case.
fn begins_with(text: &[u8], needle: &[u8]) -> bool {
    text.get(..needle.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(needle))
}

impl Needles {
    pub fn new<T: AsRef<[u8]>>(needles: &[T]) -> Needles {
        let mut lower: Vec<Box<[u8]>> = Vec::new();
        for needle in needles.iter().map(AsRef::as_ref) {
            let needle = needle.to_ascii_lowercase().into_boxed_slice();
            if !needle.is_empty() && !lower.contains(&needle) {
                lower.push(needle);
            }
        }
        let mut first = [false; 256];
        for n in &lower {
            first[usize::from(n[0])] = true;
        }
        Needles {
            finder: Finder::new(&lower),
            longest: lower.iter().map(|n| n.len()).max().unwrap_or(0),
            lower,
            first,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.finder.is_none()
    }

    /// Whether some needle is in `text`, in any ASCII case.
    pub fn found_in(&self, text: &[u8]) -> bool {
        let mut found = false;
        self.each_match(text, |_| {
            found = true;
            false
        });
        found
    }

    /// Every match in `text`, in any ASCII case, overlapping ones included,
    /// in order of start; `found` returns whether to go on.
    fn each_match(&self, text: &[u8], mut found: impl FnMut(Range<usize>) -> bool) {
        let Some(finder) = &self.finder else {
            return;
        };
        let mut at = 0;
        while let Some(start) = finder.next(text, at) {
            for needle in &self.lower {
                if begins_with(&text[start..], needle) && !found(start..start + needle.len()) {
                    return;
                }
            }
            at = start + 1;
        }
    }

    /// The length of the longest tail of `text` that is a proper beginning
    /// of some needle: the bytes that must wait for the next chunk.
    fn pending(&self, text: &[u8]) -> usize {
        let from = text.len().saturating_sub(self.longest.saturating_sub(1));
        for start in from..text.len() {
            if !self.first[usize::from(text[start].to_ascii_lowercase())] {
                continue;
            }
            let tail = &text[start..];
            let begins = (self.lower.iter()).any(|n| n.len() > tail.len() && begins_with(n, tail));
            if begins {
                return tail.len();
            }
        }
        0
    }

    /// Every byte of every match in `text` masked in place.
    pub fn mask_in(&self, text: &mut [u8]) {
        let mut ranges = Vec::new();
        self.each_match(text, |r| {
            ranges.push(r);
            true
        });
        for r in ranges {
            text[r].fill(MASK);
        }
    }
}

/// What holds [`Needles`]: a credential, or the needles themselves.
pub trait Secrets {
    fn needles(&self) -> &Needles;
}

impl Secrets for Needles {
    fn needles(&self) -> &Needles {
        self
    }
}

impl<T: Secrets> Secrets for Arc<T> {
    fn needles(&self) -> &Needles {
        (**self).needles()
    }
}

impl<T: Secrets> Secrets for &T {
    fn needles(&self) -> &Needles {
        (**self).needles()
    }
}

/// The longest tail any of `sets` must hold back.
fn pending<S: Secrets>(sets: &[S], text: &[u8]) -> usize {
    sets.iter()
        .map(|s| s.needles().pending(text))
        .max()
        .unwrap_or(0)
}

/// A match the leak scan found: which set, and where in the stream it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub set: usize,
    pub end: u64,
}

/// The state of one body's scan between chunks.
#[derive(Default)]
pub struct Stream {
    /// The tail of the data so far that could still begin a needle,
    /// unmasked, so that a needle that goes on in the next chunk is found.
    held: Vec<u8>,
    /// Bytes at the front of `held` that a match released earlier covered.
    carry: usize,
    /// Where `held` begins in the stream.
    offset: u64,
    /// Reused, so that a chunk costs no allocation once warm.
    masks: Vec<Range<usize>>,
}

/// One chunk's scan. Its text is the held bytes, then the chunk:
/// `text()[..release]` may go now, the rest waits. Dropping it keeps the
/// rest for the next chunk.
pub struct Step<'s, 'd> {
    stream: &'s mut Stream,
    data: &'d [u8],
    /// The text is `stream.held` (with `data` appended) rather than `data`.
    joined: bool,
    pub release: usize,
    /// The bytes held before this chunk: the text's first `before` bytes.
    pub before: usize,
}

impl Step<'_, '_> {
    pub fn text(&self) -> &[u8] {
        if self.joined {
            &self.stream.held
        } else {
            self.data
        }
    }

    /// The ranges of the text to mask; they may reach past `release`.
    pub fn masks(&self) -> &[Range<usize>] {
        &self.stream.masks
    }

    /// The released bytes with their masks applied, appended to `out`.
    pub fn write_released(&self, out: &mut Vec<u8>) {
        let at = out.len();
        out.extend_from_slice(&self.text()[..self.release]);
        for r in self.masks() {
            let r = r.start.min(self.release)..r.end.min(self.release);
            out[at + r.start..at + r.end].fill(MASK);
        }
    }
}

impl Drop for Step<'_, '_> {
    fn drop(&mut self) {
        let stream = &mut *self.stream;
        // A mask that straddles the release goes on into what is held. The
        // carried one counts even when nothing is released: its match began
        // in bytes already gone, so no rescan can find it again.
        let covered = (stream.masks.iter())
            .filter(|r| r.start < self.release)
            .map(|r| r.end)
            .max()
            .unwrap_or(0)
            .max(stream.carry);
        stream.carry = covered.saturating_sub(self.release);
        if self.joined {
            stream.held.drain(..self.release);
        } else {
            stream.held.extend_from_slice(&self.data[self.release..]);
        }
        stream.offset += self.release as u64;
    }
}

impl Stream {
    /// Bytes held back, waiting for the next chunk.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Scans `data` after what was held, for masking: every match of every
    /// set is in [`Step::masks`]. With `last`, nothing is held.
    pub fn mask<'s, 'd, S: Secrets>(
        &'s mut self,
        sets: &[S],
        data: &'d [u8],
        last: bool,
    ) -> Step<'s, 'd> {
        self.masks.clear();
        if self.carry > 0 {
            self.masks.push(0..self.carry);
        }
        let joined = !self.held.is_empty();
        if joined {
            self.held.extend_from_slice(data);
        }
        let text: &[u8] = if joined { &self.held } else { data };
        for set in sets {
            set.needles().each_match(text, |r| {
                self.masks.push(r);
                true
            });
        }
        let release = if last {
            text.len()
        } else {
            text.len() - pending(sets, text)
        };
        Step {
            before: if joined { text.len() - data.len() } else { 0 },
            stream: self,
            data,
            joined,
            release,
        }
    }

    /// Scans `data` after what was held, for the leak scan: the first match
    /// (by where it ends, then by set), or how much may go on.
    pub fn detect<'s, 'd, S: Secrets>(
        &'s mut self,
        sets: &[S],
        data: &'d [u8],
        last: bool,
    ) -> Result<Step<'s, 'd>, Hit> {
        self.masks.clear();
        let joined = !self.held.is_empty();
        if joined {
            self.held.extend_from_slice(data);
        }
        let text: &[u8] = if joined { &self.held } else { data };
        let mut first: Option<(usize, usize)> = None;
        for (i, set) in sets.iter().enumerate() {
            set.needles().each_match(text, |r| {
                let earliest = first.map_or(usize::MAX, |(end, _)| end);
                // Matches come in order of start: one that begins after the
                // earliest end so far cannot end before it.
                if r.start >= earliest {
                    return false;
                }
                if r.end < earliest {
                    first = Some((r.end, i));
                }
                true
            });
        }
        if let Some((end, set)) = first {
            return Err(Hit {
                set,
                end: self.offset + end as u64,
            });
        }
        let release = if last {
            text.len()
        } else {
            text.len() - pending(sets, text)
        };
        Ok(Step {
            before: if joined { text.len() - data.len() } else { 0 },
            stream: self,
            data,
            joined,
            release,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The masked output of `chunks`, as the stream releases it.
    fn masked(sets: &[&Needles], chunks: &[&[u8]]) -> Vec<u8> {
        let mut stream = Stream::default();
        let mut out = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let step = stream.mask(sets, chunk, i + 1 == chunks.len());
            step.write_released(&mut out);
        }
        if chunks.is_empty() {
            stream.mask(sets, &[], true).write_released(&mut out);
        }
        out
    }

    fn detected(sets: &[&Needles], chunks: &[&[u8]]) -> Option<Hit> {
        let mut stream = Stream::default();
        for (i, chunk) in chunks.iter().enumerate() {
            if let Err(hit) = stream.detect(sets, chunk, i + 1 == chunks.len()) {
                return Some(hit);
            }
        }
        None
    }

    fn whole_mask(needles: &Needles, body: &[u8]) -> Vec<u8> {
        let mut out = body.to_vec();
        needles.mask_in(&mut out);
        out
    }

    #[test]
    fn a_needle_split_across_two_and_three_chunks_is_masked() {
        let n = Needles::new(&["secret-value"]);
        let body = b"a secret-value b";
        assert_eq!(
            masked(&[&n], &[b"a secr", b"et-value b"]),
            b"a ************ b"
        );
        assert_eq!(
            masked(&[&n], &[b"a sec", b"ret-v", b"alue b"]),
            b"a ************ b"
        );
        assert_eq!(masked(&[&n], &[body]), whole_mask(&n, body));
    }

    #[test]
    fn overlapping_needles_are_both_masked() {
        let n = Needles::new(&["abcdef", "defghi"]);
        assert_eq!(masked(&[&n], &[b"xabcdefghiy"]), b"x*********y");
        assert_eq!(masked(&[&n], &[b"xabcdef", b"ghiy"]), b"x*********y");
        assert_eq!(masked(&[&n], &[b"xabc", b"def", b"ghiy"]), b"x*********y");
    }

    #[test]
    fn needles_at_the_edges_and_empty_chunks() {
        let n = Needles::new(&["TOKEN123"]);
        assert_eq!(masked(&[&n], &[b"token123"]), b"********");
        assert_eq!(
            masked(&[&n], &[b"", b"Tok", b"", b"en123", b""]),
            b"********"
        );
        assert_eq!(
            masked(&[&n], &[b"x token12"]),
            b"x token12",
            "a partial needle at the end is no match"
        );
        assert_eq!(masked(&[&n], &[]), b"");
    }

    #[test]
    fn a_chunk_whose_tail_cannot_begin_a_needle_goes_whole() {
        let n = Needles::new(&["sk_live_abcdef"]);
        let mut stream = Stream::default();
        let event = b"data: {\"x\":1}\n\n";
        let step = stream.mask(&[&n], event, false);
        assert_eq!(step.release, event.len());
        drop(step);
        assert_eq!(stream.held(), 0);
        let step = stream.mask(&[&n], b"data: sk_", false);
        assert_eq!(step.release, 6, "only the possible start waits");
    }

    #[test]
    fn detection_reports_the_first_match_and_never_releases_a_whole_needle() {
        let a = Needles::new(&["first-secret"]);
        let b = Needles::new(&["second-secret"]);
        let hit = detected(&[&a, &b], &[b"xx second-sec", b"ret first-secret"]);
        assert_eq!(hit, Some(Hit { set: 1, end: 16 }));
        let mut stream = Stream::default();
        let step = stream.detect(&[&a], b"..first-secre", false).unwrap();
        assert_eq!(step.release, 2);
    }

    #[test]
    fn many_needles_fall_back_to_the_automaton_and_match_the_same() {
        // A cookie of many pairs gives more letter-case prefixes than the
        // vectorised searcher takes; the automaton must find exactly what
        // it would.
        let needles: Vec<String> = (0..100u8)
            .map(|i| {
                format!(
                    "{}{}-cookie-{i:03}",
                    char::from(b'a' + i % 26),
                    char::from(b'a' + i / 26)
                )
            })
            .collect();
        let n = Needles::new(&needles);
        assert!(matches!(n.finder, Some(Finder::Automaton(_))));
        let few = Needles::new(&needles[..3]);
        assert!(matches!(few.finder, Some(Finder::Packed(_))));
        let body = b"a HA-COOKIE-007 b vd-cookie-099aa-cookie-000 c".to_vec();
        let whole = whole_mask(&n, &body);
        assert_eq!(whole, b"a ************* b ************************** c");
        for cut in 0..body.len() {
            let (a, b) = body.split_at(cut);
            assert_eq!(masked(&[&n], &[a, b]), whole, "cut at {cut}");
        }
        // `007` is only in the second set; it ends first.
        assert_eq!(
            detected(&[&few, &n], &[&body[..10], &body[10..]]),
            Some(Hit { set: 1, end: 15 })
        );
    }

    #[test]
    fn prefixes_in_every_letter_case_find_a_needle_in_any_case() {
        let n = Needles::new(&["Sk-Live-1234"]);
        assert!(matches!(n.finder, Some(Finder::Packed(_))));
        for body in [&b"x sk-live-1234"[..], b"SK-LIVE-1234 x", b"sK-lIvE-1234"] {
            assert!(n.found_in(body), "{}", String::from_utf8_lossy(body));
        }
        assert!(
            !n.found_in(b"sk-live-123 sk-"),
            "a prefix alone is no match"
        );
    }

    /// Every match by comparing at each place: what the searchers must agree with.
    fn naive_ranges(needles: &[Vec<u8>], body: &[u8]) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        for start in 0..body.len() {
            for n in needles {
                let end = start + n.len();
                if end <= body.len()
                    && body[start..end].eq_ignore_ascii_case(n)
                    && !out.contains(&(start..end))
                {
                    out.push(start..end);
                }
            }
        }
        out
    }

    fn splits(len: usize) -> impl Strategy<Value = Vec<usize>> {
        proptest::collection::vec(0..=len, 0..6).prop_map(|mut cuts| {
            cuts.sort_unstable();
            cuts
        })
    }

    fn cut<'a>(body: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut chunks = Vec::new();
        let mut at = 0;
        for &c in cuts {
            chunks.push(&body[at..c]);
            at = c;
        }
        chunks.push(&body[at..]);
        chunks
    }

    fn case() -> impl Strategy<Value = (Vec<Vec<u8>>, Vec<u8>, Vec<usize>)> {
        // A small alphabet, so needles and bodies overlap often.
        let byte = prop_oneof![Just(b'a'), Just(b'B'), Just(b'b'), Just(b'c'), Just(b'\n')];
        let needle = proptest::collection::vec(byte.clone(), 1..6);
        (
            proptest::collection::vec(needle, 1..4),
            proptest::collection::vec(byte, 0..40),
        )
            .prop_flat_map(|(needles, body)| {
                let len = body.len();
                (Just(needles), Just(body), splits(len))
            })
    }

    proptest! {
        #[test]
        fn any_split_masks_as_the_whole_body_does((needles, body, cuts) in case()) {
            let n = Needles::new(&needles);
            let chunks = cut(&body, &cuts);
            let out = masked(&[&n], &chunks);
            prop_assert_eq!(&out, &whole_mask(&n, &body));
            prop_assert!(!n.found_in(&out) || needles.iter().any(|x| x.contains(&MASK)));
            // Bytes outside every match are unchanged.
            let mut inside = vec![false; body.len()];
            n.each_match(&body, |r| { inside[r].fill(true); true });
            for (i, (o, b)) in out.iter().zip(&body).enumerate() {
                if !inside[i] {
                    prop_assert_eq!(o, b);
                }
            }
        }

        #[test]
        fn every_match_is_found_in_any_case(
            needles in proptest::collection::vec("[a-cA-C0-9-]{1,8}", 1..12),
            body in "[a-cA-C0-9 -]{0,80}",
        ) {
            let needles: Vec<Vec<u8>> = needles.into_iter().map(String::into_bytes).collect();
            let n = Needles::new(&needles);
            let mut found = Vec::new();
            n.each_match(body.as_bytes(), |r| { found.push(r); true });
            let mut naive = naive_ranges(&needles, body.as_bytes());
            naive.sort_by_key(|r| (r.start, r.end));
            found.sort_by_key(|r| (r.start, r.end));
            found.dedup();
            prop_assert_eq!(found, naive);
        }

        #[test]
        fn any_split_detects_what_the_whole_body_does((needles, body, cuts) in case()) {
            let half = needles.len() / 2;
            let a = Needles::new(&needles[..half]);
            let b = Needles::new(&needles[half..]);
            let chunks = cut(&body, &cuts);
            prop_assert_eq!(detected(&[&a, &b], &chunks), detected(&[&a, &b], &[&body]));
        }
    }
}
