//! Histograms in JSON: HdrHistogram's own V2 serialization, in base64, so
//! that documents of several generators can be merged into exact
//! percentiles (never averaged ones).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;

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
