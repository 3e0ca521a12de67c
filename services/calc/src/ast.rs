//! The syntax tree and its canonical printing.
//!
//! Runs of the same left-associative operators (`1 + 2 - 3`, `2 * 3 / 4`) are
//! one [`Node::Chain`] holding a vector, not a left-deep tree: a 4 KiB sum of
//! 2,000 terms is then one level deep, so the tree's depth is bounded by the
//! parser's nesting limit and recursion in evaluation, `Display`, `Clone`,
//! `PartialEq` and `Drop` stays shallow.
//!
//! `Display` prints a compact canonical form (no spaces, only the parentheses
//! the tree needs, normalized literals) that is never longer, never deeper
//! and has no longer literal than the source it was parsed from, so it
//! re-parses to an equal tree under the same [`Limits`](crate::Limits).

use std::fmt;

use num_bigint::BigInt;

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl BinOp {
    fn symbol(self) -> char {
        match self {
            BinOp::Add => '+',
            BinOp::Sub => '-',
            BinOp::Mul => '*',
            BinOp::Div => '/',
            BinOp::Rem => '%',
        }
    }

    fn precedence(self) -> u8 {
        match self {
            BinOp::Add | BinOp::Sub => PREC_ADD,
            BinOp::Mul | BinOp::Div | BinOp::Rem => PREC_MUL,
        }
    }
}

/// Named constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Constant {
    Pi,
    E,
}

impl Constant {
    pub(crate) fn lookup(name: &str) -> Option<Constant> {
        match name {
            "pi" => Some(Constant::Pi),
            "e" => Some(Constant::E),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Constant::Pi => "pi",
            Constant::E => "e",
        }
    }
}

/// Built-in functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Sqrt,
    Abs,
    Floor,
    Ceil,
    Round,
    Min,
    Max,
    Ln,
    Log10,
    Exp,
    Sin,
    Cos,
    Tan,
    Factorial,
}

impl Func {
    const ALL: [Func; 14] = [
        Func::Sqrt,
        Func::Abs,
        Func::Floor,
        Func::Ceil,
        Func::Round,
        Func::Min,
        Func::Max,
        Func::Ln,
        Func::Log10,
        Func::Exp,
        Func::Sin,
        Func::Cos,
        Func::Tan,
        Func::Factorial,
    ];

    pub(crate) fn lookup(name: &str) -> Option<Func> {
        Func::ALL.into_iter().find(|f| f.name() == name)
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Func::Sqrt => "sqrt",
            Func::Abs => "abs",
            Func::Floor => "floor",
            Func::Ceil => "ceil",
            Func::Round => "round",
            Func::Min => "min",
            Func::Max => "max",
            Func::Ln => "ln",
            Func::Log10 => "log10",
            Func::Exp => "exp",
            Func::Sin => "sin",
            Func::Cos => "cos",
            Func::Tan => "tan",
            Func::Factorial => "factorial",
        }
    }

    /// `min` and `max` take one or more arguments; every other function one.
    pub(crate) fn is_variadic(self) -> bool {
        matches!(self, Func::Min | Func::Max)
    }
}

/// A decimal literal exactly as written: `digits × 10^exponent`, with leading
/// zeros removed (so `0.50` is digits `50`, exponent `-2`). Rounding to 34
/// digits happens at evaluation, like Python's `Context.create_decimal`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecimalLiteral {
    pub(crate) digits: String,
    pub(crate) exponent: i64,
}

impl fmt::Display for DecimalLiteral {
    /// The shorter of plain (`1.5`, `.001`, `12.`) and scientific (`15e2`)
    /// forms; both keep the digits, so the value and its kind survive.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = &self.digits;
        let scientific = format!("{digits}e{}", self.exponent);
        let plain = if self.exponent == 0 {
            Some(format!("{digits}."))
        } else if self.exponent < 0 {
            let frac = usize::try_from(-self.exponent).unwrap_or(usize::MAX);
            if frac < digits.len() {
                let (int_part, frac_part) = digits.split_at(digits.len() - frac);
                Some(format!("{int_part}.{frac_part}"))
            } else if frac - digits.len() <= scientific.len() {
                Some(format!(".{}{digits}", "0".repeat(frac - digits.len())))
            } else {
                None
            }
        } else {
            None
        };
        match plain {
            Some(plain) if plain.len() <= scientific.len() => f.write_str(&plain),
            _ => f.write_str(&scientific),
        }
    }
}

