"""Benchmarks (not tests): nsvisor next to runc, crun, unshare and fork+exec.
Run `python -m bench` (as root); `--quick` is the CI smoke run. See run.py."""
