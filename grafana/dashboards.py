"""nsvisor's Grafana dashboards, built with grafana-foundation-sdk.

    python -m grafana.dashboards          # rewrite grafana/dashboards/*.json
    python -m grafana.dashboards --check  # exit 1 if the committed JSON is stale

Two dashboards:
- "nsvisor / Container" (uid nsvisor-container): one container, picked with
  the `name` variable: CPU against its limit, throttling, memory against its
  limit, OOM kills, memory-limit hits and restarts as annotations, I/O,
  network, processes, pressure, state, restarts, health.
- "nsvisor / Host" (uid nsvisor-host): every container of the selected
  hosts: top CPU and memory users, containers near their memory limit,
  restarting containers, OOM kills, start latency.

Every query names only metrics that nsvisor exports (exporters/collector.py)
and uses the variables $datasource, $instance, $name and Grafana's
$__rate_interval; tests/e2e/test_prometheus.py runs each of them against a
real Prometheus scraping a real daemon.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.builders import stat, statetimeline, table, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.variants import Dataquery
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUT_DIR = Path(__file__).parent / "dashboards"
REGENERATE = "python -m grafana.dashboards"

DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
# Label matchers: per container, and for every container of the chosen hosts.
C = 'instance=~"$instance", name="$name"'
H = 'instance=~"$instance"'
RI = "$__rate_interval"


# --- small builders --------------------------------------------------------


def q(expr: str, legend: str = "", *, instant: bool = False, ref: str = "A") -> prom.Dataquery:
    """A Prometheus query; `instant` for stats and tables (the value now)."""
    query = prom.Dataquery().expr(expr).datasource(DS).legend_format(legend or "__auto").ref_id(ref)
    return query.instant() if instant else query.range()


def refs(queries: tuple[prom.Dataquery, ...]) -> list[Builder[Dataquery]]:
    """Grafana tells a panel's queries apart by refId: A, B, C, ..."""
    return [query.ref_id(chr(ord("A") + i)) for i, query in enumerate(queries)]


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in steps])
    )


GREEN_ONLY = thresholds((None, "green"))
MEMORY_SHARE = thresholds((None, "green"), (0.8, "orange"), (0.9, "red"))


def legend_table() -> cb.VizLegendOptions:
    return (
        cb.VizLegendOptions()
        .display_mode(cm.LegendDisplayMode.TABLE)
        .placement(cm.LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(["mean", "max", "lastNotNull"])
    )


def graph(
    title: str,
    unit: str,
    *queries: prom.Dataquery,
    description: str,
    w: int = 12,
    h: int = 8,
    bars: bool = False,
    stack: bool = False,
    min_val: float | None = 0,
    max_val: float | None = None,
    thresholds_cfg: db.ThresholdsConfig | None = None,
) -> timeseries.Panel:
    p = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .span(w)
        .height(h)
        .targets(refs(queries))
        .legend(legend_table())
        .tooltip(
            cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)
        )
        .fill_opacity(10)
        .line_width(1)
        .thresholds(thresholds_cfg or GREEN_ONLY)
    )
    if min_val is not None:
        p = p.min(min_val)
    if max_val is not None:
        p = p.max(max_val)
    if bars:
        p = p.draw_style(cm.GraphDrawStyle.BARS).fill_opacity(80)
    if stack:
        p = p.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
    if thresholds_cfg is not None:
        p = p.thresholds_style(
            cb.GraphThresholdsStyleConfig().mode(cm.GraphTresholdsStyleMode.DASHED)
        )
    return p


def single(
    title: str,
    unit: str,
    query: prom.Dataquery,
    *,
    description: str,
    w: int = 4,
    h: int = 4,
    thresholds_cfg: db.ThresholdsConfig | None = None,
    mappings: list[dm.ValueMapping] | None = None,
    text_mode: cm.BigValueTextMode = cm.BigValueTextMode.AUTO,
) -> stat.Panel:
    p = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .span(w)
        .height(h)
        .with_target(query)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .color_mode(cm.BigValueColorMode.VALUE)
        .text_mode(text_mode)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(thresholds_cfg or GREEN_ONLY)
    )
    if mappings:
        p = p.mappings(mappings)
    return p


