//! Per-minute rollups of the numbers in payloads, kept by the writer next to the records.
//!
//! One record per topic and minute. Key (12 bytes): topic id with its top bit set (`u32` BE, so that
//! no block range of a topic reaches it), the minute's start in µs (`u64` BE). Value: the number of
//! fields (`u8`), then per field its id (`u16` BE; 0 counts messages) and its statistics (48 bytes:
//! count `u64`, then min, max, sum, first, last as `f64`, all BE).

/// A minute, in µs.
pub(crate) const MINUTE: u64 = 60_000_000;
/// Field id of the message count.
pub(crate) const COUNT: u16 = 0;
/// Numbers of one payload rolled up at most.
pub(crate) const MAX_FIELDS: usize = 16;
/// The top bit of a topic id marks its rollups.
const ROLLUP_BIT: u32 = 1 << 31;

/// The statistics of one field over one minute (or bucket).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Acc {
    pub(crate) count: u64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) sum: f64,
    pub(crate) first: f64,
    pub(crate) last: f64,
}

impl Acc {
    pub(crate) fn new(v: f64) -> Self {
        Self { count: 1, min: v, max: v, sum: v, first: v, last: v }
    }

    pub(crate) fn add(&mut self, v: f64) {
        self.count += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += v;
        self.last = v;
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(48);
        v.extend_from_slice(&self.count.to_be_bytes());
        for x in [self.min, self.max, self.sum, self.first, self.last] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v
    }

    pub(crate) fn decode(v: &[u8]) -> Option<Self> {
        let f =
            |i: usize| v.get(8 + i * 8..16 + i * 8).and_then(|b| b.try_into().ok()).map(f64::from_be_bytes);
        Some(Self {
            count: u64::from_be_bytes(v.get(..8)?.try_into().ok()?),
            min: f(0)?,
            max: f(1)?,
            sum: f(2)?,
            first: f(3)?,
            last: f(4)?,
        })
    }
}

/// The key of the rollups of topic `id` for the minute starting at `minute_us`.
pub(crate) fn key(id: u32, minute_us: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&(id | ROLLUP_BIT).to_be_bytes());
    k[4..12].copy_from_slice(&minute_us.to_be_bytes());
    k
}

/// The minute of a rollup key.
pub(crate) fn minute_of(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(4..12)?.try_into().ok()?))
}

/// The value of a minute's rollups.
pub(crate) fn encode(fields: &[(u16, Acc)]) -> Vec<u8> {
    let n = fields.len().min(usize::from(u8::MAX));
    let mut v = Vec::with_capacity(1 + n * 50);
    v.push(n as u8);
    for (field, acc) in &fields[..n] {
        v.extend_from_slice(&field.to_be_bytes());
        v.extend_from_slice(&acc.encode());
    }
    v
}

/// Calls `f` with each field of a minute's rollups.
pub(crate) fn decode(v: &[u8], mut f: impl FnMut(u16, Acc)) -> Option<()> {
    let n = usize::from(*v.first()?);
    for i in 0..n {
        let at = 1 + i * 50;
        let field = u16::from_be_bytes(v.get(at..at + 2)?.try_into().ok()?);
        f(field, Acc::decode(v.get(at + 2..at + 50)?)?);
    }
    Some(())
}

/// The rollups of one topic for its current minute, in the segment they are written to.
#[derive(Debug, Clone)]
pub(crate) struct Minute {
    pub(crate) segment: std::sync::Arc<str>,
    pub(crate) minute: u64,
    /// By field id; `COUNT` first.
    pub(crate) fields: Vec<(u16, Acc)>,
    /// Changed since it was last written.
    pub(crate) dirty: bool,
}

impl Minute {
    pub(crate) fn add(&mut self, field: u16, v: f64) {
        match self.fields.iter_mut().find(|(f, _)| *f == field) {
            Some((_, acc)) => acc.add(v),
            None => self.fields.push((field, Acc::new(v))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollups_add_and_encode() {
        let mut a = Acc::new(3.0);
        a.add(-1.5);
        a.add(10.0);
        assert_eq!(a, Acc { count: 3, min: -1.5, max: 10.0, sum: 11.5, first: 3.0, last: 10.0 });
        assert_eq!(Acc::decode(&a.encode()), Some(a));
        assert_eq!(minute_of(&key(7, 120_000_000)), Some(120_000_000));
        assert!(key(7, 0)[..4] > crate::record::key(u32::MAX >> 1, u64::MAX)[..4], "after every block key");
        let fields = [(COUNT, Acc::new(1.0)), (9, a)];
        let mut back = Vec::new();
        decode(&encode(&fields), |f, acc| back.push((f, acc))).unwrap();
        assert_eq!(back, fields);
        assert!(decode(&encode(&fields)[..60], |_, _| {}).is_none(), "truncated");
    }
}
