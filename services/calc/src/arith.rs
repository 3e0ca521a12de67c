//! The operators `+ - * / % ^` and unary minus over [`Value`]s.
//!
//! Integer `+ - * %` and `^` with a non-negative integer exponent stay exact
//! (their size is estimated from bit lengths and refused *before* computing
//! when over the limit); everything that touches a decimal is rounded once
//! to 34 digits.

use num_bigint::BigInt;
use num_integer::Integer;
use num_traits::{One, Signed, ToPrimitive, Zero};

use crate::ast::BinOp;
use crate::error::CalcError;
use crate::precise::{WITHIN_ONE_ULP, correctly_rounded};
use crate::value::{
    D34, Mid, Value, checked_integer, ctx_wide_exact, ctx_wide34, ctx34, exceeds_digits, finish,
    round34, to_wide,
};

const LOG10_2: f64 = std::f64::consts::LOG10_2;

/// Smallest decimal128 exponent (of a subnormal's last digit) is -6176: a
/// magnitude below 10^-6178 rounds to zero whatever its digits.
const UNDERFLOW_DIGITS: f64 = 6178.0;

/// `-x`.
pub(crate) fn negate(x: Value) -> Result<Value, CalcError> {
    match x {
        Value::Integer(n) => Ok(Value::Integer(-n)),
        Value::Decimal(d) => {
            let mut ctx = ctx34();
            let mut r = d.0;
            ctx.minus(&mut r);
            Ok(Value::dec(finish(r, ctx.status())?))
        }
    }
}

/// `a op b`.
pub(crate) fn binary(op: BinOp, a: Value, b: Value, max_digits: usize) -> Result<Value, CalcError> {
    if matches!(op, BinOp::Div | BinOp::Rem) && b.is_zero() {
        return Err(CalcError::division_by_zero());
    }
    match (a, b) {
        (Value::Integer(x), Value::Integer(y)) => integer_binary(op, x, y, max_digits),
        (a, b) => {
            if op == BinOp::Rem {
                return decimal_remainder(&a, &b).map(Value::dec);
            }
            decimal_binary(op, &a, &b).map(Value::dec)
        }
    }
}

fn integer_binary(op: BinOp, x: BigInt, y: BigInt, max_digits: usize) -> Result<Value, CalcError> {
    match op {
        BinOp::Add => checked_integer(x + y, max_digits),
        BinOp::Sub => checked_integer(x - y, max_digits),
        BinOp::Mul => {
            // |x·y| >= 2^(bits(x)+bits(y)-2): refuse before multiplying.
            let min_bits = (x.bits() + y.bits()).saturating_sub(2);
            if !x.is_zero() && !y.is_zero() && (min_bits as f64) * LOG10_2 > max_digits as f64 + 1.0
            {
                return Err(CalcError::too_large());
            }
            checked_integer(x * y, max_digits)
        }
        BinOp::Div => {
            let (q, r) = x.div_rem(&y);
            if r.is_zero() {
                checked_integer(q, max_digits)
            } else {
                decimal_binary(BinOp::Div, &Value::Integer(x), &Value::Integer(y)).map(Value::dec)
            }
        }
        // Rust's `%` on BigInt truncates: the remainder has the dividend's sign.
        BinOp::Rem => checked_integer(x % y, max_digits),
    }
}

/// A decimal `+ - * /`, with integer operands converted exactly.
fn decimal_binary(op: BinOp, a: &Value, b: &Value) -> Result<D34, CalcError> {
    if let (Value::Decimal(x), Value::Decimal(y)) = (a, b) {
        let mut ctx = ctx34();
        let mut r = x.0;
        apply(&mut ctx, op, &mut r, &y.0);
        return finish(r, ctx.status());
    }
    let mut x = to_wide(a)?;
    let y = to_wide(b)?;
    let mut ctx = ctx_wide34();
    apply(&mut ctx, op, &mut x, &*y);
    let status = ctx.status();
    crate::value::check_status(status)?;
    round34(&*x)
}

fn apply<const N: usize, const M: usize>(
    ctx: &mut dec::Context<dec::Decimal<N>>,
    op: BinOp,
    lhs: &mut dec::Decimal<N>,
    rhs: &dec::Decimal<M>,
) {
    match op {
        BinOp::Add => ctx.add(lhs, rhs),
        BinOp::Sub => ctx.sub(lhs, rhs),
        BinOp::Mul => ctx.mul(lhs, rhs),
        BinOp::Div => ctx.div(lhs, rhs),
        BinOp::Rem => ctx.rem(lhs, rhs),
    }
}

