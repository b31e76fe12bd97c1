//! Scan text sixteen bytes at a time.
//!
//! A guardrail's own time goes mostly into finding the few places in a
//! prompt where something it looks for may start. Testing byte after byte
//! costs a bounds-checked load and a few branches per byte in WebAssembly;
//! [`Bytes16`] compares sixteen bytes in one WebAssembly SIMD instruction,
//! and [`scan`] walks a text in such windows and says where the first hit
//! is:
//!
//! ```
//! use weir_policy::lanes::{self, Bytes16};
//!
//! /// The first ASCII digit at or after `from` that starts a number.
//! fn next_number(b: &[u8], from: usize) -> Option<usize> {
//!     let digit = |v: Bytes16| v.within(b'0', b'9');
//!     match lanes::scan(b, from, |w| digit(w.bytes()) & !digit(w.before())) {
//!         Ok(at) => Some(at),
//!         // Fewer than eight bytes left: one at a time.
//!         Err(rest) => (rest..b.len())
//!             .find(|&i| b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_digit())),
//!     }
//! }
//!
//! assert_eq!(next_number(b"call 0800 555 0199 today, ask for Ann", 0), Some(5));
//! assert_eq!(next_number(b"call 0800 555 0199 today, ask for Ann", 6), Some(10));
//! assert_eq!(next_number(b"call 0800 555 0199 today, ask for Ann", 11), Some(14));
//! assert_eq!(next_number(b"call 0800 555 0199 today, ask for Ann", 18), None);
//! assert_eq!(next_number(b"call 0800", 0), Some(5));
//! ```
//!
//! Windows are whole: [`scan`] takes sixteen bytes at a time, then eight
//! (a [`Bytes16::half`] window) if that many are left, and leaves the last
//! few to the caller (copying them into a padded window costs more than
//! testing them one at a time, for the short texts of streamed deltas).
//!
//! Built for `wasm32` with the `simd128` target feature
//! (`-C target-feature=+simd128`; this repository's `.cargo/config.toml`
//! sets it for `wasm32-wasip2`), each operation is one or two SIMD
//! instructions, which wasmtime compiles to the host's vector
//! instructions. Anywhere else — native tests, or a `wasm32` build
//! without the feature — the same operations run a lane at a time, with
//! the same results.

use core::ops::{BitAnd, BitOr, Not};

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use core::arch::wasm32 as simd;

/// Sixteen consecutive bytes of a text, one per lane.
#[derive(Clone, Copy, Debug)]
pub struct Bytes16(Inner);

/// One yes or no per lane of a [`Bytes16`]; combine with `&`, `|` and `!`.
#[derive(Clone, Copy, Debug)]
pub struct Lanes(LaneMask);

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
type Inner = simd::v128;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
type LaneMask = simd::v128;

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
type Inner = [u8; 16];
/// Bit `i` is lane `i`.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
type LaneMask = u16;

impl Bytes16 {
    /// `b[at..at + 16]`, or `None` if fewer than sixteen bytes are left.
    #[inline]
    pub fn at(b: &[u8], at: usize) -> Option<Self> {
        let bytes: &[u8; 16] = b.get(at..at.checked_add(16)?)?.try_into().ok()?;
        Some(Self(imp::load(bytes)))
    }

    /// Each lane's predecessor: `b[at - 1..at + 15]`, with 0 in the first
    /// lane when `at` is 0; `None` if fewer than sixteen bytes are left
    /// at `at`.
    #[inline]
    pub fn before(b: &[u8], at: usize) -> Option<Self> {
        if b.len() < at.checked_add(16)? {
            return None;
        }
        match at.checked_sub(1) {
            Some(prev) => Self::at(b, prev),
            None => Self::at(b, 0).map(|x| Self(imp::shift_in_zero(x.0))),
        }
    }

    /// Each lane's successor: `b[at + 1..at + 17]`, with 0 in the last
    /// lane when the text ends at `at + 16`; `None` if fewer than sixteen
    /// bytes are left at `at`.
    #[inline]
    pub fn after(b: &[u8], at: usize) -> Option<Self> {
        match Self::at(b, at.checked_add(1)?) {
            Some(next) => Some(next),
            None if b.len() == at.checked_add(16)? => {
                Self::at(b, at).map(|x| Self(imp::shift_out(x.0)))
            }
            None => None,
        }
    }

