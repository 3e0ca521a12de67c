//! Correct rounding for libdecNumber's `exp`, `ln`, `log10` and `power`.
//!
//! libdecNumber documents these as "almost always correctly rounded, but up
//! to 1 ulp in error in rare cases", while Python's `decimal` (libmpdec)
//! rounds `exp`, `ln` and `log10` correctly. So we use Ziv's strategy: compute
//! at a higher working precision `p`, where the library's error is at most
//! one unit of the p-th digit; if every value within two such units rounds to
//! the same 34-digit decimal, that is the correctly rounded result. Otherwise
//! (the true value is extremely close to a rounding boundary) retry with more
//! digits. Exact results (`ln(1)`, `log10(1000)`) are flagged exact by the
//! library and rounded directly.

use std::cmp::Ordering;

use dec::Context;

use crate::error::CalcError;
use crate::value::{D34, Mid, check_status, ctx_mid, ctx34, round34};

/// Working precisions tried in turn for `exp`, `ln` and `log10`. The last
/// result is used even if still ambiguous: it is then within one unit of the
/// 34th digit (no input is known to get that far: these functions are
/// transcendental, and their exact cases are flagged exact).
pub(crate) const CORRECTLY_ROUNDED: &[usize] = &[50, 90, 200, 500];
/// Working precisions for `^` with a decimal operand, which must be within
/// one ulp. Its results can be exact midpoints (`((10^34+5)^2)^0.5`) that no
/// precision resolves, so the loop stops early instead of spending
/// milliseconds at 500 digits on each of hundreds of such terms.
pub(crate) const WITHIN_ONE_ULP: &[usize] = &[50, 90];

/// Evaluates `f` at increasing working precisions until its correctly
/// rounded 34-digit value is certain. `f` receives a context of precision
/// `p` (and decNumber's widest exponent range for math functions) and must
/// set the context's `inexact` flag if it rounded an operand.
pub(crate) fn correctly_rounded(
    precisions: &[usize],
    mut f: impl FnMut(&mut Context<Mid>, usize) -> Result<Mid, CalcError>,
) -> Result<D34, CalcError> {
    let mut last = None;
    for &p in precisions {
        let mut ctx = ctx_mid(p);
        let y = f(&mut ctx, p)?;
        let status = ctx.status();
        check_status(status)?;
        if y.is_infinite() {
            return Err(CalcError::too_large());
        }
        if y.is_nan() {
            return Err(CalcError::domain("invalid operation"));
        }
        if !status.inexact() {
            return round34(&y);
        }
        let (mut lo, mut hi) = (y, y);
        for _ in 0..2 {
            ctx.next_minus(&mut lo);
            ctx.next_plus(&mut hi);
        }
        match (round34(&lo), round34(&hi)) {
            (Ok(l), Ok(h)) if ctx34().partial_cmp(&l, &h) == Some(Ordering::Equal) => {
                return round34(&y);
            }
            // Both ends overflow decimal128: so does the true value.
            (Err(_), Err(_)) => return round34(&y),
            _ => {}
        }
        last = Some(y);
    }
    match last {
        Some(y) => round34(&y),
        None => Err(CalcError::domain("invalid operation")),
    }
}
