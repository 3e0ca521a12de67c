//! The built-in functions.
//!
//! `sqrt ln log10 exp` are correctly rounded (libdecNumber's `sqrt` is; the
//! others go through [`correctly_rounded`]); `sin cos tan` are in
//! [`crate::trig`]; `floor ceil round factorial` return exact integers.

use std::cmp::Ordering;

use dec::Rounding;
use num_bigint::BigInt;
use num_traits::{One, Signed, ToPrimitive, Zero};

use crate::arith::{is_integral, to_mid_exact, to_mid_rounded};
use crate::ast::Func;
use crate::error::CalcError;
use crate::precise::{CORRECTLY_ROUNDED, correctly_rounded};
use crate::value::{
    D34, Value, checked_integer, compare, ctx34, finish, integral_to_bigint, parse34,
};

/// Calls `func` on evaluated arguments (the parser has checked the arity).
pub(crate) fn call(
    func: Func,
    mut args: Vec<Value>,
    max_digits: usize,
) -> Result<Value, CalcError> {
    if func.is_variadic() {
        return extreme(args, func == Func::Max);
    }
    let x = args
        .pop()
        .ok_or_else(|| CalcError::domain("missing argument"))?;
    match func {
        Func::Sqrt => sqrt(&x).map(Value::dec),
        Func::Abs => abs(x),
        Func::Floor => to_integer(x, Rounding::Floor, max_digits),
        Func::Ceil => to_integer(x, Rounding::Ceiling, max_digits),
        Func::Round => to_integer(x, Rounding::HalfEven, max_digits),
        Func::Ln => logarithm(&x, false).map(Value::dec),
        Func::Log10 => logarithm(&x, true).map(Value::dec),
        Func::Exp => exp(&x).map(Value::dec),
        Func::Sin => crate::trig::sin(&x).map(Value::dec),
        Func::Cos => crate::trig::cos(&x).map(Value::dec),
        Func::Tan => crate::trig::tan(&x).map(Value::dec),
        Func::Factorial => factorial(&x, max_digits),
        Func::Min | Func::Max => extreme(vec![x], func == Func::Max),
    }
}

/// `min`/`max`: the first extreme argument, keeping its kind.
fn extreme(args: Vec<Value>, max: bool) -> Result<Value, CalcError> {
    let wanted = if max {
        Ordering::Greater
    } else {
        Ordering::Less
    };
    let mut iter = args.into_iter();
    let mut best = iter
        .next()
        .ok_or_else(|| CalcError::domain("missing argument"))?;
    for candidate in iter {
        if compare(&candidate, &best)? == wanted {
            best = candidate;
        }
    }
    Ok(best)
}

pub(crate) fn abs(x: Value) -> Result<Value, CalcError> {
    match x {
        Value::Integer(n) => Ok(Value::Integer(n.abs())),
        Value::Decimal(d) => {
            let mut ctx = ctx34();
            let mut r = d.0;
            ctx.abs(&mut r);
            Ok(Value::dec(finish(r, ctx.status())?))
        }
    }
}

/// `floor`, `ceil`, `round` (half even): an exact integer.
fn to_integer(x: Value, rounding: Rounding, max_digits: usize) -> Result<Value, CalcError> {
    let d = match x {
        Value::Integer(_) => return Ok(x),
        Value::Decimal(d) => d.0,
    };
    // An integer of adjusted exponent k has k + 1 digits: refuse before
    // building a 6,145-digit integer the limit would reject anyway.
    let adjusted = i64::from(d.exponent()) + i64::from(d.digits()) - 1;
    if adjusted >= 0 && usize::try_from(adjusted).unwrap_or(usize::MAX) >= max_digits {
        return Err(CalcError::too_large());
    }
    let mut ctx = ctx34();
    ctx.set_rounding(rounding);
    let mut r = d;
    ctx.round(&mut r);
    let r = finish(r, ctx.status())?;
    checked_integer(integral_to_bigint(&r), max_digits)
}

/// Correctly rounded square root.
fn sqrt(x: &Value) -> Result<D34, CalcError> {
    if x.is_negative() {
        return Err(CalcError::domain("square root of a negative number"));
    }
    match x {
        Value::Decimal(d) => {
            // libdecNumber's square root is correctly rounded (half even).
            let mut ctx = ctx34();
            let mut r = d.0;
            ctx.sqrt(&mut r);
            finish(r, ctx.status())
        }
        Value::Integer(n) => integer_sqrt(n),
    }
}

