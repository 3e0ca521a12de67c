//! `sin`, `cos`, `tan` with astro-float (pure-Rust binary multiple precision).
//!
//! The decimal argument is converted to binary at a precision that covers
//! its integer part plus a large guard (sin(9e6144) needs about 20,700 bits),
//! reduced exactly enough by `x - k·π/2` with a cached high-precision π, and
//! the reduced argument (|r| <= π/4) is passed to astro-float's sin/cos at
//! 256 bits. If the reduction cancelled too many bits (x very close to a
//! multiple of π/2, like the numerators of π's continued fraction: an integer
//! of 3,000 digits can lie within 10^-3000 of one) the precision is raised
//! and the reduction redone, so the result always has well over 34 correct
//! digits; it is then rounded to 34 digits (within one unit of the last
//! digit, as the spec requires).
//!
//! Reducing ourselves rather than calling astro-float's `sin` on the huge
//! argument matters for speed: its series would run at the full 20,000-bit
//! precision (~150 ms per call), while the reduction costs about 0.4 ms.

use std::sync::OnceLock;

use astro_float_num::{BigFloat, Consts, Radix, RoundingMode};

use crate::error::CalcError;
use crate::limits::MAX_SUPPORTED_INTEGER_DIGITS;
use crate::value::{D34, Value, ctx34, exact_text, finish, parse34};

/// Bits of the reduced argument's result computation.
const RESULT_BITS: usize = 256;
/// Bits kept beyond the integer part of the argument during reduction.
const GUARD_BITS: usize = 256;
/// Correct bits the reduced argument must keep after cancellation.
const NEEDED_BITS: i64 = 160;
/// π is cached once per process at this precision: enough to reduce any
/// accepted integer argument (20,000 digits is about 66,440 bits).
const CACHED_PI_BITS: usize =
    ((MAX_SUPPORTED_INTEGER_DIGITS as f64 * std::f64::consts::LOG2_10) as usize) + 4096;

static PI: OnceLock<Option<BigFloat>> = OnceLock::new();

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sin,
    Cos,
    Tan,
}

pub(crate) fn sin(x: &Value) -> Result<D34, CalcError> {
    trig(x, Kind::Sin)
}

pub(crate) fn cos(x: &Value) -> Result<D34, CalcError> {
    trig(x, Kind::Cos)
}

pub(crate) fn tan(x: &Value) -> Result<D34, CalcError> {
    trig(x, Kind::Tan)
}

fn internal() -> CalcError {
    CalcError::domain("trigonometric computation failed")
}

/// π at `p` bits (from the process-wide cache when it is precise enough).
fn pi(p: usize, cc: &mut Consts) -> BigFloat {
    if p > 2048 && p <= CACHED_PI_BITS {
        let cached = PI.get_or_init(|| {
            let mut consts = Consts::new().ok()?;
            Some(consts.pi(CACHED_PI_BITS, RoundingMode::ToEven))
        });
        if let Some(cached) = cached {
            let mut value = cached.clone();
            if value.set_precision(p, RoundingMode::ToEven).is_ok() {
                return value;
            }
        }
    }
    cc.pi(p, RoundingMode::ToEven)
}

