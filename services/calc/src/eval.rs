//! Evaluation: a walk over the tree. Its recursion depth is bounded by the
//! tree's depth, which the parser's nesting limit bounds (chains of
//! same-precedence operators are vectors, evaluated by iteration).

use num_bigint::BigInt;

use crate::arith::{binary, negate, power};
use crate::ast::{Constant, DecimalLiteral, Node};
use crate::error::CalcError;
use crate::functions::call;
use crate::limits::{DECIMAL_EMAX, Limits};
use crate::value::{D34, Value, checked_integer, parse34};

/// π and e rounded to 34 digits (checked against mpmath in the tests).
const PI_34: &str = "3141592653589793238462643383279503";
const E_34: &str = "2718281828459045235360287471352662";

pub(crate) fn evaluate_node(node: &Node, limits: &Limits) -> Result<Value, CalcError> {
    let max_digits = limits.integer_digits();
    match node {
        Node::Integer(n) => integer_literal(n, max_digits),
        Node::Decimal(literal) => decimal_literal(literal).map(Value::dec),
        Node::Constant(Constant::Pi) => parse34(PI_34, -33).map(Value::dec),
        Node::Constant(Constant::E) => parse34(E_34, -33).map(Value::dec),
        Node::Neg(x) => negate(evaluate_node(x, limits)?),
        Node::Chain(first, rest) => {
            let mut acc = evaluate_node(first, limits)?;
            for (op, operand) in rest {
                let rhs = evaluate_node(operand, limits)?;
                acc = binary(*op, acc, rhs, max_digits)?;
            }
            Ok(acc)
        }
        Node::Pow(base, exponent) => {
            let base = evaluate_node(base, limits)?;
            let exponent = evaluate_node(exponent, limits)?;
            power(base, exponent, max_digits)
        }
        Node::Call(func, args) => {
            let values = args
                .iter()
                .map(|arg| evaluate_node(arg, limits))
                .collect::<Result<Vec<_>, _>>()?;
            call(*func, values, max_digits)
        }
    }
}

fn integer_literal(n: &BigInt, max_digits: usize) -> Result<Value, CalcError> {
    checked_integer(n.clone(), max_digits)
}

/// Rounds a literal to 34 digits, like Python's `Context.create_decimal`:
/// too large is an error, too small rounds to zero.
fn decimal_literal(literal: &DecimalLiteral) -> Result<D34, CalcError> {
    let digits = i64::try_from(literal.digits.len()).unwrap_or(i64::MAX);
    let adjusted = literal.exponent.saturating_add(digits - 1);
    if literal.digits != "0" && adjusted > i64::from(DECIMAL_EMAX) {
        return Err(CalcError::too_large());
    }
    if literal.digits == "0" || adjusted < -100_000 {
        return parse34("0", 0);
    }
    parse34(&literal.digits, literal.exponent)
}