/// The square root of a (possibly 10,000-digit) integer, correctly rounded,
/// from an exact integer square root: libdecNumber's own `sqrt` works at the
/// operand's full length, far too slowly for such operands.
///
/// Scale `n` by an even power of ten so that `s = isqrt(m)` has at least 36
/// digits; the true root (scaled) lies in `[s, s + 1)` and equals `s` only if
/// the square root was exact. Appending a digit `1` after `s` when it was not
/// exact gives a number strictly inside the same interval, which contains no
/// 34-digit rounding boundary (those lie on `s`'s finer grid), so rounding it
/// once gives the correctly rounded root.
fn integer_sqrt(n: &BigInt) -> Result<D34, CalcError> {
    if n.is_zero() {
        return parse34("0", 0);
    }
    let digits = i64::try_from(n.to_string().len()).unwrap_or(i64::MAX);
    // m = n·10^(2t) (or floor of it when t < 0) has at least 74 digits.
    let t = (75 - digits).div_euclid(2);
    let ten = BigInt::from(10u8);
    let (m, dropped_nonzero) = if t >= 0 {
        (n * ten.pow(u32::try_from(2 * t).unwrap_or(0)), false)
    } else {
        let divisor = ten.pow(u32::try_from(-2 * t).unwrap_or(0));
        let (q, r) = num_integer::Integer::div_rem(n, &divisor);
        (q, !r.is_zero())
    };
    let s = m.sqrt();
    let exact = !dropped_nonzero && &s * &s == m;
    if exact {
        parse34(&s.to_string(), -t)
    } else {
        parse34(&format!("{s}1"), -t - 1)
    }
}

/// `ln` or `log10`, correctly rounded.
fn logarithm(x: &Value, base10: bool) -> Result<D34, CalcError> {
    if x.is_zero() || x.is_negative() {
        let name = if base10 { "log10" } else { "ln" };
        return Err(CalcError::domain(format!(
            "{name} of a number that is not positive"
        )));
    }
    correctly_rounded(CORRECTLY_ROUNDED, |ctx, p| {
        // A long integer is rounded to p + 2 digits: it is then over 10^(p+1),
        // so its logarithm exceeds 100 and the induced error (below 10^-(p+1))
        // is under one unit of the result's p-th digit, which the check allows.
        let mut m = to_mid_rounded(x, p + 2, ctx)?;
        if base10 {
            ctx.log10(&mut m);
        } else {
            ctx.ln(&mut m);
        }
        Ok(m)
    })
}

/// `exp`, correctly rounded.
fn exp(x: &Value) -> Result<D34, CalcError> {
    if let Value::Integer(n) = x {
        // e^n overflows decimal128 for n > 14,154 and rounds to zero for
        // n < -14,224: decide long integers without computing.
        if n.bits() > 20 {
            return if n.is_negative() {
                parse34("0", 0)
            } else {
                Err(CalcError::too_large())
            };
        }
    }
    let m = to_mid_exact(x)?;
    correctly_rounded(CORRECTLY_ROUNDED, |ctx, _| {
        let mut r = m;
        ctx.exp(&mut r);
        Ok(r)
    })
}

/// `factorial(n)` for a non-negative integer `n` (an integral decimal counts).
fn factorial(x: &Value, max_digits: usize) -> Result<Value, CalcError> {
    if !is_integral(x)? || x.is_negative() {
        return Err(CalcError::domain("factorial takes a non-negative integer"));
    }
    let n = match x {
        Value::Integer(n) => n.to_u64(),
        Value::Decimal(d) => {
            // An integral decimal with an exponent above 9 is at least 10^10.
            let adjusted = i64::from(d.0.exponent()) + i64::from(d.0.digits()) - 1;
            if adjusted > 9 {
                None
            } else {
                let mut ctx = ctx34();
                let mut r = d.0;
                ctx.round(&mut r);
                integral_to_bigint(&r).to_u64()
            }
        }
    };
    let Some(n) = n.filter(|&n| factorial_digits_lower_bound(n) <= max_digits as f64 + 1.0) else {
        return Err(CalcError::too_large());
    };
    // Multiply word-sized runs of factors first: far fewer big multiplications.
    let mut result = BigInt::one();
    let mut run: u64 = 1;
    for k in 2..=n {
        match run.checked_mul(k) {
            Some(r) => run = r,
            None => {
                result *= run;
                run = k;
            }
        }
    }
    result *= run;
    checked_integer(result, max_digits)
}

/// A lower bound of the number of digits of n! (Stirling, minus a margin).
fn factorial_digits_lower_bound(n: u64) -> f64 {
    if n < 2 {
        return 1.0;
    }
    let n = n as f64;
    let log10 =
        n * (n / std::f64::consts::E).log10() + 0.5 * (2.0 * std::f64::consts::PI * n).log10();
    log10 - 1.0
}