    /// `b[at..at + 8]` in lanes 0–7 and 0 in lanes 8–15 (for the last
    /// eight to fifteen bytes of a text), or `None` if fewer than eight
    /// bytes are left.
    #[inline]
    pub fn half(b: &[u8], at: usize) -> Option<Self> {
        Some(Self(imp::from_u64(u64_at(b, at)?)))
    }

    /// [`Bytes16::before`] for [`Bytes16::half`]: `b[at - 1..at + 7]` in
    /// lanes 0–7 (0 in lane 0 when `at` is 0), 0 in lanes 8–15.
    #[inline]
    pub fn half_before(b: &[u8], at: usize) -> Option<Self> {
        let x = u64_at(b, at)?;
        let p = match at.checked_sub(1) {
            Some(prev) => u64_at(b, prev)?,
            None => x << 8,
        };
        Some(Self(imp::from_u64(p)))
    }

    /// [`Bytes16::after`] for [`Bytes16::half`]: `b[at + 1..at + 9]` in
    /// lanes 0–7 (0 in lane 7 when the text ends at `at + 8`), 0 in lanes
    /// 8–15.
    #[inline]
    pub fn half_after(b: &[u8], at: usize) -> Option<Self> {
        let n = match u64_at(b, at.checked_add(1)?) {
            Some(next) => next,
            None => u64_at(b, at)? >> 8,
        };
        Some(Self(imp::from_u64(n)))
    }

    /// Each lane OR `bits`: `x.or(0x20).eq(b'k')` finds `k` and `K`.
    #[inline]
    pub fn or(self, bits: u8) -> Self {
        Self(imp::or(self.0, bits))
    }

    /// The lanes that are `c`.
    #[inline]
    pub fn eq(self, c: u8) -> Lanes {
        Lanes(imp::eq(self.0, c))
    }

    /// The lanes from `lo` to `hi`, both included (`lo <= hi`).
    #[inline]
    pub fn within(self, lo: u8, hi: u8) -> Lanes {
        Lanes(imp::within(self.0, lo, hi))
    }

    /// The lanes that are not ASCII (bit 7 set: a byte of a multi-byte
    /// UTF-8 character).
    #[inline]
    pub fn non_ascii(self) -> Lanes {
        Lanes(imp::non_ascii(self.0))
    }
}

/// One window of a [`scan`]: sixteen bytes of the text (or eight, in
/// lanes 0–7, at its end), with their predecessors and successors lane
/// for lane, read when asked for.
#[derive(Clone, Copy, Debug)]
pub struct Window<'a> {
    b: &'a [u8],
    at: usize,
    half: bool,
}

impl Window<'_> {
    /// Where the window starts in the text.
    pub fn start(&self) -> usize {
        self.at
    }

    /// The window's bytes ([`Bytes16::at`], or [`Bytes16::half`]).
    #[inline]
    pub fn bytes(&self) -> Bytes16 {
        self.read(Bytes16::at, Bytes16::half)
    }

    /// Each byte's predecessor ([`Bytes16::before`]).
    #[inline]
    pub fn before(&self) -> Bytes16 {
        self.read(Bytes16::before, Bytes16::half_before)
    }

    /// Each byte's successor ([`Bytes16::after`]).
    #[inline]
    pub fn after(&self) -> Bytes16 {
        self.read(Bytes16::after, Bytes16::half_after)
    }

    #[inline(always)]
    fn read(
        &self,
        full: fn(&[u8], usize) -> Option<Bytes16>,
        half: fn(&[u8], usize) -> Option<Bytes16>,
    ) -> Bytes16 {
        let read = if self.half { half } else { full };
        // `scan` makes only windows these reads succeed on.
        read(self.b, self.at).unwrap_or(Bytes16(imp::from_u64(0)))
    }
}

