//! # dalc-calc: the expression engine of dalc
//!
//! A pure library (no I/O, no global mutable state) that parses and evaluates
//! calculator expressions. The gateway calls [`parse`] to reject bad input
//! early; the worker calls [`evaluate`] (or [`Expr::evaluate`]).
//!
//! ```
//! use dalc_calc::{evaluate, Limits};
//! let limits = Limits::default();
//! assert_eq!(evaluate("0.1 + 0.2", &limits).unwrap().to_string(), "0.3");
//! assert_eq!(evaluate("2^100", &limits).unwrap().to_string(), "1267650600228229401496703205376");
//! assert_eq!(evaluate("sqrt(2)", &limits).unwrap().to_string(), "1.414213562373095048801688724209698");
//! ```
//!
//! ## Language
//!
//! Numbers (`42`, `0.1`, `.5`, `1.5e3`, `2E-7`), `+ - * / % ^`, unary `+ -`,
//! parentheses, constants `pi` and `e`, and the functions `sqrt abs floor
//! ceil round min max ln log10 exp sin cos tan factorial`. `^` is
//! right-associative and binds tighter than unary minus (`-2^2 = -4`,
//! `2^3^2 = 512`, `2^-1 = 0.5`); `%` is the remainder with the sign of the
//! dividend; `round` rounds half to even; `min`/`max` take one or more
//! arguments and return the first extreme one, keeping its kind.
//!
//! ## Numbers
//!
//! Two kinds of [`Value`]: exact integers of arbitrary size (up to
//! [`Limits::max_integer_digits`]) and decimals of 34 significant digits with
//! decimal128's exponent range, rounded half to even, exactly like Python's
//! `decimal` with `prec=34, Emax=6144, Emin=-6143`. Integer `+ - * %`, `^`
//! with a non-negative integer exponent, `factorial`, `floor`, `ceil` and
//! `round` give integers; `/` of integers gives an integer when it divides
//! exactly; everything else is a decimal. When an integer meets a decimal it
//! is converted exactly and only the result is rounded (no double rounding,
//! even for integers of thousands of digits).
//!
//! Accuracy: `+ - * / % sqrt ln log10 exp` are correctly rounded (to the last
//! of 34 digits); `sin cos tan` and `^` with a decimal operand are within one
//! unit of the last digit (in practice also correctly rounded: `^` goes
//! through the same correct-rounding loop as `exp`, with fewer retries). Results beyond
//! decimal128's range are [`ErrorKind::ResultTooLarge`]; results too small
//! round toward zero (subnormals, then zero), as in Python.
//!
//! ## Libraries, and why
//!
//! * **`dec`** (Materialize's safe bindings to IBM's libdecNumber, compiled
//!   from C by `cc`; no system library) for decimals. libdecNumber implements
//!   the same General Decimal Arithmetic specification as Python's `decimal`
//!   (contexts with precision, exponent limits and rounding; `exp`, `ln`,
//!   `log10`, `sqrt`, `power`; operands longer than the precision used
//!   exactly), is IBM's reference implementation, and `dec` is used in
//!   production by Materialize. `mpdec` (bindings to libmpdec, which CPython
//!   itself uses) was considered, but the crate is a small single-author
//!   wrapper with little use; `dec` is the better-kept choice.
//!   libdecNumber's `exp`/`ln`/`log10`/`power` are documented as "almost
//!   always correctly rounded", so they run inside a Ziv loop (more working
//!   digits until the 34-digit rounding is certain) to match Python's
//!   correctly rounded results. Its square root is correctly rounded; for
//!   long integer operands, where its square root is slow, an exact integer
//!   square root gives the correctly rounded result instead.
//! * **`num-bigint`** (rust-num) for exact integers: the standard, pure Rust,
//!   with Karatsuba/Toom-3 multiplication.
//! * **`astro-float-num`** (the core of `astro-float`, without its macro
//!   crate) for `sin cos tan`: pure-Rust binary multiple precision with
//!   correctly rounded sin/cos and its own π; we do the argument reduction at
//!   a precision that covers the argument's magnitude (thousands of bits for
//!   `sin(9e6144)`) with a π cached once per process in a `OnceLock`.
//!
//! ## Limits and time bound
//!
//! Every limit is a field of [`Limits`] with a documented default constant.
//! Length, literal length and nesting are checked by [`parse`]; integer sizes
//! are estimated from bit lengths and refused *before* computing
//! (`9^9^9^9`, `factorial(10^9)`, `2^(10^12)`, `10^10000 * 1.0`). Deep
//! nesting is an error, never a stack overflow, and the tree's depth (hence
//! recursion in evaluation, `Display` and `Drop`) is bounded by it.
//!
//! Measured bound (release build, this project's 2-core machine, criterion
//! medians from `cargo bench -p dalc-calc`): the slowest accepted 4 KiB
//! inputs found take about **0.25 s**. The worst was
//! `tan(10^9999-0)+tan(10^9999-1)+...` (300 tangents of 10,000-digit
//! integers, each reduced modulo π/2 at ~33,500 bits): 251 ms; then
//! `sin(9^10479)+sin(9^10478)+...` 242 ms, `((10^34+5)^2)^0.5+...` (decimal
//! powers landing on exact rounding midpoints) 216 ms, `ln(7^9999)+...`
//! 183 ms, `cos(factorial(3248))+...` 155 ms, `sin(9e6144)+...` 134 ms,
//! `(10^9999+k)/(7^11000)+...` 126 ms. Typical expressions: `1 + 1` 0.4 µs, a
//! 200-character mix of every function 0.3 ms. Work per byte of input is
//! bounded (every integer is at most 10,000 digits, every decimal 34 digits,
//! every loop of retries has a fixed cap), so no accepted input can take
//! much longer than these.
//!
//! ## Testing
//!
//! `cargo test -p dalc-calc` runs table tests for every rule and error kind,
//! proptest properties (print → parse is stable; no string panics), limit
//! tests on a 2 MiB stack, and a differential test of 4,036 random
//! expressions against `tests/reference.py` (Python's `decimal` and mpmath;
//! it needs `python3` with `mpmath` and fails, never skips, without them).
//! `fuzz/` holds a cargo-fuzz target (see its README for the recorded run).
//!
//! ## Known deviations from Python's `decimal`
//!
//! * A decimal literal (one with a point or an exponent) longer than 34
//!   digits is rounded to 34 when it is read, as `Context.create_decimal`
//!   does, since a decimal value holds 34 digits; Python's `Decimal("...")`
//!   keeps every digit of its argument and rounds only results. So
//!   `1.00000000000000000000000000000000000001 - 1` is `0` (Python: `1E-38`).
//!   An integer literal is exact at any length.
//! * `x % y` on decimals returns the exact remainder (rounded to 34 digits)
//!   where Python raises `DivisionImpossible` because the integer quotient has
//!   more than 34 digits.
//! * `0^0` is `1` for decimals too (Python raises `InvalidOperation`), and
//!   `ln(0)` / `log10(0)` are domain errors (Python returns `-Infinity`);
//!   `0/0` and `x % 0` are division by zero (Python: `InvalidOperation`).

