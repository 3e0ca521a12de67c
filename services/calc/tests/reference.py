#!/usr/bin/env python3
"""Reference evaluator for dalc-calc's differential test.

Reads one expression per line on stdin and prints one line per expression:
  ok int <digits>          exact integer result
  ok dec exact <text>      decimal result that must match digit for digit
  ok dec approx <text>     decimal result that must match within one ulp
  err <ErrorKind>          an error (DivisionByZero, DomainError, ...)
It mirrors dalc's semantics with Python ints, the decimal module
(prec=34, Emax=6144, Emin=-6143, ROUND_HALF_EVEN) and mpmath for sin/cos/tan.
Flushes after every line so the caller can stream.
"""
import math
import re
import sys
from decimal import (Context, Decimal, DivisionByZero, InvalidOperation,
                     Overflow, ROUND_HALF_EVEN, localcontext)

try:
    import mpmath
except ImportError:  # the Rust test turns this into a clear failure
    print("MISSING mpmath", flush=True)
    sys.exit(3)

sys.set_int_max_str_digits(0)
sys.setrecursionlimit(100000)

MAX_INT_DIGITS = 10000
CTX = Context(prec=34, Emax=6144, Emin=-6143, rounding=ROUND_HALF_EVEN,
              traps=[InvalidOperation, DivisionByZero, Overflow], clamp=0)
BIG = Context(prec=60000, Emax=10**8, Emin=-10**8, rounding=ROUND_HALF_EVEN,
              traps=[InvalidOperation, DivisionByZero, Overflow], clamp=0)
WORK = Context(prec=90, Emax=999999, Emin=-999999, rounding=ROUND_HALF_EVEN,
               traps=[InvalidOperation, DivisionByZero, Overflow], clamp=0)


class CalcErr(Exception):
    def __init__(self, kind):
        super().__init__(kind)
        self.kind = kind


class Approx:
    """Marks a decimal result that only needs to be within one ulp."""
    def __init__(self, d):
        self.d = d


def too_large():
    return CalcErr("ResultTooLarge")


def check_int(n):
    if n != 0 and len(str(abs(n))) > MAX_INT_DIGITS:
        raise too_large()
    return n


def D(x):
    return x if isinstance(x, Decimal) else Decimal(x)


def dec_op(f):
    try:
        return f()
    except Overflow:
        raise too_large()
    except DivisionByZero:
        raise CalcErr("DivisionByZero")
    except InvalidOperation:
        raise CalcErr("DomainError")


# ---------------------------------------------------------------- parsing
TOKEN = re.compile(r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<id>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>[-+*/%^(),]))")
FUNCS = {"sqrt", "abs", "floor", "ceil", "round", "min", "max", "ln", "log10",
         "exp", "sin", "cos", "tan", "factorial"}


def tokenize(s):
    pos, out = 0, []
    s = s.rstrip()
    while pos < len(s):
        m = TOKEN.match(s, pos)
        if not m or m.end() == pos:
            raise CalcErr("UnexpectedToken")
        pos = m.end()
        if m.group("num"):
            out.append(("num", m.group("num")))
        elif m.group("id"):
            out.append(("id", m.group("id")))
        else:
            out.append(("op", m.group("op")))
    out.append(("end", None))
    return out


