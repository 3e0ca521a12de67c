//! Parse + evaluate benchmarks: typical expressions and the slowest accepted
//! 4 KiB inputs found (see the crate docs for the measured bound).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use dalc_calc::{DEFAULT_MAX_EXPRESSION_BYTES, Limits, evaluate};

/// Joins `unit(0), unit(1), ...` with `+` up to the default length limit.
fn fill(unit: impl Fn(usize) -> String) -> String {
    let mut out = unit(0);
    for i in 1.. {
        let next = format!("{out}+{}", unit(i));
        if next.len() > DEFAULT_MAX_EXPRESSION_BYTES {
            break;
        }
        out = next;
    }
    out
}

const MIX: &str = "(1.5e3 + 2^10) * sqrt(2) / 7 - min(3, 4.25, -1) % 3 + ln(10) * exp(0.5) \
                   - sin(pi / 6) + cos(1) * tan(0.3) + factorial(20) / 3 + round(2.5) + floor(-2.5) \
                   + abs(-0.1) + log10(1000) + 2^-3 + max(1, 2, 3)";

fn typical(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("typical");
    group.bench_function("1 + 1", |b| {
        b.iter(|| evaluate(black_box("1 + 1"), &limits).unwrap())
    });
    group.bench_function("0.1 + 0.2", |b| {
        b.iter(|| evaluate(black_box("0.1 + 0.2"), &limits).unwrap())
    });
    group.bench_function("mix ~200 chars", |b| {
        b.iter(|| evaluate(black_box(MIX), &limits).unwrap())
    });
    group.bench_function("parse only, mix", |b| {
        b.iter(|| dalc_calc::parse(black_box(MIX), &limits).unwrap())
    });
    group.finish();
}

fn worst(c: &mut Criterion) {
    let limits = Limits::default();
    let cases = [
        ("sin(9^k) x300", fill(|i| format!("sin(9^{})", 10479 - i))),
        ("tan(10^9999-k) x300", fill(|i| format!("tan(10^9999-{i})"))),
        (
            "sin(9e6144) x340",
            fill(|i| format!("sin({}e{})", 9 - i % 9, 6144 - i % 7)),
        ),
        ("ln(7^k) x370", fill(|i| format!("ln(7^{})", 9999 - i))),
        (
            "((10^34+k)^2)^0.5 x170",
            fill(|i| format!("((10^34+{})^2)^0.5", 5 + 10 * i)),
        ),
        (
            "cos(factorial(k)) x180",
            fill(|i| format!("cos(factorial({}))", 3248 - i)),
        ),
        (
            "(10^9999+k)/7^11000 x180",
            fill(|i| format!("(10^9999+{i})/(7^11000)")),
        ),
        (
            "factorial(3248-k) x250",
            fill(|i| format!("factorial({})", 3248 - i)),
        ),
        (
            "nesting 128 deep",
            format!("{}1{}", "sin(".repeat(128), ")".repeat(128)),
        ),
    ];
    let mut group = c.benchmark_group("worst");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for (name, source) in &cases {
        assert!(source.len() <= DEFAULT_MAX_EXPRESSION_BYTES);
        group.bench_function(*name, |b| {
            b.iter(|| evaluate(black_box(source), &limits).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, typical, worst);
criterion_main!(benches);