def value_map(mapping: dict[str, tuple[str, str]]) -> dm.ValueMap:
    """{value: (text, color)}"""
    return dm.ValueMap(
        options={
            k: dm.ValueMappingResult(text=text, color=color, index=i)
            for i, (k, (text, color)) in enumerate(mapping.items())
        }
    )


def container_link(field: str) -> db.DashboardLink:
    """A data link from a table cell to the per-container dashboard."""
    return (
        db.DashboardLink("Open the container dashboard")
        .url(
            "/d/nsvisor-container/nsvisor-container?${__url_time_range}"
            "&var-datasource=${datasource}&var-instance=${__data.fields.instance}"
            f"&var-name=${{__data.fields.{field}}}"
        )
        .type(dm.DashboardLinkType.LINK)
    )


def ranked_table(title: str, expr: str, unit: str, *, description: str, value_title: str,
                 thresholds_cfg: db.ThresholdsConfig, w: int = 12, h: int = 8) -> table.Panel:  # fmt: skip
    """An instant query as a table of instance, name, value, worst first."""
    return (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .span(w)
        .height(h)
        .with_target(q(expr, instant=True).format(PromQueryFormat.TABLE))
        .unit(unit)
        .thresholds(thresholds_cfg)
        .data_links([container_link("name")])
        .with_transformation(
            dm.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True},
                    "indexByName": {"instance": 0, "name": 1, "Value": 2},
                    "renameByName": {"Value": value_title},
                },
            )
        )
        .sort_by([cb.TableSortByFieldState().display_name(value_title).desc(True)])
        .override_by_name(
            value_title,
            [
                dm.DynamicConfigValue(
                    id_val="custom.cellOptions",
                    value={"type": "color-background", "mode": "basic"},
                )
            ],
        )
    )


def datasource_var() -> db.DatasourceVariable:
    return db.DatasourceVariable("datasource").label("Data source").type("prometheus")