class Parser:
    def __init__(self, toks):
        self.t, self.i = toks, 0

    def peek(self):
        return self.t[self.i]

    def next(self):
        tok = self.t[self.i]
        if tok[0] != "end":
            self.i += 1
        return tok

    def expr(self):
        node = self.term()
        while self.peek() in (("op", "+"), ("op", "-")):
            op = self.next()[1]
            node = ("bin", op, node, self.term())
        return node

    def term(self):
        node = self.unary()
        while self.peek() in (("op", "*"), ("op", "/"), ("op", "%")):
            op = self.next()[1]
            node = ("bin", op, node, self.unary())
        return node

    def unary(self):
        if self.peek() in (("op", "+"), ("op", "-")):
            op = self.next()[1]
            inner = self.unary()
            return ("neg", inner) if op == "-" else inner
        return self.power()

    def power(self):
        base = self.primary()
        if self.peek() == ("op", "^"):
            self.next()
            return ("pow", base, self.unary())
        return base

    def primary(self):
        kind, val = self.next()
        if kind == "num":
            return ("num", val)
        if kind == "id":
            if self.peek() == ("op", "("):
                if val not in FUNCS:
                    raise CalcErr("UnknownIdentifier")
                self.next()
                args = []
                if self.peek() == ("op", ")"):
                    self.next()
                else:
                    while True:
                        args.append(self.expr())
                        k = self.next()
                        if k == ("op", ")"):
                            break
                        if k != ("op", ","):
                            raise CalcErr("UnbalancedParenthesis" if k[0] == "end" else "UnexpectedToken")
                variadic = val in ("min", "max")
                if (variadic and not args) or (not variadic and len(args) != 1):
                    raise CalcErr("WrongArgumentCount")
                return ("call", val, args)
            if val in ("pi", "e"):
                return ("const", val)
            if val in FUNCS:
                raise CalcErr("UnexpectedToken")
            raise CalcErr("UnknownIdentifier")
        if (kind, val) == ("op", "("):
            node = self.expr()
            k = self.next()
            if k != ("op", ")"):
                raise CalcErr("UnbalancedParenthesis" if k[0] == "end" else "UnexpectedToken")
            return node
        raise CalcErr("UnexpectedToken")


# ------------------------------------------------------------- evaluation
mpmath.mp.dps = 60
PI = CTX.create_decimal(mpmath.nstr(+mpmath.pi, 60))
E = CTX.create_decimal(mpmath.nstr(mpmath.e, 60))


def is_integral(x):
    return isinstance(x, int) or x == x.to_integral_value()


def to_int(x):
    return x if isinstance(x, int) else int(x)


def ev(node):
    kind = node[0]
    if kind == "num":
        text = node[1]
        if "." in text or "e" in text or "E" in text:
            return dec_op(lambda: CTX.create_decimal(text))
        return check_int(int(text))
    if kind == "const":
        return PI if node[1] == "pi" else E
    if kind == "neg":
        x = val(ev(node[1]))
        return -x if isinstance(x, int) else dec_op(lambda: CTX.minus(x))
    if kind == "bin":
        a, b = val(ev(node[2])), val(ev(node[3]))
        return binop(node[1], a, b)
    if kind == "pow":
        return power(val(ev(node[1])), val(ev(node[2])))
    if kind == "call":
        args = [val(ev(a)) for a in node[2]]
        return call(node[1], args)
    raise AssertionError(node)


def val(x):
    return x.d if isinstance(x, Approx) else x


