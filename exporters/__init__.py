"""The Prometheus exporter: per-container cgroup statistics with
cAdvisor-compatible names, plus what only a supervisor knows."""
