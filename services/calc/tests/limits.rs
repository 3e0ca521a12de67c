//! Resource limits: deep nesting never overflows the stack, big results are
//! refused before they are computed, and evaluation is thread-safe.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use dalc_calc::{ErrorKind, Limits, MAX_SUPPORTED_DEPTH, evaluate, parse};

/// Runs `f` on a thread with a 2 MiB stack (tokio's and std's default), so a
/// stack overflow would show here rather than hide behind a big main stack.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn hundred_thousand_deep_inputs_are_errors_not_overflows() {
    on_small_stack(|| {
        // Big limits so only nesting can stop them.
        let limits = Limits {
            max_expression_bytes: 1 << 20,
            ..Limits::default()
        };
        let n = 100_000;
        for source in [
            format!("{}1{}", "(".repeat(n), ")".repeat(n)),
            format!("{}1", "-".repeat(n)),
            format!("{}1", "+-".repeat(n)),
            format!("2{}", "^2".repeat(n)),
            format!("2{}", "^-2".repeat(n)),
            format!("{}1{}", "sqrt(".repeat(n), ")".repeat(n)),
            format!("{}1", "(".repeat(n)),
        ] {
            let e = parse(&source, &limits).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::NestingTooDeep, "{}...", &source[..20]);
        }
        // A depth setting above the supported maximum is capped, not trusted.
        let huge = Limits {
            max_depth: usize::MAX,
            max_expression_bytes: 1 << 20,
            ..Limits::default()
        };
        let source = format!("{}1{}", "(".repeat(n), ")".repeat(n));
        assert_eq!(
            parse(&source, &huge).unwrap_err().kind(),
            ErrorKind::NestingTooDeep
        );
    });
}

#[test]
fn deepest_accepted_trees_evaluate_print_and_drop_on_a_small_stack() {
    on_small_stack(|| {
        let limits = Limits {
            max_depth: MAX_SUPPORTED_DEPTH,
            max_expression_bytes: 1 << 16,
            ..Limits::default()
        };
        let d = MAX_SUPPORTED_DEPTH;
        let half = d / 2;
        for source in [
            format!("{}1{}", "(".repeat(d), ")".repeat(d)),
            format!("{}1", "-".repeat(d)),
            format!("1{}", "^1".repeat(d)),
            format!("{}1{}", "sin(".repeat(d), ")".repeat(d)),
            format!("{}2{}", "max(1,".repeat(d), ")".repeat(d)),
            format!("{}1{}", "(1+2*(".repeat(half), "))".repeat(half)),
            format!("{}0.5{}", "-(1-".repeat(half), ")".repeat(half)),
        ] {
            let expr =
                parse(&source, &limits).unwrap_or_else(|e| panic!("{}...: {e}", &source[..20]));
            let value = expr.evaluate(&limits).unwrap();
            let printed = expr.to_string();
            let again = parse(&printed, &limits).unwrap();
            assert_eq!(expr, again);
            assert_eq!(again.evaluate(&limits).unwrap(), value);
            let copy = expr.clone();
            drop(expr);
            drop(copy);
        }
    });
}

#[test]
fn long_flat_chains_are_shallow() {
    on_small_stack(|| {
        let limits = Limits::default();
        let sum = format!("1{}", "+1".repeat(2047));
        assert_eq!(evaluate(&sum, &limits).unwrap().to_string(), "2048");
        let product = format!("1{}", "*2".repeat(1000));
        assert_eq!(
            evaluate(&product, &limits).unwrap().to_string(),
            num(2, 1000)
        );
        let args = format!("max(1{})", ",2".repeat(2000));
        assert_eq!(evaluate(&args, &limits).unwrap().to_string(), "2");
    });
}

fn num(base: u32, exp: u32) -> String {
    dalc_calc::BigInt::from(base).pow(exp).to_string()
}

#[test]
fn oversized_results_are_refused_quickly() {
    let limits = Limits::default();
    for source in [
        "9^9^9^9",
        "factorial(10^9)",
        "factorial(3249)",
        "2^(10^12)",
        "2^33220",
        "10^10000 * 1.0",
        "(10^5000)^2",
        "10^5000 * 10^5000",
        "factorial(3000) * factorial(3000)",
        "exp(10^100)",
        "1.0000001^(10^100)",
        "floor(1e6144) * floor(1e6144)",
        "9e6144 + 1e6144",
        "(-10)^(10^50)",
    ] {
        let start = Instant::now();
        let e = evaluate(source, &limits).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ResultTooLarge, "{source}: {e}");
        // Generous for debug builds on a loaded CI machine: the point is that
        // none of these computes a giant number first.
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{source} took {:?}",
            start.elapsed()
        );
    }
    // The largest accepted ones still work.
    assert_eq!(
        evaluate("factorial(3248)", &limits)
            .unwrap()
            .to_string()
            .len(),
        9998
    );
    assert_eq!(
        evaluate("2^33219", &limits).unwrap().to_string().len(),
        10000
    );
    assert_eq!(
        evaluate("10^9999", &limits).unwrap().to_string().len(),
        10000
    );
}

#[test]
fn underflow_rounds_toward_zero() {
    let limits = Limits::default();
    assert_eq!(evaluate("1e-7000", &limits).unwrap().to_string(), "0");
    assert_eq!(evaluate("exp(-20000)", &limits).unwrap().to_string(), "0");
    assert_eq!(evaluate("2^-100000", &limits).unwrap().to_string(), "0");
    assert_eq!(evaluate("0.5^(10^50)", &limits).unwrap().to_string(), "0");
    assert_eq!(evaluate("1/(10^9999)", &limits).unwrap().to_string(), "0");
    assert_eq!(evaluate("-1e-6177", &limits).unwrap().to_string(), "0");
}

#[test]
fn evaluation_is_thread_safe() {
    let handles: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let limits = Limits::default();
                for k in 0..20 {
                    let source = format!("sin({i}e6144 + {k}) + sqrt({k}) + factorial({k})");
                    let a = evaluate(&source, &limits);
                    let b = evaluate(&source, &limits);
                    assert_eq!(a, b);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}
