//! Fuzzes parse + evaluate: no input may panic, and every parsed expression
//! must print to text that re-parses to an equal tree.
#![no_main]

use dalc_calc::{Limits, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let limits = Limits::default();
    let Ok(expr) = parse(source, &limits) else {
        return;
    };
    let printed = expr.to_string();
    let again = parse(&printed, &limits).expect("printed expression re-parses");
    assert_eq!(expr, again, "{source:?} printed as {printed:?}");
    match expr.evaluate(&limits) {
        Ok(value) => {
            let _ = value.to_string();
        }
        Err(e) => {
            assert!(e.kind().is_evaluation_error(), "{source:?}: parse accepted but evaluation said {e}");
        }
    }
});
