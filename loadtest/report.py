"""What a benchmark prints and writes: a table, a JSON file and a PNG plot beside it.

Latencies live in HDR histograms (microseconds) until here; the report quotes them in
milliseconds. Every figure is printed as measured, never judged: on a shared machine a
number means something only beside another measured in the same run, hence the ratios
to the reference server.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from hdrh.histogram import HdrHistogram

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}
# Figures a client-bound run marks in the table: what the editors' own delay can change.
CLIENT_BOUND_MARK = " *"
MARKED = ("deliveries_per_s", "egress_mb_per_s", "sustained_deliveries_per_s")
CURVE = [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 99.999]


def latency_ms(histogram: HdrHistogram) -> dict[str, float]:
    """Percentiles and max in milliseconds (all 0 when nothing was recorded)."""
    if histogram.get_total_count() == 0:
        return {**dict.fromkeys(PERCENTILES, 0.0), "max": 0.0}
    figures = {
        name: histogram.get_value_at_percentile(percentile) / 1000
        for name, percentile in PERCENTILES.items()
    }
    figures["max"] = histogram.get_max_value() / 1000
    return {name: round(value, 3) for name, value in figures.items()}


def curve_ms(histogram: HdrHistogram) -> list[tuple[float, float]]:
    if histogram.get_total_count() == 0:
        return []
    return [(p, histogram.get_value_at_percentile(p) / 1000) for p in CURVE]


@dataclass
class Run:
    """One measured run: the gateway's, the reference's, or one step of a ramp."""

    name: str
    figures: dict[str, Any]
    latency: HdrHistogram | None = None
    throughput: list[int] = field(default_factory=list)  # deliveries in each second

    @property
    def client_bound(self) -> bool:
        """Whether its figures are partly the editors' processes' (loadtest.streams)."""
        return bool(self.figures.get("client_bound") or self.figures.get("sustained_client_bound"))

    def as_json(self) -> dict[str, Any]:
        out = dict(self.figures)
        if self.latency is not None:
            out["latency_ms"] = latency_ms(self.latency)
            out["latency_curve_ms"] = curve_ms(self.latency)
        if self.throughput:
            out["throughput_per_second"] = self.throughput
        return out


@dataclass
class Report:
    scenario: str
    config: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "config": self.config,
            "machine": {"cpus": _cpu_count(), "python": platform.python_version()},
            "runs": [run.as_json() for run in self.runs],
            "client_bound_runs": [run.name for run in self.runs if run.client_bound],
            **self.ratios,
            "notes": self.notes,
        }

    def write(self, out: Path, *, plot: bool = True) -> Path | None:
        """The JSON at `out`, the plot beside it (same name, .png) unless not asked for;
        the plot's path."""
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(orjson.dumps(self.as_json(), option=orjson.OPT_INDENT_2))
        return draw(self, out.with_suffix(".png")) if plot else None


def _cpu_count() -> int | None:
    return os.cpu_count()


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return "-" if value is None else str(value)


def table(report: Report) -> str:
    """Rows are figures, columns are runs: side by side is how they are compared. A
    client-bound run's latencies and rates are marked, and why is said below."""
    rows: dict[str, list[str]] = {}
    for index, run in enumerate(report.runs):
        for key, cell in run_rows(run).items():
            rows.setdefault(key, [""] * len(report.runs))[index] = cell
    head = ["", *(run.name for run in report.runs)]
    width = [max(len(r) for r in [head[0], *rows]) + 2]
    width += [
        max([len(head[i + 1]), *(len(cells[i]) for cells in rows.values())]) + 2
        for i in range(len(report.runs))
    ]
    lines = [f"== {report.scenario} " + " ".join(f"{k}={v}" for k, v in report.config.items())]
    lines.append(
        "".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(head, width, strict=True))
        )
    )
    for key, cells in rows.items():
        lines.append(
            key.ljust(width[0]) + "".join(c.rjust(w) for c, w in zip(cells, width[1:], strict=True))
        )
    threshold = report.config.get("client_bound_percent")
    lines += [client_bound_line(run, threshold) for run in report.runs if run.client_bound]
    for run in report.runs:
        lines += [ramp_line(run.name, step) for step in run.figures.get("ramp", [])]
    bound = any(run.client_bound for run in report.runs)
    for name, value in report.ratios.items():
        lines.append(f"{name}: {value:.3f}" + (" (client-bound)" if bound else ""))
    lines.extend(report.notes)
    return "\n".join(lines)


