"""The benchmark: `./bench/run.sh [--quick]` (see bench/run.py)."""