def binop(op, a, b):
    if op in "/%" and b == 0:
        raise CalcErr("DivisionByZero")
    if isinstance(a, int) and isinstance(b, int):
        if op == "+":
            return check_int(a + b)
        if op == "-":
            return check_int(a - b)
        if op == "*":
            if a and b and (a.bit_length() + b.bit_length() - 2) * math.log10(2) > MAX_INT_DIGITS + 1:
                raise too_large()
            return check_int(a * b)
        if op == "/":
            if a % b == 0:
                return check_int(a // b)
            return dec_op(lambda: CTX.divide(D(a), D(b)))
        if op == "%":
            r = abs(a) % abs(b)
            return -r if a < 0 else r
    if op == "%":
        r = dec_op(lambda: BIG.remainder(D(a), D(b)))
        return dec_op(lambda: CTX.plus(r))
    f = {"+": CTX.add, "-": CTX.subtract, "*": CTX.multiply, "/": CTX.divide}[op]
    return dec_op(lambda: f(D(a), D(b)))


def power(a, b):
    if isinstance(a, int) and isinstance(b, int):
        if b >= 0:
            if b == 0 or a == 1:
                return 1
            if a == 0:
                return 0
            if a == -1:
                return 1 if b % 2 == 0 else -1
            if b >= 2**32 or b * (abs(a).bit_length() - 1) * math.log10(2) > MAX_INT_DIGITS + 1:
                raise too_large()
            return check_int(a ** b)
        if a == 0:
            raise CalcErr("DivisionByZero")
        if abs(a) == 1:
            return Decimal(-1 if a < 0 and b % 2 else 1)
        if -b >= 2**32 or -b * (abs(a).bit_length() - 1) * math.log10(2) > 6178:
            return Decimal(0)
        return dec_op(lambda: CTX.divide(Decimal(1), Decimal(a ** -b)))
    if b == 0:
        return Decimal(1)
    if a == 0:
        if b < 0:
            raise CalcErr("DivisionByZero")
        return Decimal(0)
    if a < 0 and not is_integral(b):
        raise CalcErr("DomainError")
    if isinstance(b, int) and len(str(abs(b))) > 40:
        if abs(a) == 1:
            return Decimal(-1 if a < 0 and b % 2 else 1)
        if (abs(a) > 1) == (b > 0):
            raise too_large()
        return Decimal(0)
    r = dec_op(lambda: WORK.power(D(a), D(b)))
    return Approx(dec_op(lambda: CTX.plus(r)))


def trig(name, x):
    xd = D(x)
    bits = max(0, xd.adjusted() + 1) * 3.33
    mpmath.mp.prec = int(bits) + 400
    xm = mpmath.mpf(str(xd))
    y = getattr(mpmath, name)(xm)
    mpmath.mp.prec = 300
    text = mpmath.nstr(y, 70, min_fixed=1, max_fixed=0)
    mpmath.mp.dps = 60
    return Approx(dec_op(lambda: CTX.create_decimal(text)))


def call(name, args):
    if name in ("min", "max"):
        best = args[0]
        for x in args[1:]:
            if (x < best) if name == "min" else (x > best):
                best = x
        return best
    x = args[0]
    if name == "sqrt":
        if x < 0:
            raise CalcErr("DomainError")
        return dec_op(lambda: CTX.sqrt(D(x)))
    if name == "abs":
        return abs(x) if isinstance(x, int) else dec_op(lambda: CTX.abs(x))
    if name in ("floor", "ceil", "round"):
        if isinstance(x, int):
            return x
        if x.adjusted() >= MAX_INT_DIGITS:
            raise too_large()
        f = {"floor": math.floor, "ceil": math.ceil, "round": round}[name]
        return check_int(f(x))
    if name in ("ln", "log10"):
        if x <= 0:
            raise CalcErr("DomainError")
        return dec_op(lambda: (CTX.ln if name == "ln" else CTX.log10)(D(x)))
    if name == "exp":
        if isinstance(x, int) and abs(x) >= 2**20:
            if x < 0:
                return Decimal(0)
            raise too_large()
        return dec_op(lambda: CTX.exp(D(x)))
    if name in ("sin", "cos", "tan"):
        return trig(name, x)
    if name == "factorial":
        if not is_integral(x) or x < 0:
            raise CalcErr("DomainError")
        if D(x).adjusted() > 9:
            raise too_large()
        n = to_int(x)
        if n >= 2 and n * math.log10(n / math.e) + 0.5 * math.log10(2 * math.pi * n) - 1 > MAX_INT_DIGITS + 1:
            raise too_large()
        return check_int(math.factorial(n))
    raise AssertionError(name)


def canonical(d):
    if d == 0:
        return "0"
    with localcontext(Context(prec=100, Emax=10**7, Emin=-10**7)):
        d = d.normalize()
    text = format(d, "f")
    return text


def evaluate(line):
    try:
        toks = tokenize(line)
        if toks[0][0] == "end":
            return "err EmptyExpression"
        p = Parser(toks)
        node = p.expr()
        if p.peek()[0] != "end":
            return "err UnbalancedParenthesis" if p.peek() == ("op", ")") else "err UnexpectedToken"
        result = ev(node)
    except CalcErr as e:
        return "err " + e.kind
    except Exception as e:  # a bug in this script: report it, keep going
        return "crash " + type(e).__name__ + ": " + str(e)[:200]
    if isinstance(result, int):
        return "ok int " + str(result)
    if isinstance(result, Approx):
        return "ok dec approx " + canonical(result.d)
    return "ok dec exact " + canonical(result)


def main():
    for line in sys.stdin:
        line = line.rstrip("\n")
        print(evaluate(line), flush=True)


if __name__ == "__main__":
    main()
