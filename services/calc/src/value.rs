//! Values (exact integers and 34-digit decimals), the decimal contexts, and
//! the conversions between them.
//!
//! Decimals are libdecNumber numbers (via the `dec` crate) held in a
//! `Decimal<12>` (room for 36 digits) and always rounded to 34 digits with
//! decimal128's exponent range, like Python's `decimal` with `prec=34,
//! Emax=6144, Emin=-6143, ROUND_HALF_EVEN`. When an integer meets a decimal it
//! is converted exactly into a [`Wide`] decimal, and only the result of the
//! operation is rounded, as `Decimal(int) op Decimal` does in Python.

use std::cmp::Ordering;
use std::fmt;

use dec::{Context, Rounding, Status};
use num_bigint::{BigInt, Sign};
use num_traits::{Signed, Zero};

use crate::error::{CalcError, ErrorKind};
use crate::limits::{DECIMAL_DIGITS, DECIMAL_EMAX, DECIMAL_EMIN, MAX_SUPPORTED_INTEGER_DIGITS};

/// A 34-digit decimal (the storage has room for 36).
pub(crate) type D34 = dec::Decimal<12>;

/// Digits of a [`Wide`] decimal: any integer we accept
/// ([`MAX_SUPPORTED_INTEGER_DIGITS`]) plus the span of decimal128's exponents,
/// so that even the integer quotient inside an exact remainder
/// (`10^19999 % 1e-6176`) fits.
const WIDE_UNITS: usize = (MAX_SUPPORTED_INTEGER_DIGITS + 6_200 + 300) / 3;
/// A decimal wide enough to hold any accepted integer exactly. Always boxed:
/// it is about 18 KB.
pub(crate) type Wide = dec::Decimal<WIDE_UNITS>;
/// Working decimals for correctly rounded functions (up to 600 digits).
pub(crate) type Mid = dec::Decimal<200>;
/// Largest working precision used with [`Mid`].
pub(crate) const MID_DIGITS: usize = 600;

/// The result context: 34 digits, decimal128 exponents, round half even.
pub(crate) fn ctx34() -> Context<D34> {
    let mut ctx = Context::<D34>::default();
    configure(&mut ctx, DECIMAL_DIGITS, DECIMAL_EMAX, DECIMAL_EMIN);
    ctx
}

/// The result context for operations whose operands are [`Wide`].
pub(crate) fn ctx_wide34() -> Context<Wide> {
    let mut ctx = Context::<Wide>::default();
    configure(&mut ctx, DECIMAL_DIGITS, DECIMAL_EMAX, DECIMAL_EMIN);
    ctx
}

/// An exact context: full [`Wide`] precision and an exponent range far beyond
/// anything an accepted input can reach.
pub(crate) fn ctx_wide_exact() -> Context<Wide> {
    let mut ctx = Context::<Wide>::default();
    configure(&mut ctx, WIDE_UNITS * 3, 999_999_999, -999_999_999);
    ctx
}

/// A working context of `digits` digits for [`Mid`] numbers, with the
/// exponent range libdecNumber's math functions accept (±999,999), wide enough
/// that only the final rounding to decimal128 over- or underflows.
pub(crate) fn ctx_mid(digits: usize) -> Context<Mid> {
    let mut ctx = Context::<Mid>::default();
    configure(&mut ctx, digits.min(MID_DIGITS), 999_999, -999_999);
    ctx
}

fn configure<const N: usize>(
    ctx: &mut Context<dec::Decimal<N>>,
    digits: usize,
    emax: i32,
    emin: i32,
) {
    // These settings are constants within the ranges the library accepts,
    // so the results are ignored deliberately rather than unwrapped.
    let _ = ctx.set_precision(digits);
    let _ = ctx.set_max_exponent(emax as isize);
    let _ = ctx.set_min_exponent(emin as isize);
    ctx.set_rounding(Rounding::HalfEven);
    ctx.set_clamp(false);
    ctx.clear_status();
}

/// Maps libdecNumber's status flags to our errors.
pub(crate) fn check_status(status: Status) -> Result<(), CalcError> {
    if status.division_by_zero() || status.division_undefined() {
        return Err(CalcError::division_by_zero());
    }
    if status.overflow() {
        return Err(CalcError::too_large());
    }
    if status.invalid_operation() || status.division_impossible() || status.insufficient_storage() {
        return Err(CalcError::domain("invalid operation"));
    }
    Ok(())
}