/// The remainder with the sign of the dividend, computed exactly and then
/// rounded once. (Python's `Decimal.__mod__` instead raises
/// `DivisionImpossible` when the integer quotient has more than 34 digits;
/// the exact remainder is always defined, so dalc returns it.)
fn decimal_remainder(a: &Value, b: &Value) -> Result<D34, CalcError> {
    let mut x = to_wide(a)?;
    let y = to_wide(b)?;
    // At full Wide precision the integer quotient always fits: it has at most
    // MAX_SUPPORTED_INTEGER_DIGITS + 6,176 + 1 digits.
    let mut ctx = ctx_wide_exact();
    ctx.rem(&mut *x, &*y);
    crate::value::check_status(ctx.status())?;
    round34(&*x)
}

/// `a ^ b`.
pub(crate) fn power(a: Value, b: Value, max_digits: usize) -> Result<Value, CalcError> {
    match (a, b) {
        (Value::Integer(x), Value::Integer(y)) => {
            if y.is_negative() {
                integer_negative_power(&x, &y).map(Value::dec)
            } else {
                integer_power(x, &y, max_digits)
            }
        }
        (a, b) => decimal_power(&a, &b).map(Value::dec),
    }
}

/// Lower bound of log10|x| for |x| >= 2, from its bit length.
fn log10_lower(x: &BigInt) -> f64 {
    (x.bits().saturating_sub(1)) as f64 * LOG10_2
}

fn integer_power(x: BigInt, y: &BigInt, max_digits: usize) -> Result<Value, CalcError> {
    if y.is_zero() || x.is_one() {
        return Ok(Value::Integer(BigInt::one())); // including 0^0 = 1
    }
    if x.is_zero() {
        return Ok(Value::Integer(BigInt::zero()));
    }
    if x == BigInt::from(-1) {
        return Ok(Value::Integer(if y.is_even() { BigInt::one() } else { x }));
    }
    // |x| >= 2: the result has more than y·log10|x| digits; refuse early.
    let exponent = y
        .to_u32()
        .filter(|&e| (e as f64) * log10_lower(&x) <= max_digits as f64 + 1.0);
    let Some(exponent) = exponent else {
        return Err(CalcError::too_large());
    };
    checked_integer(x.pow(exponent), max_digits)
}

/// `x ^ -m` for integers: `1 / x^m`, correctly rounded.
fn integer_negative_power(x: &BigInt, y: &BigInt) -> Result<D34, CalcError> {
    if x.is_zero() {
        return Err(CalcError::division_by_zero());
    }
    let mut ctx = ctx34();
    if x.magnitude().is_one() {
        let one = if x.is_negative() && y.is_odd() {
            "-1"
        } else {
            "1"
        };
        let d = ctx
            .parse(one)
            .map_err(|_| CalcError::domain("invalid operation"))?;
        return finish(d, ctx.status());
    }
    let m = y
        .magnitude()
        .to_u32()
        .filter(|&m| (m as f64) * log10_lower(x) <= UNDERFLOW_DIGITS);
    let Some(m) = m else {
        // |x^-m| < 10^-6178: rounds to zero.
        return Ok(D34::zero());
    };
    let denominator = x.pow(m);
    if exceeds_digits(&denominator, crate::limits::MAX_SUPPORTED_INTEGER_DIGITS) {
        return Ok(D34::zero());
    }
    decimal_binary(
        BinOp::Div,
        &Value::Integer(BigInt::one()),
        &Value::Integer(denominator),
    )
}

/// Exponents with more digits than this are handled without libdecNumber:
/// every 34-digit base other than 0 and ±1 then over- or underflows.
const HUGE_EXPONENT_DIGITS: usize = 40;

/// `a ^ b` when either is a decimal (or an integer base meets a decimal exponent).
fn decimal_power(a: &Value, b: &Value) -> Result<D34, CalcError> {
    if b.is_zero() {
        return ctx34()
            .parse("1")
            .map_err(|_| CalcError::domain("invalid operation")); // 0^0 = 1 too
    }
    if a.is_zero() {
        if b.is_negative() {
            return Err(CalcError::division_by_zero());
        }
        return Ok(D34::zero());
    }
    let b_integral = is_integral(b)?;
    if a.is_negative() && !b_integral {
        return Err(CalcError::domain(
            "negative number raised to a non-integer power",
        ));
    }
    if let Value::Integer(y) = b
        && exceeds_digits(y, HUGE_EXPONENT_DIGITS)
    {
        return huge_exponent(a, y);
    }
    if a.is_negative() {
        // (-x)^n = ±x^n by the parity of the integral n. libdecNumber itself
        // refuses negative bases with exponents beyond 999,999,999.
        let magnitude = decimal_power(&crate::functions::abs(a.clone())?, b)?;
        if !is_odd(b) {
            return Ok(magnitude);
        }
        let mut ctx = ctx34();
        let mut r = magnitude;
        ctx.minus(&mut r);
        return finish(r, ctx.status());
    }
    let exponent = to_mid_exact(b)?;
    correctly_rounded(WITHIN_ONE_ULP, |ctx, p| {
        // A long integer base is rounded to p + 10 digits: the exponent of a
        // result in range is then below 100 in magnitude, so the relative
        // error stays far under the one-ulp margin of the check.
        let mut base = to_mid_rounded(a, p + 10, ctx)?;
        ctx.pow(&mut base, &exponent);
        Ok(base)
    })
}

