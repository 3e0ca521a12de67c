//! Serves the HTTP API and dashboard over the in-memory fake `TaskService` of the tests, for
//! trying the dashboard and running the contract and browser scripts without a real gateway.
//! Example code, not shipped.
//!
//! ```sh
//! cargo run -p dalc-http --example fake_gateway -- 8080 [--api-key KEY] [--step-ms 300]
//! ```
#![allow(clippy::print_stdout)]

#[path = "../tests/support/fake.rs"]
mod fake;

use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut port: u16 = 8080;
    let mut options = fake::FakeOptions {
        // Slow enough that a person sees PENDING and RUNNING go by on the dashboard.
        step: Duration::from_millis(300),
        ..fake::FakeOptions::default()
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--api-key" => options.api_key = args.next(),
            "--step-ms" => {
                let ms: u64 = args.next().ok_or("--step-ms needs a value")?.parse()?;
                options.step = Duration::from_millis(ms);
            }
            other => port = other.parse()?,
        }
    }
    let service = Arc::new(fake::FakeService::new(options));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("fake gateway: http://{}/", listener.local_addr()?);
    axum::serve(listener, dalc_http::router(service)).await?;
    Ok(())
}