def instance_var() -> db.QueryVariable:
    return (
        db.QueryVariable("instance")
        .label("Host")
        .datasource(DS)
        .query("label_values(nsvisor_build_info, instance)")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


def annotation(name: str, color: str, expr: str) -> db.AnnotationQuery:
    return db.AnnotationQuery().name(name).datasource(DS).enable(True).icon_color(color).expr(expr)


# --- the per-container dashboard ------------------------------------------


def container_dashboard() -> db.Dashboard:
    name_var = (
        db.QueryVariable("name")
        .label("Container")
        .datasource(DS)
        .query('label_values(nsvisor_container_state{instance=~"$instance"}, name)')
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
    )
    d = (
        db.Dashboard("nsvisor / Container")
        .uid("nsvisor-container")
        .description(
            "One container supervised by nsvisor: usage against its limits, events, lifecycle."
        )
        .tags(["nsvisor", "containers"])
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .time("now-1h", "now")
        .refresh("30s")
        .with_variable(datasource_var())
        .with_variable(instance_var().multi(False).include_all(False))
        .with_variable(name_var)
        .annotation(
            annotation(
                "OOM kills",
                "red",
                f"increase(container_oom_events_total{{{C}}}[{RI}]) > 0",
            )
        )
        .annotation(
            annotation(
                "Memory limit hits",
                "orange",
                # v2: memory.events "max"; v1: memory.failcnt. (The v1
                # counters stay 0 on recent kernels: there the OOM kills
                # above are the only trace of the limit.)
                f'increase(nsvisor_memory_events_total{{{C}, event="max"}}[{RI}]) > 0'
                f" or increase(container_memory_failcnt{{{C}}}[{RI}]) > 0",
            )
        )
        .annotation(
            annotation(
                "Restarts",
                "blue",
                f"increase(nsvisor_container_restarts_total{{{C}}}[{RI}]) > 0",
            )
        )
        .link(
            db.DashboardLink("Host overview")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(["nsvisor"])
            .as_dropdown(False)
            .include_vars(True)
            .keep_time(True)
        )
    )

    d = (
        d.with_row(db.Row("Status"))
        .with_panel(
            single(
                "State",
                "none",
                q(f"nsvisor_container_state{{{C}}} == 1", "{{state}}", instant=True),
                description="The lifecycle state now: created, starting, running, stopping, exited, restarting or removing.",
                text_mode=cm.BigValueTextMode.NAME,
            )
        )
        .with_panel(
            single(
                "Health",
                "none",
                q(f"nsvisor_container_health_status{{{C}}}", instant=True),
                description="The health check's last verdict. Empty without a health check, and while the first check is pending.",
                mappings=[value_map({"0": ("unhealthy", "red"), "1": ("healthy", "green")})],
            )
        )
        .with_panel(
            single(
                "Up for",
                "s",
                q(f"time() - container_start_time_seconds{{{C}}}", instant=True),
                description="Time since the current run started.",
            )
        )
        .with_panel(
            single(
                "Restarts",
                "short",
                q(f"nsvisor_container_restarts_total{{{C}}}", instant=True),
                description="Restarts done by the restart policy since the container was created.",
                thresholds_cfg=thresholds((None, "green"), (1, "orange"), (5, "red")),
            )
        )
        .with_panel(
            single(
                "Last exit code",
                "none",
                q(f"nsvisor_container_last_exit_code{{{C}}}", instant=True),
                description="Exit code of the last run; 137 = SIGKILL (an OOM kill or a stop past its grace period), 143 = SIGTERM.",
                thresholds_cfg=thresholds((None, "green"), (1, "red")),
            )
        )
        .with_panel(
            single(
                "OOM kills (range)",
                "short",
                q(f"max(increase(container_oom_events_total{{{C}}}[$__range]))", instant=True),
                description="Processes of this container killed by the OOM killer in the dashboard's time range.",
                thresholds_cfg=thresholds((None, "green"), (1, "red")),
            )
        )
    )

    d = (
        d.with_row(db.Row("CPU"))
        .with_panel(
            graph(
                "CPU usage vs limit",
                "none",
                q(f'rate(container_cpu_usage_seconds_total{{{C}, cpu="total"}}[{RI}])', "usage"),
                q(f"rate(container_cpu_user_seconds_total{{{C}}}[{RI}])", "user"),
                q(f"rate(container_cpu_system_seconds_total{{{C}}}[{RI}])", "system"),
                q(
                    f"container_spec_cpu_quota{{{C}}} / container_spec_cpu_period{{{C}}}",
                    "limit (cpus)",
                ),
                description="CPU time used per second, in cores, against the limit set with `cpus` (CFS quota / period). No limit line: the container may use every core.",
            ).override_by_name(
                "limit (cpus)",
                [
                    dm.DynamicConfigValue(
                        id_val="color", value={"mode": "fixed", "fixedColor": "red"}
                    ),
                    dm.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
                    dm.DynamicConfigValue(
                        id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}
                    ),
                ],
            )
        )
        .with_panel(
            graph(
                "CPU throttling",
                "percentunit",
                q(
                    f"rate(container_cpu_cfs_throttled_periods_total{{{C}}}[{RI}])"
                    f" / rate(container_cpu_cfs_periods_total{{{C}}}[{RI}])",
                    "throttled periods",
                ),
                q(
                    f"rate(container_cpu_cfs_throttled_seconds_total{{{C}}}[{RI}])",
                    "throttled time (s/s)",
                ),
                description="Share of CFS periods in which the container wanted more CPU than its quota allowed, and the time it spent throttled per second. The ContainerCPUThrottled alert fires above 25% for 15 minutes.",
                thresholds_cfg=thresholds((None, "green"), (0.25, "red")),
            ).override_by_name(
                "throttled time (s/s)", [dm.DynamicConfigValue(id_val="unit", value="s")]
            )
        )
    )

    d = (
        d.with_row(db.Row("Memory"))
        .with_panel(
            graph(
                "Memory",
                "bytes",
                q(f"container_memory_working_set_bytes{{{C}}}", "working set"),
                q(f"container_memory_usage_bytes{{{C}}}", "usage"),
                q(f"container_memory_rss{{{C}}}", "rss"),
                q(f"container_memory_cache{{{C}}}", "page cache"),
                q(f"container_memory_swap{{{C}}}", "swap"),
                q(f"container_spec_memory_limit_bytes{{{C}}}", "limit"),
                description="Working set = usage minus inactive page cache: what the kernel cannot reclaim without swapping, and what the OOM killer compares with the limit. Usage also counts cache the kernel drops first.",
            ).override_by_name(
                "limit",
                [
                    dm.DynamicConfigValue(
                        id_val="color", value={"mode": "fixed", "fixedColor": "red"}
                    ),
                    dm.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
                    dm.DynamicConfigValue(
                        id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}
                    ),
                ],
            )
        )
        .with_panel(
            graph(
                "Memory used of limit",
                "percentunit",
                q(
                    f"container_memory_working_set_bytes{{{C}}}"
                    f" / (container_spec_memory_limit_bytes{{{C}}} > 0)",
                    "working set / limit",
                ),
                description="The working set as a share of the memory limit. The ContainerMemoryNearLimit alert fires above 90% for 5 minutes. Empty without a limit.",
                thresholds_cfg=MEMORY_SHARE,
                max_val=1,
            )
        )
        .with_panel(
            graph(
                "Memory events",
                "short",
                q(
                    f"increase(nsvisor_memory_events_total{{{C}}}[{RI}])",
                    "{{event}}",
                ),
                q(f"increase(container_oom_events_total{{{C}}}[{RI}])", "OOM kills"),
                description="memory.events counters (v2: low, high, max, oom, oom_kill, oom_group_kill; v1: max = failcnt, oom_kill). max = a charge hit the limit; oom_kill = the OOM killer killed a process.",
                bars=True,
            )
        )
        .with_panel(
            graph(
                "Page faults",
                "short",
                q(
                    f"rate(container_memory_failures_total{{{C}}}[{RI}])",
                    "{{failure_type}} ({{scope}})",
                ),
                description="Page faults per second; major faults (pgmajfault) read from disk and slow the container down when its working set does not fit in its limit.",
            )
        )
    )

    d = (
        d.with_row(db.Row("I/O and network"))
        .with_panel(
            graph(
                "Disk throughput",
                "Bps",
                q(f"rate(container_fs_reads_bytes_total{{{C}}}[{RI}])", "read {{device}}"),
                q(f"rate(container_fs_writes_bytes_total{{{C}}}[{RI}])", "write {{device}}"),
                description="Bytes read and written per second on each block device (major:minor). Page-cache hits and tmpfs do not count.",
                w=6,
            )
        )
        .with_panel(
            graph(
                "Disk operations",
                "iops",
                q(f"rate(container_fs_reads_total{{{C}}}[{RI}])", "reads {{device}}"),
                q(f"rate(container_fs_writes_total{{{C}}}[{RI}])", "writes {{device}}"),
                description="Read and write operations per second on each block device.",
                w=6,
            )
        )
        .with_panel(
            graph(
                "Network traffic",
                "Bps",
                q(
                    f"rate(container_network_receive_bytes_total{{{C}}}[{RI}])",
                    "rx {{interface}}",
                ),
                q(
                    f"rate(container_network_transmit_bytes_total{{{C}}}[{RI}])",
                    "tx {{interface}}",
                ),
                description="Bytes per second on each interface of the container's network namespace, lo included. A container on the host network has no series.",
                w=6,
            )
        )
        .with_panel(
            graph(
                "Network errors and drops",
                "pps",
                q(
                    f"rate(container_network_receive_errors_total{{{C}}}[{RI}])"
                    f" + rate(container_network_transmit_errors_total{{{C}}}[{RI}])",
                    "errors {{interface}}",
                ),
                q(
                    f"rate(container_network_receive_packets_dropped_total{{{C}}}[{RI}])"
                    f" + rate(container_network_transmit_packets_dropped_total{{{C}}}[{RI}])",
                    "dropped {{interface}}",
                ),
                q(
                    f"rate(container_network_receive_packets_total{{{C}}}[{RI}])"
                    f" + rate(container_network_transmit_packets_total{{{C}}}[{RI}])",
                    "packets {{interface}}",
                ),
                description="Packets per second, and the errors and drops among them, on each interface.",
                w=6,
            )
        )
    )

    d = (
        d.with_row(db.Row("Processes and pressure"))
        .with_panel(
            graph(
                "Processes",
                "short",
                q(f"container_processes{{{C}}}", "processes"),
                q(f"container_threads{{{C}}}", "threads"),
                q(f"container_threads_max{{{C}}}", "limit (pids_limit)"),
                description="Processes and threads in the container's cgroup against pids_limit (pids.max). At the limit fork() fails with EAGAIN.",
            )
        )
        .with_panel(
            graph(
                "Pressure (PSI)",
                "percentunit",
                *[
                    q(
                        f"rate(container_pressure_{res}_{kind}_seconds_total{{{C}}}[{RI}])",
                        f"{res} {kind}",
                    )
                    for res in ("cpu", "memory", "io")
                    for kind in ("waiting", "stalled")
                ],
                description="Share of wall time in which some (waiting) or all (stalled) of the container's tasks were delayed for lack of CPU, memory or I/O (pressure stall information). Rising memory pressure comes before OOM kills.",
                max_val=1,
            )
        )
    )

    d = (
        d.with_row(db.Row("Lifecycle"))
        .with_panel(
            statetimeline.Panel()
            .title("State over time")
            .description("The lifecycle state over time, one row per state.")
            .datasource(DS)
            .span(12)
            .height(7)
            .with_target(q(f"nsvisor_container_state{{{C}}}", "{{state}}"))
            .show_value(cm.VisibilityMode.NEVER)
            .merge_values(True)
            .fill_opacity(80)
            .thresholds(GREEN_ONLY)
            .mappings([value_map({"0": ("", "transparent"), "1": ("current", "green")})])
            .legend(cb.VizLegendOptions().show_legend(False))
        )
        .with_panel(
            graph(
                "Restarts and backoff",
                "short",
                q(f"increase(nsvisor_container_restarts_total{{{C}}}[{RI}])", "restarts"),
                q(f"nsvisor_container_backoff_seconds{{{C}}}", "backoff (s)"),
                description="Restarts by the restart policy, and the delay before the next one (100 ms doubling to 60 s by default; reset after a 10 s run).",
            ).override_by_name(
                "backoff (s)",
                [
                    dm.DynamicConfigValue(id_val="unit", value="s"),
                    dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
                ],
            )
        )
    )
    return d


