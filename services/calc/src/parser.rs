//! Recursive-descent parser with a nesting budget.
//!
//! Grammar (lowest precedence first):
//!
//! ```text
//! expr    := term (('+' | '-') term)*
//! term    := unary (('*' | '/' | '%') unary)*
//! unary   := ('+' | '-') unary | power
//! power   := primary ('^' unary)?            -- right-associative; binds tighter than unary minus
//! primary := number | constant | function '(' expr (',' expr)* ')' | '(' expr ')'
//! ```
//!
//! Every way the grammar can recurse (a unary operator, a `^` exponent, a
//! parenthesis, a function call) spends one level of the nesting budget
//! *before* recursing, so `((((...))))` 100,000 deep is an error after
//! `max_depth` levels instead of a stack overflow.

use num_bigint::BigInt;

use crate::ast::{BinOp, Constant, DecimalLiteral, Func, Node};
use crate::error::{CalcError, ErrorKind};
use crate::lexer::{Token, TokenKind, shorten, tokenize};
use crate::limits::Limits;

/// Exponents of decimal literals are clamped to this magnitude: anything
/// beyond is far outside decimal128's range either way (it overflows or
/// rounds to zero), and the clamp keeps exponent arithmetic in `i64`.
const MAX_LITERAL_EXPONENT: i64 = 1_000_000_000_000;

pub(crate) fn parse_source(source: &str, limits: &Limits) -> Result<Node, CalcError> {
    if source.len() > limits.max_expression_bytes {
        // The position is that of the first character past the limit.
        let within = (0..=limits.max_expression_bytes)
            .rev()
            .find(|&end| source.is_char_boundary(end))
            .unwrap_or(0);
        let column = source[..within].chars().count() + 1;
        return Err(CalcError::with_message_at(
            ErrorKind::ExpressionTooLong,
            column,
            format!(
                "expression too long: {} bytes, the limit is {} (exceeded at column {column})",
                source.len(),
                limits.max_expression_bytes
            ),
        ));
    }
    if source.trim().is_empty() {
        // Where an expression was expected: the end of the input.
        return Err(CalcError::at(
            ErrorKind::EmptyExpression,
            source.chars().count() + 1,
            "empty expression",
        ));
    }
    let tokens = tokenize(source, limits.max_literal_len)?;
    let mut parser = Parser {
        tokens,
        pos: 0,
        depth: 0,
        max_depth: limits.depth(),
        open_parens: 0,
    };
    let node = parser.expr()?;
    let token = parser.peek();
    match token.kind {
        TokenKind::End => Ok(node),
        TokenKind::RParen => Err(CalcError::with_message_at(
            ErrorKind::UnbalancedParenthesis,
            token.column,
            format!(
                "unbalanced parenthesis: ')' at column {} has no matching '('",
                token.column
            ),
        )),
        _ => Err(unexpected(token)),
    }
}

fn unexpected(token: Token<'_>) -> CalcError {
    match token.kind {
        TokenKind::End => CalcError::at(
            ErrorKind::UnexpectedToken,
            token.column,
            "unexpected end of expression",
        ),
        kind => CalcError::at(
            ErrorKind::UnexpectedToken,
            token.column,
            format!("unexpected {}", shorten(&kind.describe())),
        ),
    }
}

