"""Runs the benchmarks one after another: `python -m bench [NAME ...]` (default: all).

Each is also runnable alone with its own options: `python -m bench.<name> --help`."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = {
    "gateway": "what the gateway adds over calling a zero-delay sim engine directly",
    "routing": "prefix-aware vs round-robin vs least-loaded on 4 sim engines; cost by preference",
    "accounting": "the gateway's request rate with accounting on vs off",
    "vllm_server": "Switchyard on vLLM against vLLM's own OpenAI server",
}


def main(names: list[str]) -> int:
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from:", file=sys.stderr)
        for name, what in BENCHMARKS.items():
            print(f"  {name:12} {what}", file=sys.stderr)
        return 2
    failed = 0
    for name in names or list(BENCHMARKS):
        print(f"== bench.{name}: {BENCHMARKS[name]}", flush=True)
        failed |= subprocess.call([sys.executable, "-m", f"bench.{name}"])
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