mod arith;
mod ast;
mod error;
mod eval;
mod functions;
mod lexer;
mod limits;
mod parser;
mod precise;
mod trig;
mod value;

use std::fmt;

pub use error::{CalcError, ErrorKind};
pub use limits::{
    DECIMAL_DIGITS, DECIMAL_EMAX, DECIMAL_EMIN, DEFAULT_MAX_DEPTH, DEFAULT_MAX_EXPRESSION_BYTES,
    DEFAULT_MAX_INTEGER_DIGITS, DEFAULT_MAX_LITERAL_LEN, Limits, MAX_SUPPORTED_DEPTH,
    MAX_SUPPORTED_INTEGER_DIGITS,
};
pub use num_bigint::BigInt;
pub use value::{Decimal, Value};

/// A parsed expression. `Display` prints a compact canonical form that
/// re-parses (under the same limits) to an equal `Expr`.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    root: ast::Node,
}

impl Expr {
    /// Evaluates the expression. Safe to call from any thread; the time is
    /// bounded for any expression accepted by [`parse`] under the same limits.
    pub fn evaluate(&self, limits: &Limits) -> Result<Value, CalcError> {
        eval::evaluate_node(&self.root, limits)
    }

    /// Whether evaluation certainly takes only microseconds (a few small numbers, no powers and
    /// no functions beyond `abs floor ceil round min max`), so a caller may run it inline
    /// instead of on a thread for blocking work. `false` only means it might be slow.
    pub fn is_cheap(&self) -> bool {
        self.root.is_cheap()
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.root.fmt(f)
    }
}

/// Parses `source`: checks length, syntax, names, argument counts, nesting
/// and literal lengths, without evaluating anything.
pub fn parse(source: &str, limits: &Limits) -> Result<Expr, CalcError> {
    parser::parse_source(source, limits).map(|root| Expr { root })
}

/// Parses and evaluates `source`.
pub fn evaluate(source: &str, limits: &Limits) -> Result<Value, CalcError> {
    parse(source, limits)?.evaluate(limits)
}

#[cfg(test)]
mod cheapness {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn small_arithmetic_is_cheap_and_growing_work_is_not() {
        let limits = Limits::default();
        for cheap in [
            "1 + 1",
            "0.1 + 0.2",
            "-(3 * 4) / 7 % 2",
            "round(2.5) + max(1, pi, e)",
        ] {
            assert!(parse(cheap, &limits).unwrap().is_cheap(), "{cheap}");
        }
        let long_sum = vec!["1"; 100].join("+");
        let big = "9".repeat(60);
        for costly in [
            "2^10",
            "sqrt(2)",
            "factorial(20)",
            "sin(1)",
            "ln(2)",
            "exp(1)",
            long_sum.as_str(),
            big.as_str(),
        ] {
            assert!(!parse(costly, &limits).unwrap().is_cheap(), "{costly}");
        }
    }
}
