# The two commands the README promises; both install what they need into .venv first.
#   make up     run the whole suite (engine, router, edge) on loopback with the embedded default
#   make test   contract checks and the whole test suite, the storage tests on SQLite and on a
#               throwaway PostgreSQL server (scripts/postgres installs Debian's package if missing)
# Extra arguments for `switchyard up`: make up ARGS="--engine sim --http-port 8080"
# Benchmarks: make bench (all of them) or make bench ARGS="gateway routing"

.PHONY: up test bench protos

# `up` installs vLLM's CPU build, or the CUDA one where a GPU is visible (scripts/bootstrap auto).
up:
	scripts/bootstrap auto
	.venv/bin/switchyard up $(ARGS)

test:
	scripts/bootstrap cpu,test,dev
	scripts/check-protos
	.venv/bin/ruff check services tests bench
	scripts/postgres run -- scripts/run-tests $(ARGS)

bench:
	scripts/bootstrap cpu,test,dev
	.venv/bin/python -m bench $(ARGS)

protos:
	scripts/bootstrap cpu,test,dev
	scripts/gen-protos
