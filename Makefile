# Shortcuts; README.md explains each.
.PHONY: run test lint fmt bench ci

run:            ## the embedded default: gateway + workers, SQLite, in-process queue
	cargo run --release --bin dalc -- up

test:           ## the whole suite against real RabbitMQ and PostgreSQL (started/installed if needed)
	scripts/test.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	buf lint

fmt:
	cargo fmt --all

bench:          ## expression-engine benchmarks (criterion)
	cargo bench -p dalc-calc

ci:
	bash .ci/run