# --- the host overview ------------------------------------------------------


def host_dashboard() -> db.Dashboard:
    d = (
        db.Dashboard("nsvisor / Host")
        .uid("nsvisor-host")
        .description("Every container supervised by nsvisor on the selected hosts.")
        .tags(["nsvisor", "containers"])
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .time("now-1h", "now")
        .refresh("30s")
        .with_variable(datasource_var())
        .with_variable(instance_var())
        .annotation(
            annotation(
                "OOM kills",
                "red",
                f"sum by (instance, name) (increase(container_oom_events_total{{{H}}}[{RI}])) > 0",
            )
        )
        .link(
            db.DashboardLink("Containers")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(["nsvisor"])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )

    def count_state(state: str) -> str:
        return f'sum(nsvisor_container_state{{{H}, state="{state}"}})'

    d = (
        d.with_row(db.Row("Summary"))
        .with_panel(
            single(
                "Running",
                "short",
                q(count_state("running"), instant=True),
                description="Containers in the running state.",
                w=3,
            )
        )
        .with_panel(
            single(
                "Restarting",
                "short",
                q(count_state("restarting"), instant=True),
                description="Containers waiting out a restart backoff.",
                thresholds_cfg=thresholds((None, "green"), (1, "orange")),
                w=3,
            )
        )
        .with_panel(
            single(
                "Exited",
                "short",
                q(count_state("exited"), instant=True),
                description="Containers that exited and are not restarted by their policy.",
                w=3,
            )
        )
        .with_panel(
            single(
                "Unhealthy",
                "short",
                q(f"count(nsvisor_container_health_status{{{H}}} == 0) or vector(0)", instant=True),
                description="Containers whose health check failed (health_retries times in a row).",
                thresholds_cfg=thresholds((None, "green"), (1, "red")),
                w=3,
            )
        )
        .with_panel(
            single(
                "OOM kills (range)",
                "short",
                q(
                    f"sum(increase(container_oom_events_total{{{H}}}[$__range])) or vector(0)",
                    instant=True,
                ),
                description="Processes killed by the OOM killer in all containers in the dashboard's time range.",
                thresholds_cfg=thresholds((None, "green"), (1, "red")),
                w=3,
            )
        )
        .with_panel(
            single(
                "Scrape errors (range)",
                "short",
                q(
                    f"sum(increase(nsvisor_scrape_errors_total{{{H}}}[$__range])) or vector(0)",
                    instant=True,
                ),
                description="cgroup files the exporter could not read (nsvisor_scrape_errors_total{file}); the rest of each scrape is still exported.",
                thresholds_cfg=thresholds((None, "green"), (1, "orange")),
                w=3,
            )
        )
        .with_panel(
            single(
                "Exporter",
                "none",
                q(
                    f"nsvisor_build_info{{{H}}}",
                    "{{instance}}: {{version}}, cgroup {{cgroup_layout}}",
                    instant=True,
                ),
                description="nsvisor version and cgroup layout of each host.",
                text_mode=cm.BigValueTextMode.NAME,
                w=6,
            )
        )
    )

    d = (
        d.with_row(db.Row("Top containers"))
        .with_panel(
            graph(
                "Top 10 containers by CPU",
                "none",
                q(
                    "topk(10, sum by (instance, name) ("
                    f'rate(container_cpu_usage_seconds_total{{{H}, cpu="total"}}[{RI}])))',
                    "{{name}} ({{instance}})",
                ),
                description="CPU time used per second, in cores.",
            )
        )
        .with_panel(
            graph(
                "Top 10 containers by memory",
                "bytes",
                q(
                    "topk(10, sum by (instance, name) ("
                    f"container_memory_working_set_bytes{{{H}}}))",
                    "{{name}} ({{instance}})",
                ),
                description="Memory working set (usage minus inactive page cache).",
            )
        )
    )

    d = (
        d.with_row(db.Row("Limits and restarts"))
        .with_panel(
            ranked_table(
                "Containers near their memory limit",
                "sort_desc(max by (instance, name) ("
                f"container_memory_working_set_bytes{{{H}}}"
                f" / (container_spec_memory_limit_bytes{{{H}}} > 0)))",
                "percentunit",
                description="Working set / memory limit now, for every container with a limit, closest first. Above 90% for 5 minutes fires ContainerMemoryNearLimit.",
                value_title="of limit",
                thresholds_cfg=MEMORY_SHARE,
            )
        )
        .with_panel(
            ranked_table(
                "Restarting containers",
                "sort_desc(max by (instance, name) ("
                f"increase(nsvisor_container_restarts_total{{{H}}}[$__range]) > 0))",
                "short",
                description="Containers restarted by their policy in the dashboard's time range, most restarts first. More than 3 in 15 minutes fires ContainerRestartLoop.",
                value_title="restarts",
                thresholds_cfg=thresholds((None, "green"), (1, "orange"), (5, "red")),
            )
        )
        .with_panel(
            graph(
                "OOM kills by container",
                "short",
                q(
                    f"sum by (instance, name) (increase(container_oom_events_total{{{H}}}[{RI}])) > 0",
                    "{{name}} ({{instance}})",
                ),
                description="Processes killed by the OOM killer, per container.",
                bars=True,
            )
        )
        .with_panel(
            graph(
                "Container start latency",
                "s",
                *[
                    q(
                        f"histogram_quantile({p}, sum by (instance, le) ("
                        f"rate(nsvisor_container_start_duration_seconds_bucket{{{H}}}[{RI}])))",
                        f"p{int(p * 100)} {{{{instance}}}}",
                    )
                    for p in (0.5, 0.99)
                ],
                description="Time from a start request to the workload's exec (cgroup set-up and launch), over starts in each interval; gaps mean no container started.",
            )
        )
    )
    return d


# --- output ------------------------------------------------------------------


def render(builder: db.Dashboard) -> str:
    """The dashboard as Grafana's JSON model, stable across runs."""
    raw: dict[str, Any] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    # The SDK's AnnotationQuery has no Prometheus-specific fields; without a
    # title Grafana shows each annotation as the bare expression.
    for ann in raw.get("annotations", {}).get("list", []):
        ann.setdefault("titleFormat", ann["name"])
        ann.setdefault("textFormat", "{{name}}")
        ann.setdefault("tagKeys", "name")
    return json.dumps(raw, indent=2, sort_keys=True) + "\n"


def dashboards() -> dict[str, str]:
    """{file name: JSON text} for every dashboard."""
    return {
        "nsvisor-container.json": render(container_dashboard()),
        "nsvisor-host.json": render(host_dashboard()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grafana.dashboards", description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory")
    parser.add_argument(
        "--check", action="store_true", help="compare with the files instead of writing them"
    )
    args = parser.parse_args(argv)
    stale = []
    for file, text in dashboards().items():
        path = args.out / file
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"stale: {', '.join(stale)}; regenerate with `{REGENERATE}`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
