//! The streaming secret matcher: whatever the needles, the body and the
//! cuts between its chunks, streaming masks exactly what masking the whole
//! body does, leaves no needle unmasked, and the leak scan reports the same
//! first match as a scan of the whole.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sidekeyd::scrub::{MASK, Needles, Stream};

/// The input: a byte of needle count, each needle as a length byte and its
/// bytes, a byte of cut count, each cut as a byte, then the body.
struct Case<'a> {
    needles: Vec<&'a [u8]>,
    cuts: Vec<usize>,
    body: &'a [u8],
}

fn parse(mut data: &[u8]) -> Option<Case<'_>> {
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, rest) = (data.get(..n)?, data.get(n..)?);
        data = rest;
        Some(head)
    };
    let count = usize::from(take(1)?[0] % 4) + 1;
    let mut needles = Vec::new();
    for _ in 0..count {
        let len = usize::from(take(1)?[0] % 16) + 1;
        needles.push(take(len)?);
    }
    let cut_count = usize::from(take(1)?[0] % 8);
    let raw_cuts = take(cut_count)?.to_vec();
    let body = data;
    let mut cuts: Vec<usize> = raw_cuts
        .iter()
        .map(|&c| usize::from(c) * body.len() / 255)
        .collect();
    cuts.sort_unstable();
    Some(Case {
        needles,
        cuts,
        body,
    })
}

fn chunks<'a>(body: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    for &c in cuts {
        out.push(&body[at..c]);
        at = c;
    }
    out.push(&body[at..]);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some(case) = parse(data) else {
        return;
    };
    let needles = Needles::new(&case.needles);
    let sets = [&needles];
    let parts = chunks(case.body, &case.cuts);

    let mut whole = case.body.to_vec();
    needles.mask_in(&mut whole);

    let mut stream = Stream::default();
    let mut streamed = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let step = stream.mask(&sets, part, i + 1 == parts.len());
        step.write_released(&mut streamed);
    }
    assert_eq!(streamed, whole, "streaming masked differently");
    if !case.needles.iter().any(|n| n.contains(&MASK)) {
        assert!(!needles.found_in(&streamed), "a needle survived the mask");
    }

    let detect = |parts: &[&[u8]]| {
        let mut stream = Stream::default();
        for (i, part) in parts.iter().enumerate() {
            if let Err(hit) = stream.detect(&sets, part, i + 1 == parts.len()) {
                return Some(hit);
            }
        }
        None
    };
    assert_eq!(
        detect(&parts),
        detect(&[case.body]),
        "streaming detected differently"
    );
});
