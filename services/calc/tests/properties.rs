//! Property tests: printing re-parses to an equal tree, and no input panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dalc_calc::{Limits, evaluate, parse};
use proptest::prelude::*;

fn literal() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..1_000_000).prop_map(|n| n.to_string()),
        "[0-9]{1,40}",
        "[0-9]{0,5}\\.[0-9]{1,8}",
        "[0-9]{1,3}(\\.[0-9]{0,4})?[eE][+-]?[0-9]{1,4}",
        Just("pi".to_string()),
        Just("e".to_string()),
    ]
}

/// Random well-formed expressions, with random spacing and parentheses.
fn expression() -> impl Strategy<Value = String> {
    literal().prop_recursive(6, 64, 4, |inner| {
        let op = prop_oneof![
            Just("+"),
            Just("-"),
            Just("*"),
            Just("/"),
            Just("%"),
            Just("^")
        ];
        let func = prop_oneof![
            Just("sqrt"),
            Just("abs"),
            Just("floor"),
            Just("ceil"),
            Just("round"),
            Just("ln"),
            Just("log10"),
            Just("exp"),
            Just("sin"),
            Just("cos"),
            Just("tan"),
            Just("factorial")
        ];
        let space = prop_oneof![Just(""), Just(" ")];
        prop_oneof![
            (inner.clone(), op, inner.clone(), space)
                .prop_map(|(a, op, b, s)| format!("{a}{s}{op}{s}{b}")),
            inner.clone().prop_map(|a| format!("({a})")),
            inner.clone().prop_map(|a| format!("-{a}")),
            inner.clone().prop_map(|a| format!("+{a}")),
            (func, inner.clone()).prop_map(|(f, a)| format!("{f}({a})")),
            (
                prop_oneof![Just("min"), Just("max")],
                prop::collection::vec(inner, 1..4)
            )
                .prop_map(|(f, args)| format!("{f}({})", args.join(", "))),
        ]
    })
}

fn token_soup() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        literal(),
        prop::sample::select(vec![
            "+",
            "-",
            "*",
            "/",
            "%",
            "^",
            "(",
            ")",
            ",",
            " ",
            "sqrt",
            "min(",
            "max(",
            "factorial(",
            "sin(",
            "ln(",
            "foo",
            "e",
            "pi",
            ".",
            "1e",
            "E",
            "9^9^9",
            "10^9999",
            "\u{e9}",
            "\u{1F600}",
            "\t",
            "\0",
        ])
        .prop_map(str::to_string),
    ];
    prop::collection::vec(token, 0..40).prop_map(|tokens| tokens.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn print_then_parse_is_stable(source in expression()) {
        let limits = Limits::default();
        if let Ok(expr) = parse(&source, &limits) {
            let printed = expr.to_string();
            let again = parse(&printed, &limits);
            prop_assert!(again.is_ok(), "{source:?} printed as {printed:?}: {again:?}");
            let again = again.unwrap();
            prop_assert_eq!(&expr, &again, "{:?} printed as {:?}", source, printed);
            prop_assert_eq!(printed.clone(), again.to_string());
            prop_assert!(printed.len() <= source.len());
        }
    }

    #[test]
    fn token_soup_never_panics(source in token_soup()) {
        let limits = Limits::default();
        if let Ok(expr) = parse(&source, &limits) {
            let _ = expr.evaluate(&limits);
            let again = parse(&expr.to_string(), &limits).unwrap();
            prop_assert_eq!(expr, again);
        }
    }

    #[test]
    fn arbitrary_strings_never_panic(source in any::<String>()) {
        let _ = evaluate(&source, &Limits::default());
    }

    #[test]
    fn arbitrary_ascii_never_panics(source in "[ -~]{0,60}") {
        let _ = evaluate(&source, &Limits::default());
    }

    #[test]
    fn errors_have_sane_columns(source in token_soup()) {
        if let Err(e) = parse(&source, &Limits::default()) {
            if let Some(column) = e.column() {
                prop_assert!(column >= 1 && column <= source.chars().count() + 1);
            }
            prop_assert!(!e.kind().is_evaluation_error());
        }
    }
}
