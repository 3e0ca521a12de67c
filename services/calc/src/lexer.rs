//! Lexer: source text to tokens, with 1-based character columns for errors.
//!
//! The input is already bounded by the length limit, so the token vector is
//! bounded too. Number literals are checked against the literal length limit
//! here, before any big-number parsing sees them.

use crate::error::{CalcError, ErrorKind};

/// One token and the 1-based character column where it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token<'a> {
    pub(crate) kind: TokenKind<'a>,
    pub(crate) column: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind<'a> {
    /// A number literal, verbatim (`42`, `0.1`, `.5`, `1.5e3`).
    Number(&'a str),
    Ident(&'a str),
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Caret,
    LParen,
    RParen,
    Comma,
    End,
}

impl TokenKind<'_> {
    /// How the token is named in error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            TokenKind::Number(text) => format!("number '{text}'"),
            TokenKind::Ident(name) => format!("identifier '{name}'"),
            TokenKind::Plus => "operator '+'".into(),
            TokenKind::Minus => "operator '-'".into(),
            TokenKind::Star => "operator '*'".into(),
            TokenKind::Slash => "operator '/'".into(),
            TokenKind::Percent => "operator '%'".into(),
            TokenKind::Caret => "operator '^'".into(),
            TokenKind::LParen => "'('".into(),
            TokenKind::RParen => "')'".into(),
            TokenKind::Comma => "','".into(),
            TokenKind::End => "end of expression".into(),
        }
    }
}

/// Splits `source` into tokens, ending with [`TokenKind::End`].
pub(crate) fn tokenize(source: &str, max_literal_len: usize) -> Result<Vec<Token<'_>>, CalcError> {
    let mut tokens = Vec::new();
    // (byte offset, char) pairs; the column is the char index + 1.
    let chars: Vec<(usize, char)> = source.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (start, c) = chars[i];
        let column = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let single = match c {
            '+' => Some(TokenKind::Plus),
            '-' => Some(TokenKind::Minus),
            '*' => Some(TokenKind::Star),
            '/' => Some(TokenKind::Slash),
            '%' => Some(TokenKind::Percent),
            '^' => Some(TokenKind::Caret),
            '(' => Some(TokenKind::LParen),
            ')' => Some(TokenKind::RParen),
            ',' => Some(TokenKind::Comma),
            _ => None,
        };
        if let Some(kind) = single {
            tokens.push(Token { kind, column });
            i += 1;
            continue;
        }
        if c.is_ascii_digit() || c == '.' {
            let end = scan_number(&chars, i);
            let end_byte = chars.get(end).map_or(source.len(), |&(b, _)| b);
            let text = &source[start..end_byte];
            let len = end - i;
            if len > max_literal_len {
                return Err(CalcError::at(
                    ErrorKind::LiteralTooLong,
                    column,
                    format!(
                        "number literal of {len} characters is longer than the limit of {max_literal_len}"
                    ),
                ));
            }
            if !is_well_formed_number(text) {
                return Err(CalcError::at(
                    ErrorKind::UnexpectedToken,
                    column,
                    format!("malformed number '{}'", shorten(text)),
                ));
            }
            tokens.push(Token {
                kind: TokenKind::Number(text),
                column,
            });
            i = end;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let mut end = i + 1;
            while end < chars.len() && (chars[end].1.is_ascii_alphanumeric() || chars[end].1 == '_')
            {
                end += 1;
            }
            let end_byte = chars.get(end).map_or(source.len(), |&(b, _)| b);
            tokens.push(Token {
                kind: TokenKind::Ident(&source[start..end_byte]),
                column,
            });
            i = end;
            continue;
        }
        return Err(CalcError::at(
            ErrorKind::UnexpectedToken,
            column,
            format!("unexpected character {c:?}"),
        ));
    }
    tokens.push(Token {
        kind: TokenKind::End,
        column: chars.len() + 1,
    });
    Ok(tokens)
}

/// Finds the end (char index) of the number starting at `i`: digits, an
/// optional fraction, an optional exponent. It takes the exponent letter only
/// when it belongs to the number, so a malformed tail such as `1e` or `1e+` is
/// included and reported as malformed rather than lexed as `1` then `e`.
fn scan_number(chars: &[(usize, char)], mut i: usize) -> usize {
    let at = |k: usize| chars.get(k).map(|&(_, c)| c);
    while at(i).is_some_and(|c| c.is_ascii_digit()) {
        i += 1;
    }
    if at(i) == Some('.') {
        i += 1;
        while at(i).is_some_and(|c| c.is_ascii_digit()) {
            i += 1;
        }
    }
    if matches!(at(i), Some('e' | 'E')) {
        i += 1;
        if matches!(at(i), Some('+' | '-')) {
            i += 1;
        }
        while at(i).is_some_and(|c| c.is_ascii_digit()) {
            i += 1;
        }
    }
    i
}

/// Checks the shape `digits [. digits] [e [+-] digits]` with at least one
/// mantissa digit and, when there is an exponent letter, at least one exponent digit.
fn is_well_formed_number(text: &str) -> bool {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(pos) => (&text[..pos], Some(&text[pos + 1..])),
        None => (text, None),
    };
    if !mantissa.bytes().any(|b| b.is_ascii_digit()) {
        return false;
    }
    match exponent {
        None => true,
        Some(exp) => {
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
        }
    }
}

/// Keeps error messages short even for a 1000-character literal.
pub(crate) fn shorten(text: &str) -> String {
    const MAX: usize = 40;
    if text.chars().count() <= MAX {
        text.to_string()
    } else {
        let head: String = text.chars().take(MAX).collect();
        format!("{head}...")
    }
}