/// `a ^ y` for |y| >= 10^40 and a decimal or integer base other than 0.
fn huge_exponent(a: &Value, y: &BigInt) -> Result<D34, CalcError> {
    let magnitude = match a {
        Value::Integer(x) => x.magnitude().cmp(&num_bigint::BigUint::one()),
        Value::Decimal(_) => {
            let abs = crate::functions::abs(a.clone())?;
            crate::value::compare(&abs, &Value::Integer(BigInt::one()))?
        }
    };
    let mut ctx = ctx34();
    match magnitude {
        std::cmp::Ordering::Equal => {
            let negative = a.is_negative() && y.is_odd();
            let one = ctx.parse(if negative { "-1" } else { "1" });
            one.map_err(|_| CalcError::domain("invalid operation"))
        }
        // |a| > 1 grows past 10^6144, |a| < 1 shrinks below 10^-6176 (a base
        // of 34 digits is at least 1e-34 away from 1).
        std::cmp::Ordering::Greater if y.is_positive() => Err(CalcError::too_large()),
        std::cmp::Ordering::Less if y.is_negative() => Err(CalcError::too_large()),
        _ => Ok(D34::zero()),
    }
}

/// Whether an integral value is odd.
fn is_odd(v: &Value) -> bool {
    match v {
        Value::Integer(n) => n.is_odd(),
        Value::Decimal(d) => {
            let (digits, exponent) = crate::value::digits_and_exponent(&d.0);
            // The units digit sits `-exponent` places from the right end.
            let units = usize::try_from(-exponent)
                .ok()
                .and_then(|shift| digits.len().checked_sub(shift + 1))
                .and_then(|i| digits.get(i));
            exponent <= 0 && units.is_some_and(|d| d % 2 == 1)
        }
    }
}

/// Whether a value is an integer (an integral decimal counts).
pub(crate) fn is_integral(v: &Value) -> Result<bool, CalcError> {
    match v {
        Value::Integer(_) => Ok(true),
        Value::Decimal(d) => {
            if d.0.exponent() >= 0 {
                return Ok(true);
            }
            let mut ctx = ctx34();
            let mut r = d.0;
            ctx.round(&mut r);
            Ok(ctx.partial_cmp(&r, &d.0) == Some(std::cmp::Ordering::Equal))
        }
    }
}

/// A value as a [`Mid`] decimal, exactly (it must have at most 600 digits).
pub(crate) fn to_mid_exact(v: &Value) -> Result<Mid, CalcError> {
    let mut exact = crate::value::ctx_mid(crate::value::MID_DIGITS);
    let text = match v {
        Value::Integer(n) => n.to_string(),
        Value::Decimal(d) => d.0.to_string(),
    };
    let m = exact
        .parse(text)
        .map_err(|_| CalcError::domain("malformed number"))?;
    if exact.status().inexact() {
        return Err(CalcError::too_large());
    }
    Ok(m)
}

/// A value as a [`Mid`] decimal rounded to `digits` (only long integers are
/// actually rounded; the callers' error bounds allow for it). A rounding is
/// recorded as "inexact" in `main`, so the result is never taken as exact.
pub(crate) fn to_mid_rounded(
    v: &Value,
    digits: usize,
    main: &mut dec::Context<Mid>,
) -> Result<Mid, CalcError> {
    let mut ctx = crate::value::ctx_mid(digits);
    let text = match v {
        Value::Integer(n) => n.to_string(),
        Value::Decimal(d) => d.0.to_string(),
    };
    let m = ctx
        .parse(text)
        .map_err(|_| CalcError::domain("malformed number"))?;
    if ctx.status().inexact() {
        let mut status = main.status();
        status.set_inexact();
        main.set_status(status);
    }
    Ok(m)
}