/// A node of the syntax tree.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Integer(BigInt),
    Decimal(DecimalLiteral),
    Constant(Constant),
    Neg(Box<Node>),
    /// `first op1 x1 op2 x2 ...`, all operators of one precedence level.
    Chain(Box<Node>, Vec<(BinOp, Node)>),
    /// `base ^ exponent` (right-associative).
    Pow(Box<Node>, Box<Node>),
    Call(Func, Vec<Node>),
}

/// How many nodes an expression may have and still count as cheap to evaluate.
const CHEAP_NODES: usize = 32;
/// The largest literal of a cheap expression: 128 bits, or 40 decimal digits.
const CHEAP_INTEGER_BITS: u64 = 128;
const CHEAP_DECIMAL_DIGITS: usize = 40;

const PREC_ADD: u8 = 1;
const PREC_MUL: u8 = 2;
const PREC_NEG: u8 = 3;
const PREC_POW: u8 = 4;
const PREC_ATOM: u8 = 5;

impl Node {
    /// Whether evaluating this is certainly a matter of microseconds: a few small numbers, and no
    /// operation whose cost grows with its operands (powers, factorials, roots, logarithms,
    /// exponentials, trigonometry). Conservative: `false` only means "might be slow".
    pub(crate) fn is_cheap(&self) -> bool {
        let mut budget = CHEAP_NODES;
        self.is_cheap_within(&mut budget)
    }

    fn is_cheap_within(&self, budget: &mut usize) -> bool {
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        match self {
            Node::Integer(n) => n.bits() <= CHEAP_INTEGER_BITS,
            Node::Decimal(d) => d.digits.len() <= CHEAP_DECIMAL_DIGITS,
            Node::Constant(_) => true,
            Node::Neg(inner) => inner.is_cheap_within(budget),
            Node::Chain(first, rest) => {
                first.is_cheap_within(budget)
                    && rest.iter().all(|(_, node)| node.is_cheap_within(budget))
            }
            Node::Pow(..) => false,
            Node::Call(func, args) => {
                matches!(
                    func,
                    Func::Abs | Func::Floor | Func::Ceil | Func::Round | Func::Min | Func::Max
                ) && args.iter().all(|node| node.is_cheap_within(budget))
            }
        }
    }

    fn precedence(&self) -> u8 {
        match self {
            Node::Chain(_, rest) => rest.first().map_or(PREC_ATOM, |(op, _)| op.precedence()),
            Node::Neg(_) => PREC_NEG,
            Node::Pow(..) => PREC_POW,
            Node::Integer(_) | Node::Decimal(_) | Node::Constant(_) | Node::Call(..) => PREC_ATOM,
        }
    }

    /// Writes `self`, in parentheses when its precedence is below `min`.
    fn fmt_at(&self, f: &mut fmt::Formatter<'_>, min: u8) -> fmt::Result {
        if self.precedence() < min {
            write!(f, "({self})")
        } else {
            write!(f, "{self}")
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Integer(n) => write!(f, "{n}"),
            Node::Decimal(d) => write!(f, "{d}"),
            Node::Constant(c) => f.write_str(c.name()),
            Node::Neg(x) => {
                f.write_str("-")?;
                x.fmt_at(f, PREC_NEG)
            }
            Node::Chain(first, rest) => {
                let level = self.precedence();
                // Operands of the same level need parentheses, or they
                // would merge into this chain when re-parsed.
                first.fmt_at(f, level + 1)?;
                for (op, operand) in rest {
                    write!(f, "{}", op.symbol())?;
                    operand.fmt_at(f, level + 1)?;
                }
                Ok(())
            }
            Node::Pow(base, exponent) => {
                // The base is a primary; the exponent may be a unary
                // expression (`2^-1`) or another power (`2^3^2`).
                base.fmt_at(f, PREC_ATOM)?;
                f.write_str("^")?;
                exponent.fmt_at(f, PREC_NEG)
            }
            Node::Call(func, args) => {
                write!(f, "{}(", func.name())?;
                for (i, arg) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{arg}")?;
                }
                f.write_str(")")
            }
        }
    }
}
