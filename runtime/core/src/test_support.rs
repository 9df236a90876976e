//! Helpers shared by the core's tests.

use std::vec::Vec;

/// `text` cut into pieces at `cuts` (taken modulo the length, moved back to character
/// boundaries): the arbitrary split points a stream delivers text at.
pub(crate) fn split<'a>(text: &'a str, cuts: &[usize]) -> Vec<&'a str> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| {
            let mut c = c % (text.len() + 1);
            while !text.is_char_boundary(c) {
                c -= 1;
            }
            c
        })
        .collect();
    points.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for p in points {
        pieces.push(&text[start..p]);
        start = p;
    }
    pieces.push(&text[start..]);
    pieces
}