/// The first position at or after `from` whose lane `test` sets, trying
/// sixteen bytes at a time while they last and then eight; `Err(rest)`
/// when no lane was set: the bytes from `rest` on, fewer than eight, are
/// the caller's to test one at a time. Lanes past the end of a half window
/// are 0: `test` must not set a lane for a 0 byte there.
#[inline]
pub fn scan(
    b: &[u8],
    mut from: usize,
    mut test: impl FnMut(&Window<'_>) -> Lanes,
) -> Result<usize, usize> {
    let mut hit = |at, half| test(&Window { b, at, half }).first().map(|k| at + k);
    let fits = |from: usize, n| from.checked_add(n).is_some_and(|end| end <= b.len());
    while fits(from, 16) {
        if let Some(found) = hit(from, false) {
            return Ok(found);
        }
        from += 16;
    }
    if fits(from, 8) {
        if let Some(found) = hit(from, true) {
            return Ok(found);
        }
        from += 8;
    }
    Err(from)
}

/// `b[at..at + 8]` as a little-endian `u64`.
#[inline]
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = b.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

impl Lanes {
    /// No lane.
    #[inline]
    pub fn none() -> Self {
        Lanes(imp::NONE)
    }

    /// The first lane that is set (0 to 15).
    #[inline]
    pub fn first(self) -> Option<usize> {
        let bits = self.bits();
        (bits != 0).then(|| bits.trailing_zeros() as usize)
    }

    /// One bit a lane: bit `i` is lane `i` (to build bitmaps of a text).
    #[inline]
    pub fn bits(self) -> u16 {
        imp::bitmask(self.0)
    }

    /// Is any lane set?
    #[inline]
    pub fn any(self) -> bool {
        imp::any(self.0)
    }
}

impl BitAnd for Lanes {
    type Output = Lanes;
    #[inline]
    fn bitand(self, other: Lanes) -> Lanes {
        Lanes(imp::and(self.0, other.0))
    }
}

impl BitOr for Lanes {
    type Output = Lanes;
    #[inline]
    fn bitor(self, other: Lanes) -> Lanes {
        Lanes(imp::or_lanes(self.0, other.0))
    }
}

impl Not for Lanes {
    type Output = Lanes;
    #[inline]
    fn not(self) -> Lanes {
        Lanes(imp::not(self.0))
    }
}

/// WebAssembly SIMD: a lane mask is a vector of `0xFF` or `0` bytes.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod imp {
    use super::simd::{self, v128};

    pub const NONE: v128 = simd::u64x2(0, 0);

    #[inline]
    pub fn load(bytes: &[u8; 16]) -> v128 {
        // SAFETY: `bytes` is sixteen readable bytes; `v128_load` needs no
        // alignment.
        unsafe { simd::v128_load(bytes.as_ptr().cast()) }
    }

    #[inline]
    pub fn from_u64(x: u64) -> v128 {
        simd::u64x2(x, 0)
    }

    #[inline]
    pub fn shift_in_zero(x: v128) -> v128 {
        simd::i8x16_shuffle::<16, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14>(x, NONE)
    }

    #[inline]
    pub fn shift_out(x: v128) -> v128 {
        simd::i8x16_shuffle::<1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16>(x, NONE)
    }

    #[inline]
    pub fn or(x: v128, bits: u8) -> v128 {
        simd::v128_or(x, simd::u8x16_splat(bits))
    }

    #[inline]
    pub fn eq(x: v128, c: u8) -> v128 {
        simd::u8x16_eq(x, simd::u8x16_splat(c))
    }

    #[inline]
    pub fn within(x: v128, lo: u8, hi: u8) -> v128 {
        // `x - lo <= hi - lo`, unsigned: one subtraction, one comparison.
        let span = hi.wrapping_sub(lo);
        simd::u8x16_le(
            simd::u8x16_sub(x, simd::u8x16_splat(lo)),
            simd::u8x16_splat(span),
        )
    }

    #[inline]
    pub fn non_ascii(x: v128) -> v128 {
        simd::i8x16_lt(x, NONE)
    }

    #[inline]
    pub fn bitmask(m: v128) -> u16 {
        simd::u8x16_bitmask(m)
    }

    #[inline]
    pub fn any(m: v128) -> bool {
        simd::v128_any_true(m)
    }

    #[inline]
    pub fn and(a: v128, b: v128) -> v128 {
        simd::v128_and(a, b)
    }

    #[inline]
    pub fn or_lanes(a: v128, b: v128) -> v128 {
        simd::v128_or(a, b)
    }

    #[inline]
    pub fn not(a: v128) -> v128 {
        simd::v128_not(a)
    }
}

