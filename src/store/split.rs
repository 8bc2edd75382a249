//! Splits a tree's key space into contiguous ranges, so that a walk over a large
//! tree (start-up reads and checks every record) can run on every core.
//!
//! The split points are interpolated between the first and the last key. Keys
//! are rarely spread evenly over byte values (hex digits fill 16 of the 55 values
//! between `0` and `f`), so a tree is cut into many more parts than there are
//! threads, and the threads take parts in turn until none is left: a crowded part
//! is then a small share of the work. The ranges are never wrong, whatever the
//! points: they cover the whole key space, in order, without overlap.
use std::ops::Bound;
use std::sync::Mutex;

/// Parts a tree is cut into: enough that the largest is a few percent of a tree
/// of hex ids.
pub(super) const PARTS: usize = 64;

/// One part of a tree's key space.
pub(super) type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// Bytes after the common prefix that the interpolation looks at.
const WIDTH: usize = 8;

/// The first 8 bytes of `key` from `from`, as a big-endian number (missing bytes
/// count as zero).
fn window(key: &[u8], from: usize) -> u64 {
    let mut b = [0u8; WIDTH];
    for (i, v) in key.iter().skip(from).take(WIDTH).enumerate() {
        b[i] = *v;
    }
    u64::from_be_bytes(b)
}

/// Up to `parts - 1` keys strictly between `first` and `last`, increasing.
pub(super) fn split_points(first: &[u8], last: &[u8], parts: usize) -> Vec<Vec<u8>> {
    let prefix = first.iter().zip(last).take_while(|(a, b)| a == b).count();
    let (lo, hi) = (window(first, prefix), window(last, prefix));
    let mut points: Vec<Vec<u8>> = Vec::new();
    if hi <= lo {
        return points;
    }
    for k in 1..parts {
        let step = (u128::from(hi - lo) * k as u128 / parts as u128) as u64;
        let mut p = first[..prefix].to_vec();
        p.extend_from_slice(&(lo + step).to_be_bytes());
        // Only points inside (first, last) and past the previous one: ranges
        // must be in order and never empty-by-inversion.
        if p.as_slice() > first && p.as_slice() < last && points.last().is_none_or(|q| p > *q) {
            points.push(p);
        }
    }
    points
}

/// The ranges between the points: the first and the last are open-ended, so
/// keys written below `first` or above `last` meanwhile are still covered.
pub(super) fn ranges_between(points: Vec<Vec<u8>>) -> Vec<KeyRange> {
    let mut out = Vec::with_capacity(points.len() + 1);
    let mut start = Bound::Unbounded;
    for p in points {
        out.push((start, Bound::Excluded(p.clone())));
        start = Bound::Included(p);
    }
    out.push((start, Bound::Unbounded));
    out
}

/// About `parts` ranges covering `tree` (one when it is empty or has one key).
pub(super) fn ranges(tree: &sled::Tree, parts: usize) -> Result<Vec<KeyRange>, sled::Error> {
    let points = match (tree.first()?, tree.last()?) {
        (Some((first, _)), Some((last, _))) if parts > 1 => split_points(&first, &last, parts),
        _ => Vec::new(),
    };
    Ok(ranges_between(points))
}

/// Runs `f` on every item, `threads` at a time, each thread taking the next item
/// as it finishes one. Results come back in the items' order.
pub(super) fn in_parallel<I: Send, R: Send>(
    items: Vec<I>,
    threads: usize,
    f: impl Fn(I) -> R + Sync,
) -> Vec<R> {
    let n = items.len();
    let queue = Mutex::new(items.into_iter().enumerate());
    let next = || queue.lock().unwrap_or_else(|e| e.into_inner()).next();
    let run = || {
        let mut done = Vec::new();
        while let Some((i, item)) = next() {
            done.push((i, f(item)));
        }
        done
    };
    let mut all: Vec<(usize, R)> = std::thread::scope(|sc| {
        let helpers: Vec<_> = (1..threads.clamp(1, n.max(1)))
            .map(|_| sc.spawn(run))
            .collect();
        let mut all = run();
        for h in helpers {
            all.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        all
    });
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::RangeBounds;

    fn holder(ranges: &[KeyRange], key: &[u8]) -> Vec<usize> {
        let key = key.to_vec();
        ranges
            .iter()
            .enumerate()
            .filter(|(_, r)| (r.0.clone(), r.1.clone()).contains(&key))
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn every_key_falls_in_exactly_one_range_and_sequential_ids_split_evenly() {
        let keys: Vec<Vec<u8>> = (0..10_000u32)
            .map(|i| format!("sub-{i:032x}").into_bytes())
            .collect();
        let ranges = ranges_between(split_points(&keys[0], &keys[9_999], 4));
        assert_eq!(ranges.len(), 4);
        let mut per = [0usize; 4];
        for k in &keys {
            let h = holder(&ranges, k);
            assert_eq!(
                h.len(),
                1,
                "{:?} is in ranges {h:?}",
                String::from_utf8_lossy(k)
            );
            per[h[0]] += 1;
        }
        // Hex digits are not evenly spread over byte values, so the parts are
        // uneven, but no part is empty and none holds most of the keys.
        assert!(per.iter().all(|n| *n > 500 && *n < 6_000), "{per:?}");
        // Keys outside [first, last] (written during the walk) are covered too.
        assert_eq!(holder(&ranges, b"a").len(), 1);
        assert_eq!(holder(&ranges, b"zzz").len(), 1);
        assert_eq!(holder(&ranges, b"").len(), 1);
    }

    #[test]
    fn no_part_of_random_hex_ids_is_more_than_a_few_percent() {
        let keys: Vec<Vec<u8>> = (0..8_000u64)
            .map(|i| {
                let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
                format!("sub-{h:016x}{:016x}", h ^ 0xdead).into_bytes()
            })
            .collect();
        let (first, last) = (keys.iter().min().unwrap(), keys.iter().max().unwrap());
        let ranges = ranges_between(split_points(first, last, PARTS));
        let mut per = vec![0usize; ranges.len()];
        for k in &keys {
            per[holder(&ranges, k)[0]] += 1;
        }
        let largest = per.iter().max().unwrap();
        assert!(
            *largest < 8_000 / 12,
            "largest part {largest} of 8000: {per:?}"
        );
    }

    #[test]
    fn in_parallel_runs_every_item_once_and_keeps_their_order() {
        for threads in [1, 2, 7] {
            let out = in_parallel((0..100).collect(), threads, |i: u32| i * 2);
            assert_eq!(out, (0..100).map(|i| i * 2).collect::<Vec<_>>());
        }
        assert!(in_parallel(Vec::<u8>::new(), 4, |i| i).is_empty());
    }

    #[test]
    fn keys_that_cannot_be_split_give_one_range() {
        assert!(split_points(b"abc", b"abc", 4).is_empty());
        // Keys one byte value apart: few points or none, still correct.
        let a = [b"p".repeat(20), b"a".to_vec()].concat();
        let b = [b"p".repeat(20), b"b".to_vec()].concat();
        let pts = split_points(&a, &b, 3);
        let ranges = ranges_between(pts);
        assert_eq!(holder(&ranges, &a).len(), 1);
        assert_eq!(holder(&ranges, &b).len(), 1);
        // A first key that is a prefix of the last.
        let pts = split_points(b"job", b"job-zzzz", 4);
        assert!(pts.windows(2).all(|w| w[0] < w[1]));
        assert!(
            pts.iter()
                .all(|p| p.as_slice() > b"job".as_slice() && p.as_slice() < b"job-zzzz".as_slice())
        );
    }
}
