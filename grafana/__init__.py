"""Grafana dashboards for nsvisor, as code.

`python -m grafana.dashboards` regenerates grafana/dashboards/*.json from
grafana/dashboards.py (grafana-foundation-sdk builders); the committed JSON is
what Grafana provisions. tests/unit/test_dashboards.py fails when the two
differ.
"""
