//! Histograms in JSON: HdrHistogram's own V2 serialization, in base64, so
//! that documents of several generators can be merged into exact
//! percentiles (never averaged ones).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;

/// Latencies below this many microseconds are tallied exactly ([`Tally`]):
/// a histogram of 3 significant digits from 1 µs has one bucket per
/// microsecond below 2048.
pub const EXACT: usize = 2048;

/// The latencies of the second being answered, counted in a flat array
/// before they go into that second's HDR histogram.
///
/// Recording into an `hdrhistogram::Histogram` cost about as much as the
/// rest of an answer's handling; an increment in an array costs next to
/// nothing. Below [`EXACT`] µs the histogram has a bucket per
/// microsecond, so adding each tallied value with its count when the
/// second is flushed gives exactly the histogram that recording every
/// answer would have given (a histogram does not depend on the order of
/// its records). Longer latencies, and answers of an earlier second
/// arriving after a later one's, are recorded directly.
#[derive(Default)]
pub struct Tally {
    second: usize,
    counts: Vec<u64>,
    /// How many are tallied.
    n: u64,
}

impl Tally {
    /// Records `us` microseconds for an answer due in `second`.
    #[inline]
    pub fn record(&mut self, timeline: &mut Vec<Histogram<u64>>, second: usize, us: u64) {
        if second != self.second {
            if second < self.second {
                record(timeline, second, us);
                return;
            }
            self.flush(timeline);
            self.second = second;
        }
        if let Some(count) = self.counts.get_mut(us as usize) {
            *count += 1;
            self.n += 1;
        } else if self.counts.is_empty() && (us as usize) < EXACT {
            self.counts = vec![0; EXACT];
            self.counts[us as usize] = 1;
            self.n = 1;
        } else {
            record(timeline, second, us);
        }
    }

    /// Adds what is tallied into its second's histogram.
    pub fn flush(&mut self, timeline: &mut Vec<Histogram<u64>>) {
        if self.n == 0 {
            return;
        }
        grow(timeline, self.second);
        let h = &mut timeline[self.second];
        for (us, count) in self.counts.iter_mut().enumerate() {
            if *count > 0 {
                h.saturating_record_n(us as u64, *count);
                *count = 0;
            }
        }
        self.n = 0;
    }
}

/// Records `us` into the histogram of `second`.
fn record(timeline: &mut Vec<Histogram<u64>>, second: usize, us: u64) {
    grow(timeline, second);
    timeline[second].saturating_record(us);
}

/// Makes `timeline` hold `second`.
fn grow(timeline: &mut Vec<Histogram<u64>>, second: usize) {
    if timeline.len() <= second {
        timeline.resize_with(second + 1, super::run::histogram);
    }
}

/// What the JSON says about the encoding.
pub const ENCODING: &str = "HdrHistogram V2, base64";

/// A histogram as base64 text.
pub fn encode(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut bytes)
        .expect("serializing into memory");
    STANDARD.encode(bytes)
}

/// The histogram of [`encode`]'s text, resized to the generator's bounds.
pub fn decode(text: &str) -> Result<Histogram<u64>, String> {
    let bytes = STANDARD
        .decode(text)
        .map_err(|e| format!("a histogram is not base64: {e}"))?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("a histogram does not decode: {e:?}"))?;
    let mut out = super::run::histogram();
    out.add(&h)
        .map_err(|e| format!("a histogram has other bounds: {e:?}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::run::histogram;

    #[test]
    fn a_tally_gives_exactly_the_histograms_of_recording_each_value() {
        let (mut direct, mut tallied) = (Vec::new(), Vec::new());
        let mut tally = Tally::default();
        let mut x = 12345u64;
        for i in 0..20_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Mostly short, some long; seconds mostly rising, with
            // stragglers of the second before.
            let us = if x % 50 == 0 {
                1 + (x >> 20) % 5_000_000
            } else {
                1 + (x >> 20) % 3000
            };
            let second = (i / 5000) as usize - usize::from(i % 5000 < 100 && i >= 5000);
            record(&mut direct, second, us);
            tally.record(&mut tallied, second, us);
        }
        tally.flush(&mut tallied);
        assert_eq!(tallied.len(), 4);
        assert_eq!(tallied, direct);
        assert_eq!(tallied[3].max(), direct[3].max());
        let total: u64 = tallied.iter().map(|h| h.len()).sum();
        assert_eq!(total, 20_000);
    }

    #[test]
    fn round_trips_exactly() {
        let mut h = histogram();
        for v in [1, 7, 70, 700, 7000, 70_000, 99_000_000] {
            h.record_n(v, v % 13 + 1).unwrap();
        }
        let back = decode(&encode(&h)).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.value_at_quantile(0.99), h.value_at_quantile(0.99));
        assert!(decode("not base64!").unwrap_err().contains("not base64"));
        assert!(decode("AAAA").unwrap_err().contains("does not decode"));
    }
}
