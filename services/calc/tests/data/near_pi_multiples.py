import sys; sys.set_int_max_str_digits(0)
# Writes near_pi_multiples.tsv (python3 near_pi_multiples.py > near_pi_multiples.tsv, then the
# header lines): trigonometry of the integers closest to multiples of pi. Takes about 15 s.
import mpmath
from decimal import Decimal, Context, ROUND_HALF_EVEN
mpmath.mp.dps = 12000
CTX = Context(prec=34, Emax=6144, Emin=-6143, rounding=ROUND_HALF_EVEN)
# Numerators of continued-fraction convergents of pi: the integers closest to multiples of pi.
a = mpmath.pi; p0, p1 = 0, 1; nums = {}
for i in range(1, 5801):
    q = int(mpmath.floor(a)); a = 1 / (a - q); p0, p1 = p1, q * p1 + p0
    nums[i] = p1
def expr(n):
    s = str(n); chunks = []
    while s:
        chunks.insert(0, s[-999:]); s = s[:-999]
    e = chunks[0]
    for c in chunks[1:]:
        e = f"({e}) * 10^{len(c)} + {c.lstrip('0') or '0'}"
    return e
for i in (683, 5800):
    n = nums[i]
    for f in ("sin", "cos", "tan"):
        v = getattr(mpmath, f)(n)
        d = CTX.create_decimal(mpmath.nstr(v, 60, min_fixed=-10**9, max_fixed=10**9))
        d = d.normalize(CTX); print(f"{len(str(n))}\t{f}({expr(n)})\t{d:f}")