def run_rows(run: Run) -> dict[str, str]:
    """One run's cells by row: its figures (ramp steps and series apart) and latency."""
    figures = dict(run.figures)
    if run.latency is not None:
        for name, value in latency_ms(run.latency).items():
            figures[f"latency {name} (ms)"] = value
    mark = CLIENT_BOUND_MARK if run.client_bound else ""
    return {
        key: _cell(value) + (mark if key in MARKED or key.startswith("latency ") else "")
        for key, value in figures.items()
        if not isinstance(value, list)  # ramp steps, per-second series: below, in the JSON
    }


def client_bound_line(run: Run, threshold: float | None) -> str:
    figures = run.figures
    share = figures.get("client_bound_share")
    return (
        f"{CLIENT_BOUND_MARK.strip()} client-bound ({run.name}): "
        + (f"{share:.1%} of the deliveries arrived " if share is not None else "")
        + f"while an editors' process was above {threshold or 0:g}% of a core (busiest: "
        f"{figures.get('editors_process_cpu_percent', 0):.0f}% over the seconds it "
        "delivered): these latencies and rates are partly the client's; use fewer editors "
        "or more --client-procs"
    )


def ramp_line(name: str, step: dict[str, Any]) -> str:
    figures = step["latency_ms"]
    return (
        f"ramp {name}: {step['rate']:>8,.1f} commits/s  "
        f"{step['deliveries_per_s']:>10,.0f} deliveries/s  "
        f"{step.get('egress_mb_per_s', 0.0):>8,.1f} MB/s  arrived {step['arrived']:.3f}  "
        f"p50 {figures['p50']:.1f} ms  p99 {figures['p99']:.1f} ms"
        + cpu_line(step.get("cpu_percent", {}))
        + (
            f"  CLIENT-BOUND (editors' process {step['editors_process_cpu_percent']:.0f}%)"
            if step.get("client_bound")
            else ""
        )
    )


def cpu_line(cpu: dict[str, float]) -> str:
    if not cpu:
        return ""
    return "  cpu % " + " ".join(f"{name} {value:.0f}" for name, value in cpu.items())


def draw(report: Report, path: Path) -> Path | None:
    """Latency percentile curve and deliveries per second over time, one line per run."""
    runs = [run for run in report.runs if run.latency is not None or run.throughput]
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (curve_axes, rate_axes) = pyplot.subplots(1, 2, figsize=(13, 4.8))
    for run in runs:
        label = f"{run.name} (client-bound)" if run.client_bound else run.name
        style = "--" if run.client_bound else "-"
        points = curve_ms(run.latency) if run.latency is not None else []
        if points:
            curve_axes.plot(
                [1 / (1 - p / 100) if p < 100 else 1e6 for p, _ in points],
                [value for _, value in points],
                style,
                marker="o",
                label=label,
            )
        if run.throughput:
            (line,) = rate_axes.plot(range(len(run.throughput)), run.throughput, style, label=label)
            shade_client_bound(
                rate_axes, run, report.config.get("client_bound_percent"), line.get_color()
            )
    curve_axes.set_xscale("log")
    curve_axes.set_xticks([1, 2, 10, 100, 1000, 10000, 100000])
    curve_axes.set_xticklabels(["0", "50", "90", "99", "99.9", "99.99", "99.999"])
    curve_axes.set_xlabel("percentile")
    curve_axes.set_ylabel("commit → receive latency (ms)")
    curve_axes.set_title("latency by percentile")
    curve_axes.grid(True, which="both", alpha=0.3)
    curve_axes.legend()
    rate_axes.set_xlabel("seconds")
    rate_axes.set_ylabel("deliveries per second")
    rate_axes.set_title("throughput over time")
    rate_axes.grid(True, alpha=0.3)
    rate_axes.legend()
    figure.suptitle(
        f"{report.scenario}: " + ", ".join(f"{k}={v}" for k, v in report.config.items()), fontsize=9
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return path


def shade_client_bound(axes: Any, run: Run, threshold: float | None, color: str) -> None:
    """The seconds an editors' process was above the threshold while deliveries arrived."""
    seconds = run.figures.get("client_bound_seconds", [])
    for index, second in enumerate(seconds):
        axes.axvspan(
            second,
            second + 1,
            color=color,
            alpha=0.12,
            label=f"{run.name}: editors' process > {threshold or 0:g}% of a core"
            if index == 0
            else None,
        )
