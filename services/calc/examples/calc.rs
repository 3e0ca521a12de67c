//! Evaluates each command-line argument and prints the result or the error,
//! with the time taken: `cargo run --release -p dalc-calc --example calc -- '2^-1'`.

use std::time::Instant;

fn main() {
    let limits = dalc_calc::Limits::default();
    for source in std::env::args().skip(1) {
        let start = Instant::now();
        let result = dalc_calc::evaluate(&source, &limits);
        let elapsed = start.elapsed();
        match result {
            Ok(value) => println!("{value}\t[{elapsed:?}]"),
            Err(err) => println!("error {}: {err}\t[{elapsed:?}]", err.kind()),
        }
    }
}
