//! Packed-integer lane operations on 128-bit values (SSE2 P* instructions).
//! Lane i of width w occupies bits [w*i, w*i + w).

/// Lane `i` of width `w` bits, zero-extended.
#[inline(always)]
pub fn lane(v: u128, w: u32, i: u32) -> u64 {
    ((v >> (w * i)) as u64) & (u64::MAX >> (64 - w))
}

/// Lane `i` of width `w` bits, sign-extended.
#[inline(always)]
pub fn slane(v: u128, w: u32, i: u32) -> i64 {
    let sh = 64 - w;
    ((lane(v, w, i) << sh) as i64) >> sh
}

#[inline(always)]
fn put(w: u32, i: u32, x: u64) -> u128 {
    ((x & (u64::MAX >> (64 - w))) as u128) << (w * i)
}

/// Apply `f` to each pair of lanes.
#[inline(always)]
pub fn map2(a: u128, b: u128, w: u32, mut f: impl FnMut(u64, u64) -> u64) -> u128 {
    (0..128 / w).fold(0u128, |acc, i| acc | put(w, i, f(lane(a, w, i), lane(b, w, i))))
}

/// Apply `f` to each pair of lanes, viewed as signed.
#[inline(always)]
pub fn map2s(a: u128, b: u128, w: u32, f: impl Fn(i64, i64) -> i64) -> u128 {
    (0..128 / w).fold(0u128, |acc, i| acc | put(w, i, f(slane(a, w, i), slane(b, w, i)) as u64))
}

fn sat_s(v: i64, w: u32) -> i64 {
    let max = (1i64 << (w - 1)) - 1;
    v.clamp(-max - 1, max)
}

fn sat_u(v: i64, w: u32) -> i64 {
    v.clamp(0, (1i64 << w) - 1)
}

pub fn add(a: u128, b: u128, w: u32) -> u128 {
    map2(a, b, w, u64::wrapping_add)
}
pub fn sub(a: u128, b: u128, w: u32) -> u128 {
    map2(a, b, w, u64::wrapping_sub)
}
pub fn adds(a: u128, b: u128, w: u32) -> u128 {
    map2s(a, b, w, |x, y| sat_s(x + y, w))
}
pub fn subs(a: u128, b: u128, w: u32) -> u128 {
    map2s(a, b, w, |x, y| sat_s(x - y, w))
}
pub fn addus(a: u128, b: u128, w: u32) -> u128 {
    map2(a, b, w, |x, y| sat_u((x + y) as i64, w) as u64)
}
pub fn subus(a: u128, b: u128, w: u32) -> u128 {
    map2(a, b, w, |x, y| x.saturating_sub(y))
}

/// All-ones lanes where `f` holds.
pub fn cmp(a: u128, b: u128, w: u32, f: impl Fn(i64, i64) -> bool) -> u128 {
    map2s(a, b, w, |x, y| if f(x, y) { -1 } else { 0 })
}

/// Interleave the low (`high` = false) or high halves of a and b, lanes of `w`.
pub fn unpack(a: u128, b: u128, w: u32, high: bool) -> u128 {
    let n = 64 / w; // lanes per half
    let base = if high { n } else { 0 };
    (0..n).fold(0u128, |acc, i| acc | put(w, 2 * i, lane(a, w, base + i)) | put(w, 2 * i + 1, lane(b, w, base + i)))
}

/// Narrow signed lanes of `w` to `w/2` with signed (or unsigned) saturation:
/// a's lanes fill the low half, b's the high half.
pub fn pack(a: u128, b: u128, w: u32, unsigned: bool) -> u128 {
    let n = 128 / w;
    let nw = w / 2;
    let sat = |v: i64| if unsigned { sat_u(v, nw) } else { sat_s(v, nw) } as u64;
    (0..n).fold(0u128, |acc, i| acc | put(nw, i, sat(slane(a, w, i))) | put(nw, n + i, sat(slane(b, w, i))))
}

/// Shift each lane by a count; counts >= w give 0 (or all sign bits for SRA).
pub fn shift(a: u128, w: u32, count: u64, kind: ShiftKind) -> u128 {
    if count >= w as u64 {
        return match kind {
            ShiftKind::Sra => map2s(a, 0, w, |x, _| if x < 0 { -1 } else { 0 }),
            _ => 0,
        };
    }
    let c = count as u32;
    match kind {
        ShiftKind::Sll => map2(a, 0, w, |x, _| x << c),
        ShiftKind::Srl => map2(a, 0, w, |x, _| x >> c),
        ShiftKind::Sra => map2s(a, 0, w, |x, _| x >> c),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShiftKind {
    Sll,
    Srl,
    Sra,
}

/// PSHUFD-style: each `w`-bit lane of the result takes lane sel(i) of src.
pub fn shuffle(src: u128, w: u32, lanes: u32, first: u32, imm: u8) -> u128 {
    (0..lanes).fold(0u128, |acc, i| {
        let sel = ((imm >> (2 * i)) & 3) as u32;
        acc | put(w, first + i, lane(src, w, first + sel))
    })
}

/// PMADDWD: pairs of signed word products summed into dwords.
pub fn maddwd(a: u128, b: u128) -> u128 {
    (0..4).fold(0u128, |acc, i| {
        let p0 = slane(a, 16, 2 * i) * slane(b, 16, 2 * i);
        let p1 = slane(a, 16, 2 * i + 1) * slane(b, 16, 2 * i + 1);
        acc | put(32, i, (p0 + p1) as u64)
    })
}

/// PSADBW: per 64-bit half, the sum of absolute byte differences.
pub fn sadbw(a: u128, b: u128) -> u128 {
    (0..2).fold(0u128, |acc, h| {
        let s: u64 = (0..8).map(|j| lane(a, 8, 8 * h + j).abs_diff(lane(b, 8, 8 * h + j))).sum();
        acc | put(64, h, s)
    })
}

/// PMOVMSKB / MOVMSKPS / MOVMSKPD: the sign bit of each lane.
pub fn movmsk(a: u128, w: u32) -> u128 {
    (0..128 / w).fold(0u128, |acc, i| acc | (((lane(a, w, i) >> (w - 1)) as u128) << i))
}