/// A lane at a time: a lane mask is a `u16`, bit `i` for lane `i`.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
mod imp {
    pub const NONE: u16 = 0;

    pub fn load(bytes: &[u8; 16]) -> [u8; 16] {
        *bytes
    }

    pub fn from_u64(x: u64) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&x.to_le_bytes());
        out
    }

    pub fn shift_in_zero(x: [u8; 16]) -> [u8; 16] {
        let mut out = [0; 16];
        out[1..].copy_from_slice(&x[..15]);
        out
    }

    pub fn shift_out(x: [u8; 16]) -> [u8; 16] {
        let mut out = [0; 16];
        out[..15].copy_from_slice(&x[1..]);
        out
    }

    pub fn or(x: [u8; 16], bits: u8) -> [u8; 16] {
        x.map(|b| b | bits)
    }

    fn mask(x: [u8; 16], test: impl Fn(u8) -> bool) -> u16 {
        x.iter()
            .enumerate()
            .filter(|(_, b)| test(**b))
            .fold(0, |m, (i, _)| m | 1 << i)
    }

    pub fn eq(x: [u8; 16], c: u8) -> u16 {
        mask(x, |b| b == c)
    }

    pub fn within(x: [u8; 16], lo: u8, hi: u8) -> u16 {
        mask(x, |b| (lo..=hi).contains(&b))
    }

    pub fn non_ascii(x: [u8; 16]) -> u16 {
        mask(x, |b| !b.is_ascii())
    }

    pub fn bitmask(m: u16) -> u16 {
        m
    }

    pub fn any(m: u16) -> bool {
        m != 0
    }

    pub fn and(a: u16, b: u16) -> u16 {
        a & b
    }

    pub fn or_lanes(a: u16, b: u16) -> u16 {
        a | b
    }

    pub fn not(a: u16) -> u16 {
        !a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: [usize; 0] = [];

    fn lanes(l: Lanes) -> Vec<usize> {
        (0..16).filter(|i| l.bits() & (1 << i) != 0).collect()
    }

    #[test]
    fn windows_are_whole() {
        let b = b"0123456789abcdefg";
        assert!(Bytes16::at(b, 1).is_some());
        assert!(Bytes16::at(b, 2).is_none());
        assert!(Bytes16::at(b, usize::MAX).is_none());
        assert!(Bytes16::before(b, 1).is_some());
        assert!(Bytes16::before(b, 2).is_none());
        assert!(Bytes16::before(b, usize::MAX).is_none());
        // The successors of the last sixteen bytes end in a 0.
        assert!(Bytes16::after(b, 1).is_some());
        assert_eq!(lanes(Bytes16::after(b, 1).unwrap().eq(0)), [15]);
        assert_eq!(lanes(Bytes16::after(b, 0).unwrap().eq(0)), NONE);
        assert!(Bytes16::after(b, 2).is_none());
        assert!(Bytes16::after(b, usize::MAX).is_none());
    }

    #[test]
    fn half_windows_fill_eight_lanes() {
        let b = b"a0cdefgh";
        assert_eq!(
            lanes(Bytes16::half(b, 0).unwrap().eq(0)),
            (8..16).collect::<Vec<_>>()
        );
        assert_eq!(lanes(Bytes16::half(b, 0).unwrap().eq(b'h')), [7]);
        assert!(Bytes16::half(b, 1).is_none());
        assert!(Bytes16::half(b, usize::MAX).is_none());
        let before = Bytes16::half_before(b, 0).unwrap();
        assert_eq!(lanes(before.eq(0)), (0..1).chain(8..16).collect::<Vec<_>>());
        assert_eq!(lanes(before.eq(b'a')), [1]);
        let after = Bytes16::half_after(b, 0).unwrap();
        assert_eq!(lanes(after.eq(0)), (7..16).collect::<Vec<_>>());
        assert_eq!(lanes(after.eq(b'0')), [0]);
        let longer = b"xa0cdefghy";
        assert_eq!(
            lanes(Bytes16::half_before(longer, 1).unwrap().eq(b'x')),
            [0]
        );
        assert_eq!(lanes(Bytes16::half_after(longer, 1).unwrap().eq(b'y')), [7]);
        assert!(Bytes16::half_before(longer, 3).is_none());
        assert!(Bytes16::half_after(longer, 3).is_none());
    }

    #[test]
    fn scans_whole_then_half_windows_and_leaves_the_rest() {
        let text = b"x........y...............z.....y..";
        let find = |from, c| scan(text, from, |w| w.bytes().eq(c));
        assert_eq!(find(0, b'y'), Ok(9));
        assert_eq!(find(10, b'y'), Ok(31));
        // `z` is in the half window after sixteen bytes from 2.
        assert_eq!(find(2, b'z'), Ok(25));
        // From 26, eight bytes remain: one half window, then 0 left.
        assert_eq!(find(26, b'x'), Err(34));
        // From 28, six remain: nothing scanned.
        assert_eq!(find(28, b'y'), Err(28));
        assert_eq!(find(usize::MAX, b'y'), Err(usize::MAX));
        // Neighbours, in a whole and a half window.
        let after_y = |from| scan(text, from, |w| w.before().eq(b'y') & w.bytes().eq(b'.'));
        assert_eq!(after_y(0), Ok(10));
        assert_eq!(after_y(18), Ok(32));
        assert_eq!(after_y(26), Ok(32));
        let windows = core::cell::RefCell::new(Vec::new());
        let _ = scan(text, 3, |w| {
            windows.borrow_mut().push(w.start());
            w.after().eq(b'z')
        });
        assert_eq!(windows.into_inner(), [3, 19]);
    }

    #[test]
    fn neighbours_line_up_with_their_lanes() {
        let b = b"a0cdefghijklmnoz";
        let zero = |v: Bytes16| lanes(v.eq(0));
        // Lane 0 has no predecessor at the start of the text.
        assert_eq!(zero(Bytes16::before(b, 0).unwrap()), [0]);
        assert_eq!(lanes(Bytes16::before(b, 0).unwrap().eq(b'a')), [1]);
        // Lane 15 has no successor at its end.
        assert_eq!(zero(Bytes16::after(b, 0).unwrap()), [15]);
        assert_eq!(lanes(Bytes16::after(b, 0).unwrap().eq(b'0')), [0]);
        let longer = b"xa0cdefghijklmnozy";
        assert_eq!(lanes(Bytes16::before(longer, 1).unwrap().eq(b'x')), [0]);
        assert_eq!(lanes(Bytes16::after(longer, 1).unwrap().eq(b'y')), [15]);
    }

    #[test]
    fn comparisons_per_lane() {
        let x = Bytes16::at("Az09_é-zZ@ \u{7f}kK!?".as_bytes(), 0).unwrap();
        assert_eq!(lanes(x.within(b'0', b'9')), [2, 3]);
        assert_eq!(lanes(x.within(b'a', b'z')), [1, 8, 13]);
        assert_eq!(lanes(x.within(0x80, 0xFF)), [5, 6]);
        assert_eq!(lanes(x.non_ascii()), [5, 6]);
        assert_eq!(lanes(x.or(0x20).eq(b'k')), [13, 14]);
        assert_eq!(lanes(x.eq(b'@')), [10]);
        let digit_or_z = x.within(b'0', b'9') | x.eq(b'z');
        assert_eq!(lanes(digit_or_z), [1, 2, 3, 8]);
        assert_eq!(lanes(digit_or_z & !x.eq(b'z')), [2, 3]);
        assert_eq!(digit_or_z.first(), Some(1));
        assert_eq!(digit_or_z.bits(), 0b1_0000_1110);
        assert!(digit_or_z.any());
        assert_eq!(x.eq(b'#').first(), None);
        assert!(!Lanes::none().any());
    }
}
