//! Differential test against Python's `decimal` module and mpmath.
//!
//! Generates thousands of random expressions with a seeded RNG, evaluates
//! each here and in `tests/reference.py` (one Python process, fed through a
//! pipe), and compares: integers and correctly rounded decimals digit for
//! digit, `sin cos tan` and decimal `^` within one unit in the last place,
//! errors by kind. Fails (never skips) when python3 or mpmath is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use dalc_calc::{BigInt, Limits, evaluate};

const CASES: usize = 4000;

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
    fn digits(&mut self, n: usize) -> String {
        let mut s = String::new();
        for i in 0..n {
            let d = if i == 0 {
                1 + self.below(9)
            } else {
                self.below(10)
            };
            s.push(char::from(b'0' + d as u8));
        }
        s
    }
}

fn integer(rng: &mut Rng) -> String {
    match rng.below(10) {
        0..=4 => rng.below(21).to_string(),
        5..=7 => rng.below(1_000_000_000).to_string(),
        8 => {
            let n = 15 + rng.below(50) as usize;
            rng.digits(n)
        }
        _ => rng
            .pick(&[
                "0",
                "1",
                "2",
                "10",
                "100",
                "1000000",
                "9999999999999999999999999999999999",
            ])
            .to_string(),
    }
}

fn decimal(rng: &mut Rng) -> String {
    match rng.below(12) {
        0 => rng
            .pick(&[
                "0.1", "0.2", "0.5", ".5", "2.5", "1.5e3", "2E-7", "0.0", "1e3", "2.0", "3.5",
                "0.25",
            ])
            .to_string(),
        1..=4 => {
            let int_len = rng.below(4) as usize;
            let frac_len = 1 + rng.below(8) as usize;
            let int = if int_len == 0 {
                "0".to_string()
            } else {
                rng.digits(int_len)
            };
            format!("{int}.{}", rng.digits(frac_len))
        }
        5..=6 => {
            let n = 1 + rng.below(34) as usize;
            let e = rng.below(80) as i64 - 40;
            format!("{}.{}e{e}", rng.digits(1), rng.digits(n))
        }
        7 => {
            // More digits than 34: rounded on input.
            let n = 35 + rng.below(10) as usize;
            format!("{}.{}", rng.digits(1), rng.digits(n))
        }
        8 => {
            let e = 6100 + rng.below(44) as i64;
            let n = 1 + rng.below(33) as usize;
            format!("{}.{}e{e}", rng.digits(1), rng.digits(n))
        }
        9 => {
            let e = -(6100 + rng.below(90) as i64);
            let n = 1 + rng.below(30) as usize;
            format!("{}e{e}", rng.digits(n))
        }
        10 => format!("{}.{}", rng.below(100), rng.digits(33)),
        _ => {
            let n = 1 + rng.below(5) as usize;
            format!("{}e{}", rng.digits(n), rng.below(30))
        }
    }
}

fn leaf(rng: &mut Rng) -> String {
    match rng.below(10) {
        0..=4 => integer(rng),
        5..=8 => decimal(rng),
        _ => rng.pick(&["pi", "e"]).to_string(),
    }
}

const FUNCS: [&str; 14] = [
    "sqrt",
    "abs",
    "floor",
    "ceil",
    "round",
    "min",
    "max",
    "ln",
    "log10",
    "exp",
    "sin",
    "cos",
    "tan",
    "factorial",
];

