//! Typed errors: a kind for programs, a message with the position for people.

use std::fmt;

/// What went wrong. The first group is found by [`parse`](crate::parse); the
/// evaluation errors ([`ErrorKind::is_evaluation_error`]) only by evaluating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A token that cannot appear where it does (including a malformed number,
    /// a stray character, or an early end of the expression).
    UnexpectedToken,
    /// A `(` that is never closed or a `)` that was never opened.
    UnbalancedParenthesis,
    /// A name that is neither a known constant nor a known function.
    UnknownIdentifier,
    /// A function called with the wrong number of arguments.
    WrongArgumentCount,
    /// Division or remainder by zero, or zero raised to a negative power.
    DivisionByZero,
    /// An argument outside a function's domain (`sqrt(-1)`, `ln(0)`, `factorial(2.5)`).
    DomainError,
    /// A result beyond the integer size limit or decimal128's exponent range.
    ResultTooLarge,
    /// More nesting than [`Limits::max_depth`](crate::Limits::max_depth).
    NestingTooDeep,
    /// More bytes than [`Limits::max_expression_bytes`](crate::Limits::max_expression_bytes).
    ExpressionTooLong,
    /// A number literal longer than [`Limits::max_literal_len`](crate::Limits::max_literal_len).
    LiteralTooLong,
    /// Nothing but whitespace.
    EmptyExpression,
}

impl ErrorKind {
    /// True for the errors only evaluation can find (the gateway's `parse`
    /// never returns them): division by zero, domain error, result too large.
    pub fn is_evaluation_error(self) -> bool {
        matches!(
            self,
            ErrorKind::DivisionByZero | ErrorKind::DomainError | ErrorKind::ResultTooLarge
        )
    }

    /// A stable snake_case name, e.g. for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::UnexpectedToken => "unexpected_token",
            ErrorKind::UnbalancedParenthesis => "unbalanced_parenthesis",
            ErrorKind::UnknownIdentifier => "unknown_identifier",
            ErrorKind::WrongArgumentCount => "wrong_argument_count",
            ErrorKind::DivisionByZero => "division_by_zero",
            ErrorKind::DomainError => "domain_error",
            ErrorKind::ResultTooLarge => "result_too_large",
            ErrorKind::NestingTooDeep => "nesting_too_deep",
            ErrorKind::ExpressionTooLong => "expression_too_long",
            ErrorKind::LiteralTooLong => "literal_too_long",
            ErrorKind::EmptyExpression => "empty_expression",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from [`parse`](crate::parse) or evaluation. `Display` is the
/// human-readable message, which names the position when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CalcError {
    kind: ErrorKind,
    message: String,
    column: Option<usize>,
}

impl CalcError {
    /// An error at a 1-based character column; the message gets " at column N".
    pub(crate) fn at(kind: ErrorKind, column: usize, what: impl fmt::Display) -> Self {
        CalcError {
            kind,
            message: format!("{what} at column {column}"),
            column: Some(column),
        }
    }

    /// An error without a position (evaluation errors).
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        CalcError {
            kind,
            message: message.into(),
            column: None,
        }
    }

    /// An error whose message already names the position itself.
    pub(crate) fn with_message_at(kind: ErrorKind, column: usize, message: String) -> Self {
        CalcError {
            kind,
            message,
            column: Some(column),
        }
    }

    pub(crate) fn too_large() -> Self {
        CalcError::new(ErrorKind::ResultTooLarge, "result too large")
    }

    pub(crate) fn division_by_zero() -> Self {
        CalcError::new(ErrorKind::DivisionByZero, "division by zero")
    }

    pub(crate) fn domain(message: impl fmt::Display) -> Self {
        CalcError::new(ErrorKind::DomainError, format!("domain error: {message}"))
    }

    /// What went wrong, for programs.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable message (the same text as `Display`).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The 1-based character column of the fault, for errors found in the
    /// source text (syntax, names, arity, nesting, literal length).
    pub fn column(&self) -> Option<usize> {
        self.column
    }
}
