# Thin aliases for the scripts in deploy/local and .ci; the scripts are the
# real interface (see README.md).
.PHONY: up down test infra ci fmt lint

up:
	deploy/local/up
down:
	deploy/local/down
test:
	deploy/local/test
infra:
	deploy/local/infra
ci:
	.ci/run
fmt:
	cargo fmt --all
lint:
	cargo clippy --workspace --all-targets --locked -- -D warnings