fn expr(rng: &mut Rng, depth: u32) -> String {
    if depth == 0 || rng.chance(25) {
        return leaf(rng);
    }
    match rng.below(14) {
        0..=4 => {
            let op = rng.pick(&["+", "-", "*", "/", "%", "+", "-", "*", "/"]);
            let (a, b) = (expr(rng, depth - 1), expr(rng, depth - 1));
            let sp = if rng.chance(50) { " " } else { "" };
            format!("({a}{sp}{op}{sp}{b})")
        }
        5 => format!("-{}", expr(rng, depth - 1)),
        6..=7 => {
            let base = match rng.below(4) {
                0 => integer(rng),
                1 => decimal(rng),
                _ => format!("({})", expr(rng, depth - 1)),
            };
            let exponent = match rng.below(8) {
                0..=2 => rng.below(30).to_string(),
                3 => format!("-{}", 1 + rng.below(12)),
                4 => rng
                    .pick(&["0.5", "1.5", "-0.5", "0.25", "3.0", "-2.0", "0.1", "2.5"])
                    .to_string(),
                5 => rng
                    .pick(&["100", "1000", "5000", "40000", "123456789"])
                    .to_string(),
                _ => format!("({})", expr(rng, depth - 1)),
            };
            format!("{base}^{exponent}")
        }
        8 => {
            // Error provokers and limit probes.
            let x = expr(rng, depth - 1);
            rng.pick(&[
                "({x})/0",
                "({x})%0",
                "sqrt(-1-abs({x}))",
                "ln(0)",
                "ln(-({x})^2-1)",
                "factorial(-1)",
                "factorial(2.5)",
                "10^20000",
                "1e6144*10",
                "(-8)^(1/3)",
                "0^-1",
                "0.0^-2",
                "log10(0*({x}))",
                "factorial(3249)",
                "factorial(3248)",
                "2^33219",
                "2^33220",
                "exp(20000)",
                "exp(-20000)",
                "floor(9.9e6144)",
                "10^9999*1.0",
                "7^8000%13",
                "1/(10^9999)",
                "(10^9999+1)/(10^9999)",
            ])
            .replace("{x}", &x)
        }
        9 => {
            let n = 1 + rng.below(4);
            let args: Vec<String> = (0..n).map(|_| expr(rng, depth - 1)).collect();
            format!("{}({})", rng.pick(&["min", "max"]), args.join(", "))
        }
        10 => {
            let n = match rng.below(4) {
                0 => rng.below(30).to_string(),
                1 => rng
                    .pick(&["0", "1", "5.0", "1e2", "170", "500"])
                    .to_string(),
                _ => format!("abs(round({}))%40", expr(rng, depth - 1)),
            };
            format!("factorial({n})")
        }
        _ => {
            let f = FUNCS[rng.below(FUNCS.len() as u64) as usize];
            let arg = expr(rng, depth - 1);
            match f {
                "min" | "max" => format!("{f}({arg})"),
                "factorial" => format!("factorial(abs(round({arg}))%30)"),
                "exp" => format!("exp(({arg})%300)"),
                _ => format!("{f}({arg})"),
            }
        }
    }
}

/// A plain decimal text as (coefficient, scale): value = coefficient / 10^scale.
fn parse_plain(text: &str) -> (BigInt, u32) {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = format!("{int}{frac}");
    (digits.parse().expect("plain decimal"), frac.len() as u32)
}

/// The adjusted exponent of a non-zero plain decimal text.
fn adjusted(text: &str) -> i64 {
    let text = text.trim_start_matches('-');
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let int = int.trim_start_matches('0');
    if !int.is_empty() {
        int.len() as i64 - 1
    } else {
        let zeros = frac.len() - frac.trim_start_matches('0').len();
        -(zeros as i64) - 1
    }
}

/// Whether `ours` is within one unit in the 34th digit of `reference`.
fn within_one_ulp(ours: &str, reference: &str) -> bool {
    let (a, sa) = parse_plain(ours);
    let (b, sb) = parse_plain(reference);
    let ulp_exp = if reference == "0" {
        -6176
    } else {
        (adjusted(reference) - 33).max(-6176)
    };
    let scale = sa.max(sb).max((-ulp_exp).max(0) as u32);
    let ten = BigInt::from(10);
    let a = a * ten.pow(scale - sa);
    let b = b * ten.pow(scale - sb);
    let ulp = if ulp_exp >= 0 {
        ten.pow(ulp_exp as u32) * ten.pow(scale)
    } else {
        ten.pow((scale as i64 + ulp_exp) as u32)
    };
    let diff = if a > b { a - b } else { b - a };
    diff <= ulp
}