fn trig(x: &Value, kind: Kind) -> Result<D34, CalcError> {
    if x.is_zero() {
        return parse34(if kind == Kind::Cos { "1" } else { "0" }, 0);
    }
    // The exact argument as text, and an upper bound of its integer part's bits.
    let (text, int_bits) = match x {
        Value::Integer(n) => (
            n.to_string(),
            usize::try_from(n.bits()).unwrap_or(usize::MAX),
        ),
        Value::Decimal(d) => {
            let (coefficient, exponent) = exact_text(&d.0);
            let sign = if d.0.is_negative() { "-" } else { "" };
            let adjusted = exponent + i64::try_from(coefficient.len()).unwrap_or(0);
            let bits = if adjusted > 0 {
                (adjusted as f64 * std::f64::consts::LOG2_10) as usize + 2
            } else {
                0
            };
            (format!("{sign}{coefficient}e{exponent}"), bits)
        }
    };
    // An integer of b bits comes within about 2^-b of a multiple of π/2 (the numerators of
    // π's continued fraction do), so cancellation needs about b extra bits; twice that, plus a
    // margin, is a bound we expect no argument to reach (π's known partial quotients are
    // small), and reaching it is an error, never a wrong digit.
    let most_extra = int_bits.saturating_mul(2).saturating_add(4096);
    let mut extra = 0usize;
    while extra <= most_extra {
        let p = int_bits.saturating_add(GUARD_BITS).saturating_add(extra);
        let mut cc = Consts::new().map_err(|_| internal())?;
        let xb = BigFloat::parse(&text, Radix::Dec, p, RoundingMode::ToEven, &mut cc);
        if xb.is_nan() || xb.is_inf() {
            return Err(internal());
        }
        let (r, quadrant) = if xb.exponent().is_some_and(|e| e <= 0) {
            // |x| < 1 needs no reduction, and its relative error is 2^-p.
            (xb, 0u8)
        } else {
            let mut half_pi = pi(p + 64, &mut cc);
            let e = half_pi.exponent().ok_or_else(internal)?;
            half_pi.set_exponent(e - 1);
            let k = xb
                .div(&half_pi, p, RoundingMode::ToEven)
                .round(0, RoundingMode::ToEven);
            let r = xb.sub(
                &k.mul(&half_pi, p + 64, RoundingMode::ToEven),
                p,
                RoundingMode::ToEven,
            );
            // |x| < 2^int_bits was rounded to p bits and k·π/2 is accurate to
            // about the same absolute error: 2^(int_bits + 4 - p) bounds both.
            let error_exp =
                i64::try_from(int_bits).unwrap_or(i64::MAX) + 4 - i64::try_from(p).unwrap_or(0);
            // Bits of r that are right; none when everything cancelled (r is 0, whose
            // exponent says nothing).
            let correct_bits = match r.exponent() {
                Some(r_exp) if !r.is_zero() => i64::from(r_exp) - 1 - error_exp,
                _ => 0,
            };
            if correct_bits < NEEDED_BITS {
                // At least the bits missing, and at least twice as many as the last try, so
                // even a cancellation of tens of thousands of bits takes a dozen tries at most.
                let missing = usize::try_from(NEEDED_BITS - correct_bits.max(0)).unwrap_or(0);
                extra = extra
                    .saturating_add(missing)
                    .saturating_add(128)
                    .max(extra.saturating_mul(2));
                continue;
            }
            (r, quadrant(&k)?)
        };
        let y = evaluate_reduced(&r, kind, quadrant, &mut cc)?;
        let text = y
            .format(Radix::Dec, RoundingMode::ToEven, &mut cc)
            .map_err(|_| internal())?;
        let mut ctx = ctx34();
        let d = ctx.parse(text).map_err(|_| internal())?;
        return finish(d, ctx.status());
    }
    Err(internal())
}

/// `k mod 4` for an integral BigFloat `k`.
fn quadrant(k: &BigFloat) -> Result<u8, CalcError> {
    let m = k.rem(&BigFloat::from_u8(4, 64));
    for (value, q) in [
        (-3i8, 1u8),
        (-2, 2),
        (-1, 3),
        (0, 0),
        (1, 1),
        (2, 2),
        (3, 3),
    ] {
        if m.cmp(&BigFloat::from_i8(value, 64)) == Some(0) {
            return Ok(q);
        }
    }
    Err(internal())
}

/// sin, cos or tan of `x = r + quadrant·π/2` from sin(r) and cos(r).
fn evaluate_reduced(
    r: &BigFloat,
    kind: Kind,
    quadrant: u8,
    cc: &mut Consts,
) -> Result<BigFloat, CalcError> {
    let mut r = r.clone();
    r.set_precision(RESULT_BITS, RoundingMode::ToEven)
        .map_err(|_| internal())?;
    let s = r.sin(RESULT_BITS, RoundingMode::ToEven, cc);
    let c = r.cos(RESULT_BITS, RoundingMode::ToEven, cc);
    let y = match (kind, quadrant) {
        (Kind::Sin, 0) | (Kind::Cos, 3) => s,
        (Kind::Sin, 1) | (Kind::Cos, 0) => c,
        (Kind::Sin, 2) | (Kind::Cos, 1) => s.neg(),
        (Kind::Sin, _) | (Kind::Cos, _) => c.neg(),
        (Kind::Tan, q) if q % 2 == 0 => s.div(&c, RESULT_BITS, RoundingMode::ToEven),
        (Kind::Tan, _) => c.div(&s, RESULT_BITS, RoundingMode::ToEven).neg(),
    };
    if y.is_nan() || y.is_inf() {
        return Err(internal());
    }
    Ok(y)
}
