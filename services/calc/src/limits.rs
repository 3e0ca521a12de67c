//! Resource limits: every input is bounded before it can cost time or memory.
//!
//! The defaults are what the gateway and the worker use. Each limit is checked
//! as early as possible: length before lexing, literal length while lexing,
//! nesting while parsing, and integer size *before* a big-integer operation
//! runs (from a cheap estimate of the result's size), so no accepted input can
//! allocate without bound or run for long.

/// Default maximum length of an expression, in bytes of UTF-8.
pub const DEFAULT_MAX_EXPRESSION_BYTES: usize = 4096;
/// Default maximum nesting depth (parentheses, function calls, unary operators
/// and `^` exponents each add one level).
pub const DEFAULT_MAX_DEPTH: usize = 128;
/// Default maximum length of one number literal, in characters.
pub const DEFAULT_MAX_LITERAL_LEN: usize = 1000;
/// Default maximum number of decimal digits of an integer result.
pub const DEFAULT_MAX_INTEGER_DIGITS: usize = 10_000;

/// Hard ceiling on [`Limits::max_integer_digits`]: larger settings are treated
/// as this value. Integers are converted *exactly* when they meet a decimal,
/// which needs a fixed-size working decimal big enough for any integer, and
/// the measured time bound holds only up to this size.
pub const MAX_SUPPORTED_INTEGER_DIGITS: usize = 20_000;
/// Hard ceiling on [`Limits::max_depth`]: deeper settings are treated as this
/// value, so recursion in the parser, the evaluator, `Display` and `Drop` can
/// never exhaust a 2 MiB thread stack.
pub const MAX_SUPPORTED_DEPTH: usize = 256;

/// Significant digits of a decimal result (IEEE 754 decimal128).
pub const DECIMAL_DIGITS: usize = 34;
/// Largest adjusted exponent of a decimal result (decimal128's Emax).
pub const DECIMAL_EMAX: i32 = 6144;
/// Smallest adjusted exponent of a normal decimal result (decimal128's Emin);
/// smaller results are subnormal or round to zero.
pub const DECIMAL_EMIN: i32 = -6143;

/// Limits applied by [`parse`](crate::parse) and [`Expr::evaluate`](crate::Expr::evaluate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Maximum expression length in bytes ([`DEFAULT_MAX_EXPRESSION_BYTES`]).
    pub max_expression_bytes: usize,
    /// Maximum nesting depth ([`DEFAULT_MAX_DEPTH`], capped at [`MAX_SUPPORTED_DEPTH`]).
    pub max_depth: usize,
    /// Maximum characters in one number literal ([`DEFAULT_MAX_LITERAL_LEN`]).
    pub max_literal_len: usize,
    /// Maximum decimal digits of an integer value ([`DEFAULT_MAX_INTEGER_DIGITS`],
    /// capped at [`MAX_SUPPORTED_INTEGER_DIGITS`]).
    pub max_integer_digits: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_expression_bytes: DEFAULT_MAX_EXPRESSION_BYTES,
            max_depth: DEFAULT_MAX_DEPTH,
            max_literal_len: DEFAULT_MAX_LITERAL_LEN,
            max_integer_digits: DEFAULT_MAX_INTEGER_DIGITS,
        }
    }
}

impl Limits {
    /// The depth limit actually enforced.
    pub(crate) fn depth(&self) -> usize {
        self.max_depth.min(MAX_SUPPORTED_DEPTH)
    }

    /// The integer size limit actually enforced (at least one digit).
    pub(crate) fn integer_digits(&self) -> usize {
        self.max_integer_digits
            .clamp(1, MAX_SUPPORTED_INTEGER_DIGITS)
    }
}