#[test]
fn matches_python_decimal_and_mpmath() {
    // DALC_DIFF_SEED / DALC_DIFF_CASES explore beyond the fixed default run.
    let seed = std::env::var("DALC_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9E37_79B9_7F4A_7C15);
    let count = std::env::var("DALC_DIFF_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CASES);
    let mut rng = Rng(seed | 1);
    let mut cases: Vec<String> = (0..count).map(|_| expr(&mut rng, 4)).collect();
    // Fixed cases that must be covered whatever the seed does.
    for fixed in [
        "1 + 1",
        "0.1 + 0.2",
        "7 / 2",
        "6 / 3",
        "2^100",
        "1 / 3",
        "sqrt(2)",
        "2^-1",
        "-7 % 3",
        "factorial(25)",
        "round(2.5)",
        "-2^2",
        "2^3^2",
        "sin(9e6144)",
        "cos(1e6000)",
        "tan(123456789012345678901234567890)",
        "sin(10^9999)",
        "ln(7^9999)",
        "log10(10^9999)",
        "sqrt(7^9999)",
        "sqrt(10^9998)",
        "exp(1)",
        "5 % 0.3",
        "1e6144 % 7",
        "1e-6170 / 3",
        "min(1, 1.0, 0.5)",
        "max(2, 3.0)",
        "round(-0.5)",
        "sin(pi)",
        "tan(pi/2)",
        "(10^40+1)^0.5",
        "1.0000000001^(10^41)",
        "0.9^(10^50)",
        "2.5^0.5",
        "(2^200)^0.5",
        "10^9999 % 1e-6176",
    ] {
        cases.push(fixed.to_string());
    }

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("the differential test needs python3 with mpmath on PATH: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input: String = cases.iter().map(|c| format!("{c}\n")).collect();
    let writer = std::thread::spawn(move || {
        // A failure here shows up as missing answers below.
        let _ = stdin.write_all(input.as_bytes());
    });
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let answers: Vec<String> = stdout.lines().map(|l| l.unwrap()).collect();
    writer.join().unwrap();
    let status = child.wait().unwrap();
    assert!(
        answers.first().map(String::as_str) != Some("MISSING mpmath"),
        "the differential test needs the Python package mpmath (pip install mpmath)"
    );
    assert!(status.success(), "reference.py failed: {status}");
    assert_eq!(
        answers.len(),
        cases.len(),
        "reference.py answered {} of {} cases",
        answers.len(),
        cases.len()
    );

    let limits = Limits::default();
    let mut failures = Vec::new();
    let (mut ints, mut decs, mut approx, mut errors) = (0, 0, 0, 0);
    for (case, answer) in cases.iter().zip(&answers) {
        let ours = evaluate(case, &limits);
        let ok = match (answer.split_once(' '), &ours) {
            (Some(("err", kind)), Err(e)) => {
                errors += 1;
                format!("{:?}", e.kind()) == kind
            }
            (Some(("ok", rest)), Ok(v)) => {
                let (kind, text) = rest.split_once(' ').unwrap();
                if kind == "int" {
                    ints += 1;
                    v.is_integer() && v.to_string() == text
                } else {
                    let (mode, text) = text.split_once(' ').unwrap();
                    let ours = v.to_string();
                    if mode == "exact" {
                        decs += 1;
                        !v.is_integer() && ours == text
                    } else {
                        approx += 1;
                        !v.is_integer() && within_one_ulp(&ours, text)
                    }
                }
            }
            _ => false,
        };
        if !ok {
            let ours = match &ours {
                Ok(v) => format!("ok {} {}", if v.is_integer() { "int" } else { "dec" }, v),
                Err(e) => format!("err {:?} ({e})", e.kind()),
            };
            failures.push(format!("{case}\n    python: {answer}\n    dalc:   {ours}"));
        }
    }
    eprintln!(
        "differential: {} cases: {ints} integers, {decs} exact decimals, {approx} within-1-ulp decimals, {errors} errors",
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from Python:\n{}",
        failures.len(),
        cases.len(),
        failures
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