struct Parser<'a> {
    tokens: Vec<Token<'a>>,
    pos: usize,
    depth: usize,
    max_depth: usize,
    /// Parentheses currently open, to tell a stray `)` from a misplaced one.
    open_parens: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Token<'a> {
        // The token vector always ends with `End`, and `pos` never moves past it.
        self.tokens
            .get(self.pos)
            .or(self.tokens.last())
            .copied()
            .unwrap_or(Token {
                kind: TokenKind::End,
                column: 1,
            })
    }

    fn advance(&mut self) -> Token<'a> {
        let token = self.peek();
        if token.kind != TokenKind::End {
            self.pos += 1;
        }
        token
    }

    /// Spends one nesting level; the caller must call `leave` afterwards.
    fn enter(&mut self, column: usize) -> Result<(), CalcError> {
        self.depth += 1;
        if self.depth > self.max_depth {
            return Err(CalcError::at(
                ErrorKind::NestingTooDeep,
                column,
                format!(
                    "expression nested too deeply (more than {} levels)",
                    self.max_depth
                ),
            ));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn expr(&mut self) -> Result<Node, CalcError> {
        let first = self.term()?;
        let mut rest = Vec::new();
        loop {
            let op = match self.peek().kind {
                TokenKind::Plus => BinOp::Add,
                TokenKind::Minus => BinOp::Sub,
                _ => break,
            };
            self.advance();
            rest.push((op, self.term()?));
        }
        Ok(chain(first, rest))
    }

    fn term(&mut self) -> Result<Node, CalcError> {
        let first = self.unary()?;
        let mut rest = Vec::new();
        loop {
            let op = match self.peek().kind {
                TokenKind::Star => BinOp::Mul,
                TokenKind::Slash => BinOp::Div,
                TokenKind::Percent => BinOp::Rem,
                _ => break,
            };
            self.advance();
            rest.push((op, self.unary()?));
        }
        Ok(chain(first, rest))
    }

    fn unary(&mut self) -> Result<Node, CalcError> {
        let token = self.peek();
        match token.kind {
            TokenKind::Plus | TokenKind::Minus => {
                self.advance();
                self.enter(token.column)?;
                let operand = self.unary();
                self.leave();
                let operand = operand?;
                // Unary plus changes nothing, so it leaves no trace in the tree.
                Ok(if token.kind == TokenKind::Minus {
                    Node::Neg(Box::new(operand))
                } else {
                    operand
                })
            }
            _ => self.power(),
        }
    }

    fn power(&mut self) -> Result<Node, CalcError> {
        let base = self.primary()?;
        let token = self.peek();
        if token.kind != TokenKind::Caret {
            return Ok(base);
        }
        self.advance();
        self.enter(token.column)?;
        let exponent = self.unary();
        self.leave();
        Ok(Node::Pow(Box::new(base), Box::new(exponent?)))
    }

    fn primary(&mut self) -> Result<Node, CalcError> {
        let token = self.advance();
        match token.kind {
            TokenKind::Number(text) => number(text, token.column),
            TokenKind::Ident(name) => self.identifier(name, token.column),
            TokenKind::LParen => {
                self.enter(token.column)?;
                self.open_parens += 1;
                let inner = self.expr();
                self.open_parens -= 1;
                self.leave();
                let inner = inner?;
                self.close(token.column)?;
                Ok(inner)
            }
            TokenKind::RParen if self.open_parens == 0 => Err(CalcError::with_message_at(
                ErrorKind::UnbalancedParenthesis,
                token.column,
                format!(
                    "unbalanced parenthesis: ')' at column {} has no matching '('",
                    token.column
                ),
            )),
            _ => Err(unexpected(token)),
        }
    }

    /// Expects the `)` that closes the `(` at `open_column`.
    fn close(&mut self, open_column: usize) -> Result<(), CalcError> {
        let token = self.peek();
        match token.kind {
            TokenKind::RParen => {
                self.advance();
                Ok(())
            }
            TokenKind::End => Err(never_closed(open_column)),
            kind => Err(CalcError::at(
                ErrorKind::UnexpectedToken,
                token.column,
                format!("expected ')' but found {}", shorten(&kind.describe())),
            )),
        }
    }

    fn identifier(&mut self, name: &str, column: usize) -> Result<Node, CalcError> {
        let called = self.peek().kind == TokenKind::LParen;
        if !called {
            if let Some(constant) = Constant::lookup(name) {
                return Ok(Node::Constant(constant));
            }
            if Func::lookup(name).is_some() {
                return Err(CalcError::at(
                    ErrorKind::UnexpectedToken,
                    column,
                    format!("function '{name}' must be called with parentheses"),
                ));
            }
            return Err(CalcError::at(
                ErrorKind::UnknownIdentifier,
                column,
                format!("unknown identifier '{}'", shorten(name)),
            ));
        }
        let Some(func) = Func::lookup(name) else {
            return Err(CalcError::at(
                ErrorKind::UnknownIdentifier,
                column,
                format!("unknown function '{}'", shorten(name)),
            ));
        };
        let open = self.advance();
        self.enter(open.column)?;
        self.open_parens += 1;
        let args = self.arguments(open.column);
        self.open_parens -= 1;
        self.leave();
        let args = args?;
        let arity_ok = if func.is_variadic() {
            !args.is_empty()
        } else {
            args.len() == 1
        };
        if !arity_ok {
            let expected = if func.is_variadic() {
                "at least 1 argument"
            } else {
                "exactly 1 argument"
            };
            return Err(CalcError::at(
                ErrorKind::WrongArgumentCount,
                column,
                format!(
                    "wrong number of arguments: '{}' takes {expected} but was given {}",
                    func.name(),
                    args.len()
                ),
            ));
        }
        Ok(Node::Call(func, args))
    }

    /// Parses `expr (',' expr)* ')'` or an empty `)` after the `(` at `open_column`.
    fn arguments(&mut self, open_column: usize) -> Result<Vec<Node>, CalcError> {
        let mut args = Vec::new();
        if self.peek().kind == TokenKind::RParen {
            self.advance();
            return Ok(args);
        }
        loop {
            args.push(self.expr()?);
            let token = self.peek();
            match token.kind {
                TokenKind::Comma => {
                    self.advance();
                }
                TokenKind::RParen => {
                    self.advance();
                    return Ok(args);
                }
                TokenKind::End => return Err(never_closed(open_column)),
                kind => {
                    return Err(CalcError::at(
                        ErrorKind::UnexpectedToken,
                        token.column,
                        format!(
                            "expected ',' or ')' but found {}",
                            shorten(&kind.describe())
                        ),
                    ));
                }
            }
        }
    }
}

fn never_closed(open_column: usize) -> CalcError {
    CalcError::with_message_at(
        ErrorKind::UnbalancedParenthesis,
        open_column,
        format!("unbalanced parenthesis: '(' at column {open_column} is never closed"),
    )
}

fn chain(first: Node, rest: Vec<(BinOp, Node)>) -> Node {
    if rest.is_empty() {
        first
    } else {
        Node::Chain(Box::new(first), rest)
    }
}

/// Turns a well-formed literal (checked by the lexer) into a node: without a
/// point or an exponent it is an integer, otherwise a decimal kept exactly.
fn number(text: &str, column: usize) -> Result<Node, CalcError> {
    let (mantissa, exponent_text) = match text.find(['e', 'E']) {
        Some(pos) => (&text[..pos], Some(&text[pos + 1..])),
        None => (text, None),
    };
    let is_decimal = exponent_text.is_some() || mantissa.contains('.');
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits: String = format!("{int_part}{frac_part}");
    let trimmed = all_digits.trim_start_matches('0');
    let digits = if trimmed.is_empty() { "0" } else { trimmed };
    let malformed = || {
        CalcError::at(
            ErrorKind::UnexpectedToken,
            column,
            format!("malformed number '{}'", shorten(text)),
        )
    };
    if !is_decimal {
        let n = digits.parse::<BigInt>().map_err(|_| malformed())?;
        return Ok(Node::Integer(n));
    }
    let exponent = match exponent_text {
        None => 0,
        Some(e) => parse_clamped_exponent(e).ok_or_else(malformed)?,
    };
    let frac_len = i64::try_from(frac_part.len()).map_err(|_| malformed())?;
    Ok(Node::Decimal(DecimalLiteral {
        digits: digits.to_string(),
        exponent: (exponent - frac_len).clamp(-MAX_LITERAL_EXPONENT, MAX_LITERAL_EXPONENT),
    }))
}

/// Parses `[+-]digits`, clamping the magnitude to [`MAX_LITERAL_EXPONENT`].
fn parse_clamped_exponent(text: &str) -> Option<i64> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let mut value: i64 = 0;
    for b in digits.bytes() {
        if !b.is_ascii_digit() {
            return None;
        }
        value = (value * 10 + i64::from(b - b'0')).min(MAX_LITERAL_EXPONENT);
    }
    Some(if negative { -value } else { value })
}