/// Rounds any decimal to a 34-digit decimal128 result.
pub(crate) fn round34<const N: usize>(x: &dec::Decimal<N>) -> Result<D34, CalcError> {
    let mut ctx = ctx34();
    let r = ctx.to_width(*x);
    finish(r, ctx.status())
}

/// Checks the status of the operation that produced `r` and that `r` is finite.
pub(crate) fn finish(r: D34, status: Status) -> Result<D34, CalcError> {
    check_status(status)?;
    if r.is_infinite() {
        return Err(CalcError::too_large());
    }
    if r.is_nan() {
        return Err(CalcError::domain("invalid operation"));
    }
    Ok(r)
}

/// Converts an integer exactly into a [`Wide`] decimal.
pub(crate) fn int_to_wide(n: &BigInt) -> Result<Box<Wide>, CalcError> {
    let mut ctx = ctx_wide_exact();
    let w = Box::new(
        ctx.parse(n.to_string())
            .map_err(|_| CalcError::too_large())?,
    );
    if ctx.status().inexact() {
        // Cannot happen for integers within MAX_SUPPORTED_INTEGER_DIGITS.
        return Err(CalcError::too_large());
    }
    Ok(w)
}

/// Converts a 34-digit decimal into a [`Wide`] decimal (exact).
pub(crate) fn d34_to_wide(d: &D34) -> Box<Wide> {
    let mut ctx = ctx_wide_exact();
    Box::new(ctx.to_width(*d))
}

/// Any value as an exact [`Wide`] decimal.
pub(crate) fn to_wide(v: &Value) -> Result<Box<Wide>, CalcError> {
    match v {
        Value::Integer(n) => int_to_wide(n),
        Value::Decimal(d) => Ok(d34_to_wide(&d.0)),
    }
}

/// Rounds `coefficient × 10^exponent` (given exactly as text) to 34 digits.
pub(crate) fn parse34(coefficient: &str, exponent: i64) -> Result<D34, CalcError> {
    let mut ctx = ctx34();
    let d = ctx
        .parse(format!("{coefficient}E{exponent}"))
        .map_err(|_| CalcError::domain("malformed number"))?;
    finish(d, ctx.status())
}

/// The decimal digits (most significant first) and exponent of a finite decimal.
pub(crate) fn digits_and_exponent<const N: usize>(d: &dec::Decimal<N>) -> (Vec<u8>, i64) {
    (d.coefficient_digits(), i64::from(d.exponent()))
}

/// Exact text `coefficient E exponent` of a finite decimal, unsigned.
pub(crate) fn exact_text(d: &D34) -> (String, i64) {
    let (digits, exponent) = digits_and_exponent(d);
    let text: String = digits.iter().map(|&b| char::from(b'0' + b)).collect();
    (text, exponent)
}

const LOG10_2: f64 = std::f64::consts::LOG10_2;

/// Whether `n` has more than `max` decimal digits, decided from its bit
/// length when that is conclusive and by counting only near the boundary.
pub(crate) fn exceeds_digits(n: &BigInt, max: usize) -> bool {
    let bits = n.bits();
    if bits == 0 {
        return false;
    }
    // 2^(bits-1) <= |n| < 2^bits, so digits lie in
    // [floor((bits-1)·log10 2) + 1, floor(bits·log10 2) + 1]; allow slack for f64.
    let upper = (bits as f64 * LOG10_2) as usize + 2;
    let lower = (((bits - 1) as f64 * LOG10_2) as usize).saturating_sub(1);
    if upper <= max {
        return false;
    }
    if lower > max {
        return true;
    }
    n.magnitude().to_string().len() > max
}

/// Digits of an integer result, refused when over the limit.
pub(crate) fn checked_integer(n: BigInt, max_digits: usize) -> Result<Value, CalcError> {
    if exceeds_digits(&n, max_digits) {
        return Err(CalcError::new(
            ErrorKind::ResultTooLarge,
            format!("result too large: integer with more than {max_digits} digits"),
        ));
    }
    Ok(Value::Integer(n))
}

/// The result of evaluating an expression: an exact integer or a 34-digit
/// decimal. `Display` gives the canonical result text: plain notation, no
/// exponent, no trailing zeros after the point, no `-0`.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// An exact integer (at most [`Limits::max_integer_digits`](crate::Limits::max_integer_digits) digits).
    Integer(BigInt),
    /// A decimal with at most 34 significant digits.
    Decimal(Decimal),
}

impl Value {
    /// True for an exact integer result.
    pub fn is_integer(&self) -> bool {
        matches!(self, Value::Integer(_))
    }

    pub(crate) fn dec(d: D34) -> Value {
        Value::Decimal(Decimal(d))
    }

    pub(crate) fn is_zero(&self) -> bool {
        match self {
            Value::Integer(n) => n.is_zero(),
            Value::Decimal(d) => d.0.is_zero(),
        }
    }

    pub(crate) fn is_negative(&self) -> bool {
        match self {
            Value::Integer(n) => n.is_negative(),
            Value::Decimal(d) => d.0.is_negative() && !d.0.is_zero(),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Integer(n) => write!(f, "{n}"),
            Value::Decimal(d) => write!(f, "{d}"),
        }
    }
}

/// A finite decimal of at most 34 significant digits (decimal128 precision
/// and exponent range). `Display` is the canonical plain text; equality is
/// numeric (`2.0 == 2`).
#[derive(Clone, Copy)]
pub struct Decimal(pub(crate) D34);

impl Decimal {
    /// The value in scientific notation with its exact coefficient and
    /// exponent, e.g. `1.50E+3` (for diagnostics and tests).
    pub fn to_scientific_string(&self) -> String {
        self.0.to_string()
    }
}

impl PartialEq for Decimal {
    fn eq(&self, other: &Self) -> bool {
        let mut ctx = ctx34();
        ctx.partial_cmp(&self.0, &other.0) == Some(Ordering::Equal)
    }
}

impl fmt::Debug for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Decimal({})", self.0)
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&canonical(&self.0))
    }
}

/// Plain notation without exponent or trailing zeros; zero is `0`.
fn canonical(d: &D34) -> String {
    if d.is_zero() || !d.is_finite() {
        return "0".to_string();
    }
    let (mut digits, mut exponent) = digits_and_exponent(d);
    while digits.len() > 1 && digits.last() == Some(&0) {
        digits.pop();
        exponent += 1;
    }
    let text: String = digits.iter().map(|&b| char::from(b'0' + b)).collect();
    let sign = if d.is_negative() { "-" } else { "" };
    if exponent >= 0 {
        let zeros = usize::try_from(exponent).unwrap_or(0);
        return format!("{sign}{text}{}", "0".repeat(zeros));
    }
    let frac = usize::try_from(-exponent).unwrap_or(0);
    if frac < text.len() {
        let (int_part, frac_part) = text.split_at(text.len() - frac);
        format!("{sign}{int_part}.{frac_part}")
    } else {
        format!("{sign}0.{}{text}", "0".repeat(frac - text.len()))
    }
}

/// Exact comparison of any two values.
pub(crate) fn compare(a: &Value, b: &Value) -> Result<Ordering, CalcError> {
    match (a, b) {
        (Value::Integer(x), Value::Integer(y)) => Ok(x.cmp(y)),
        (Value::Decimal(x), Value::Decimal(y)) => {
            let mut ctx = ctx34();
            ctx.partial_cmp(&x.0, &y.0)
                .ok_or_else(|| CalcError::domain("invalid comparison"))
        }
        _ => {
            let (x, y) = (to_wide(a)?, to_wide(b)?);
            let mut ctx = ctx_wide_exact();
            ctx.partial_cmp(&*x, &*y)
                .ok_or_else(|| CalcError::domain("invalid comparison"))
        }
    }
}

/// An integral decimal as an exact integer (the caller has checked its size).
pub(crate) fn integral_to_bigint(d: &D34) -> BigInt {
    let (digits, exponent) = digits_and_exponent(d);
    let sign = if d.is_negative() {
        Sign::Minus
    } else {
        Sign::Plus
    };
    let coefficient = BigInt::from_radix_be(sign, &digits, 10).unwrap_or_default();
    let ten = BigInt::from(10u8);
    match exponent.cmp(&0) {
        Ordering::Greater => coefficient * ten.pow(u32::try_from(exponent).unwrap_or(0)),
        // Only trailing zeros can sit right of the point of an integral value.
        Ordering::Less => coefficient / ten.pow(u32::try_from(-exponent).unwrap_or(0)),
        Ordering::Equal => coefficient,
    }
}
