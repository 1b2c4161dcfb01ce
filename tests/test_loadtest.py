"""Every benchmark scenario at toy scale: it runs end to end and counts correctly.

Timings are printed by the benchmark, never checked here (the machine is shared); what
is checked is what must hold at any speed: every committed change reached every editor
once and in order, the report was written, and nothing was left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import psutil

BENCH_TIMEOUT = 240.0
TOY = ["--subscribers", "12", "--users", "4", "--rate", "10", "--duration", "1"]
TOY_COMMITS = 10  # --rate times --duration


MARK = "SITEBUILDER_TEST_BENCH_RUN"  # in the environment of every process a run starts


def processes_of(run: str) -> set[int]:
    """Every process still alive that benchmark run `run` started (editors, reference
    server, gateway and its workers): they inherit its environment, which marks them.
    Other benchmarks on the machine (another checkout's tests) are not counted."""
    found = set()
    for process in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if process.environ().get(MARK) == run:
                found.add(process.info["pid"])
    return found


async def run_module(*args: str, run: str = "") -> tuple[int | None, bytes, bytes]:
    """`python -m ARGS`: its exit status, stdout and stderr (`run` marks its processes)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, MARK: run},
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), BENCH_TIMEOUT)
    return process.returncode, stdout, stderr


async def bench(
    tmp_path: Path,
    database_dsn: str,
    *args: str,
    printed: list[str] | None = None,
    plot: bool | None = False,
) -> dict[str, Any]:
    """Run `python -m loadtest ARGS` against the test database; its JSON report (and
    what it printed, appended to `printed`). The plot is drawn only when asked for (it
    takes about a second); None: the scenario has none (`fuzz`)."""
    out = tmp_path / "report.json"
    run = uuid.uuid4().hex
    no_plot = ("--no-plot",) if plot is False else ()
    status, stdout, stderr = await run_module(
        "loadtest", *args, *no_plot, "--database-url", database_dsn, "--out", str(out), run=run
    )
    assert status == 0, stderr.decode()[-3000:]
    assert "==" in stdout.decode(), "the table was printed"
    if printed is not None:
        printed.append(stdout.decode())
    assert processes_of(run) == set(), "a process of the benchmark was left behind"
    conn = await asyncpg.connect(database_dsn)
    try:
        slots = await conn.fetchval(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'bench\\_%'"
        )
    finally:
        await conn.close()
    assert slots == 0, "the run's replication slot was dropped"
    assert out.with_suffix(".png").exists() == bool(plot)
    report: dict[str, Any] = orjson.loads(out.read_bytes())
    return report


def assert_exact(run: dict[str, Any]) -> None:
    assert run["lost"] == 0
    assert run["duplicated"] == 0
    assert run["out_of_order"] == 0
    assert run["resets"] == 0
    assert run["slow_consumer_closes"] == 0
    assert run["connect_failures"] == 0


def assert_egress(run: dict[str, Any]) -> None:
    """Bytes per delivery is the frames' mean; egress is deliveries/s times it."""
    frames, sizes = run["frames"], run["frame_bytes"]
    mean = sum(sizes[entity] * frames[entity] for entity in frames) / sum(frames.values())
    assert abs(run["bytes_per_delivery"] - mean) <= 1
    expected = run["deliveries_per_s"] * run["bytes_per_delivery"] / 1e6
    assert abs(run["egress_mb_per_s"] - expected) <= 0.01 + expected / 1000


async def test_fanout_ramp_with_reference_reports_steps_frames_and_ratios(
    tmp_path: Path, database_dsn: str
) -> None:
    """One ramp of the gateway and of the reference, on a real page's layout
    (--layout-bytes): the frames carry it and the reference sends frames of the sizes
    the gateway's run measured; each step's rate, egress and CPU; with a threshold no
    process stays under (--client-bound-percent 0.001), every step and run is marked
    client-bound. (One run of both servers checks what a plain --with-reference run
    and a ramp did apart; the unmarked case is test_fanout_over_workers_with_deltas…)"""
    printed: list[str] = []
    report = await bench(
        tmp_path,
        database_dsn,
        "fanout",
        *TOY,
        "--ramp",
        "--step-seconds",
        "1",
        "--max-steps",
        "2",
        "--p99-bound-ms",
        "100000",
        "--with-reference",
        "--layout-bytes",
        "20000",
        "--client-bound-percent",
        "0.001",
        printed=printed,
        plot=True,
    )
    gateway, reference = report["runs"]
    for run in (gateway, reference):
        assert_exact(run)  # seqs go on from step to step, in both
        assert [step["rate"] for step in run["ramp"]] == [10.0, 15.0]
        assert run["sustained_deliveries_per_s"] > 0
        # every commit reached every editor: its wireframe change and its version
        assert run["frames"]["wireframe"] == run["frames"]["version"] == run["commits"] * 12
        assert set(run["latency_ms"]) == {"p50", "p90", "p99", "p99.9", "max"}
        assert run["deliveries_per_s"] > 0
        assert_egress(run)
        assert run["client_bound"] is True
        assert run["sustained_client_bound"] is True
        assert run["client_bound_share"] > 0.5
        assert run["client_bound_seconds"]
        for step in run["ramp"]:
            assert step["client_bound"] is True
            assert step["egress_mb_per_s"] > 0
            # half the deliveries a wireframe change, half a version
            assert 40_000 < step["bytes_per_delivery"] < 70_000
    # the change holds the layout twice (new and old rows), its version three times
    # (the version's data as PostgreSQL writes jsonb: with a space after ',' and ':')
    assert 40_000 < gateway["frame_bytes"]["wireframe"] < 45_000
    assert 60_000 < gateway["frame_bytes"]["version"] < 70_000
    assert reference["frame_bytes"] == gateway["frame_bytes"]
    assert report["config"]["layout_bytes"] == 20000
    assert report["client_bound_runs"] == ["gateway", "reference"]
    (table,) = printed
    assert "latency p99 (ms)" in table
    p99_row = next(line for line in table.splitlines() if line.startswith("latency p99 "))
    assert p99_row.count("*") == 2
    assert "* client-bound (gateway): " in table
    assert table.count("CLIENT-BOUND (editors' process") == 4
    assert "ratio_p99: " in table
    assert "(client-bound)" in table
    # each step says who used the CPU, and how much went to the rest of the machine
    for step in gateway["ramp"]:
        assert {"gateway", "editors", "writer", "irq", "others", "idle"} <= set(step["cpu_percent"])
    for step in reference["ramp"]:
        assert set(step["cpu_percent"]) == {
            "server",
            "editors",
            "writer",
            "irq",
            "others",
            "steal",
            "idle",
        }
    assert report["ratio_throughput"] > 0
    assert report["ratio_p99"] > 0
    assert report["ratio_p99_at_rate"] == 15.0
    assert (tmp_path / "report.png").stat().st_size > 0


async def test_fanout_over_workers_with_deltas_counts_every_delivery(
    tmp_path: Path, database_dsn: str
) -> None:
    """Two workers, editors subscribed with --delta to a real page's layout: every
    editor says which worker serves it and both serve some; each update reaches the
    editors as a small delta frame, counted as a delivery (its seq checked like a
    change's) whatever the layout's size, and the version rows come without their data.
    12 editors at 10 commits/s are far from a busy client: nothing is marked."""
    report = await bench(
        tmp_path,
        database_dsn,
        "fanout",
        *TOY,
        "--workers",
        "2",
        "--delta",
        "--layout-bytes",
        "20000",
    )
    (gateway,) = report["runs"]
    assert_exact(gateway)
    assert report["config"]["workers"] == 2
    assert report["config"]["delta"] is True
    assert sum(gateway["editors per worker"].values()) == 12
    assert len(gateway["editors per worker"]) == 2
    assert gateway["commits"] == TOY_COMMITS
    frames = gateway["frames"]
    assert frames["wireframe"] == frames["version"] == gateway["commits"] * 12
    assert gateway["delta_frames"] == gateway["commits"] * 12
    assert gateway["frame_bytes"]["wireframe"] < 1000
    assert gateway["frame_bytes"]["version"] < 2000
    assert_egress(gateway)
    assert gateway["client_bound"] is False
    assert 0 <= gateway["editors_process_cpu_percent"] < 70
    assert report["client_bound_runs"] == []
    assert report["notes"] == []


async def test_failover_resumes_the_killed_workers_editors(
    tmp_path: Path, database_dsn: str
) -> None:
    report = await bench(
        tmp_path,
        database_dsn,
        "failover",
        "--subscribers",
        "24",
        "--users",
        "4",
        "--rate",
        "10",
        "--duration",
        "6",  # the cut editors catch up while the writer still writes
        plot=True,
    )
    (gateway,) = report["runs"]
    assert_exact(gateway)
    assert gateway["editors_lost"] == 0
    assert gateway["editors_duplicated"] == 0
    assert gateway["editors_out_of_order"] == 0
    assert gateway["workers"] == 3
    spread = gateway["editors per worker"]
    assert sum(spread.values()) == 24
    # the killed worker's editors, and only they, were cut; all came back and caught up
    assert gateway["editors cut"] == spread[gateway["killed worker"]] > 0
    assert gateway["editors cut on other workers"] == 0
    assert gateway["not recovered"] == 0
    assert gateway["kill → caught up max (s)"] is not None
    assert sum(gateway["editors per worker after"].values()) == 24
    assert gateway["frames"]["wireframe"] == gateway["commits"] * 24
    assert gateway["latency during failover p50 (ms)"] > 0
    assert (tmp_path / "report.png").stat().st_size > 0


async def test_projects_spread_writes(tmp_path: Path, database_dsn: str) -> None:
    report = await bench(
        tmp_path,
        database_dsn,
        "projects",
        "--projects",
        "6",
        "--editors-per-project",
        "3",
        "--rate",
        "12",
        "--duration",
        "1",
    )
    (gateway,) = report["runs"]
    assert_exact(gateway)
    # each commit goes to one project's wireframe and reaches that project's 3 editors
    assert gateway["frames"]["wireframe"] == gateway["commits"] * 3


async def test_storm_gets_everyone_ready(tmp_path: Path, database_dsn: str) -> None:
    """With the editors' sockets' receive buffers set (--receive-buffer-kib)."""
    report = await bench(
        tmp_path,
        database_dsn,
        "storm",
        *("--clients", "20", "--users", "5", "--projects", "4", "--receive-buffer-kib", "64"),
    )
    assert report["config"]["receive_buffer_kib"] == 64
    (gateway,) = report["runs"]
    assert gateway["clients"] == 20
    assert gateway["failures"] == 0
    assert gateway["subscribe p99 (ms)"] > 0
    assert gateway["editors_peak_rss_mb"] > 0


async def test_feed_delivers_every_bulk_insert_and_reports_the_rates(
    tmp_path: Path, database_dsn: str
) -> None:
    report = await bench(
        tmp_path,
        database_dsn,
        "feed",
        *("--subscribers", "2", "--users", "2", "--rows", "300", "--batch-rows", "100"),
        *("--prefill", "100"),
    )
    (gateway,) = report["runs"]
    # Each row and its version, to each subscriber, once.
    assert gateway["changes_per_subscriber"] == gateway["expected_per_subscriber"] == 600
    assert gateway["frames"] == {"wireframe": 600, "version": 600}
    assert gateway["writer_rows_per_s"] > 0
    assert gateway["gateway_changes_per_s"] > 0
    assert gateway["prefill_rows_per_s"] > 0


async def test_reconnect_resumes_without_loss(tmp_path: Path, database_dsn: str) -> None:
    report = await bench(
        tmp_path,
        database_dsn,
        "reconnect",
        "--subscribers",
        "20",
        "--users",
        "4",
        "--rate",
        "10",
        "--duration",
        "2",
    )
    (gateway,) = report["runs"]
    assert_exact(gateway)
    assert gateway["dropped"] == 6
    assert gateway["resume_failures"] == 0
    assert gateway["resumed_caught_up"] == 6
    assert gateway["frames"]["wireframe"] == gateway["commits"] * 20


async def test_idle_measures_memory_per_connection(tmp_path: Path, database_dsn: str) -> None:
    report = await bench(
        tmp_path,
        database_dsn,
        "idle",
        "--subscribers",
        "20",
        "--duration",
        "0.5",
        "--with-reference",
    )
    gateway, reference = report["runs"]
    for run in (gateway, reference):
        assert run["connections"] == 20
        assert run["connect_failures"] == 0
        assert "KiB per connection" in run


async def test_reference_alone(tmp_path: Path, database_dsn: str) -> None:
    """With a threshold no process stays under (--client-bound-percent 0.001) the run
    is marked client-bound, and the bench says beforehand that the editors asked for
    will be (a ramp, sized for its top step, needs no such advice)."""
    report = await bench(
        tmp_path, database_dsn, "reference", *TOY, "--client-bound-percent", "0.001"
    )
    (reference,) = report["runs"]
    assert_exact(reference)
    assert reference["commits"] == TOY_COMMITS
    assert reference["frames"]["wireframe"] == reference["commits"] * 12
    assert reference["client_bound"] is True
    assert report["client_bound_runs"] == ["reference"]
    assert any("ask for fewer editors" in note for note in report["notes"])


async def test_hostile_compares_a_quiet_run_with_a_hostile_one(
    tmp_path: Path, database_dsn: str
) -> None:
    """Both runs side by side with the ratio; every pattern ran at the limits, was
    answered with the refusals the limits promise, and the editors lost nothing."""
    printed: list[str] = []
    report = await bench(
        tmp_path,
        database_dsn,
        "hostile",
        "--subscribers",
        "20",
        "--users",
        "4",
        "--rate",
        "5",
        "--duration",
        "2",  # the hostile clients start 2 s before it (loadtest.hostile.WARMUP_SECONDS)
        "--hostile",
        "5",
        # a small cap on connections not signed in, reached in seconds
        "--gateway-env",
        "SITEBUILDER_MAX_UNAUTHENTICATED_PER_ADDRESS=10",
        "--gateway-env",
        "SITEBUILDER_AUTH_TIMEOUT_SECONDS=1",
        printed=printed,
    )
    quiet, hostile = report["runs"]
    for run in (quiet, hostile):
        assert_exact(run)
        assert run["frames"]["wireframe"] == run["commits"] * 20
        assert run["latency_ms"]["p99"] > 0
    assert "hostile cpu %" in hostile
    assert "hostile cpu %" not in quiet
    assert report["ratio_p99"] > 0
    assert report["verdict"] in ("PASS", "FAIL")
    assert hostile["hostile 1011 closes"] == 0
    (table,) = printed
    header = next(line for line in table.splitlines() if line.strip().startswith("quiet"))
    assert header.split() == ["quiet", "hostile"]
    assert "ratio_p99: " in table
    assert f"verdict: {report['verdict']}" in table
    patterns = report["hostile"]["patterns"]
    assert set(patterns) == {"filters", "churn", "presence", "malformed", "rpc", "unauthenticated"}
    refusals: dict[str, int] = {}
    closes: dict[str, int] = {}
    for name, tally in patterns.items():
        assert tally["frames_sent"] > 0 or name == "unauthenticated"
        assert not tally["connect_failures"], name
        for code, count in tally["refusals"].items():
            refusals[code] = refusals.get(code, 0) + count
        for code, count in tally["closes"].items():
            closes[code] = closes.get(code, 0) + count
    # each limit probed by one is refused, in each protocol's words
    for code in (
        "phoenix/too_many_bindings",
        "phoenix/too_many_bindings_held",
        "phoenix/filter_too_long",
        "phoenix/too_many_conditions",
        "phoenix/too_many_in_values",
        "native/presence_too_large",
        "native/frame_too_large",
        "native/bad_json",
        "native/unknown_type",
        "native/forbidden",
        "native/not_found",
        "native/auth_timeout",
    ):
        assert refusals.get(code, 0) > 0, code
    # not signed in: closed at the auth timeout, and refused at once past the cap
    assert closes.get("4001", 0) > 0
    assert closes.get("4009", 0) > 0
    assert "1011" not in closes


async def test_an_existing_deployment_needs_its_database() -> None:
    status, _, stderr = await run_module("loadtest", "fanout", "--url", "ws://127.0.0.1:9/")
    assert status == 1
    assert b"--url needs --database-url" in stderr


async def test_the_gateway_command_runs_the_benchmark() -> None:
    """`sitebuilder-gateway bench …` is `python -m loadtest …`, its options included."""
    status, stdout, _ = await run_module("gateway.app.cli", "bench", "--help")
    assert status == 0
    assert b"--with-reference" in stdout
    assert b"--workers" in stdout
    for option in (b"--layout-bytes", b"--delta", b"--client-procs", b"--client-bound-percent"):
        assert option in stdout
    for scenario in (
        b"fanout",
        b"projects",
        b"storm",
        b"reconnect",
        b"idle",
        b"reference",
        b"failover",
        b"hostile",
    ):
        assert scenario in stdout


async def test_fuzz_sends_both_protocols_beside_normal_clients(
    tmp_path: Path, database_dsn: str
) -> None:
    """`bench fuzz` at toy scale (loadtest.fuzz_run): sessions of both protocols sent to
    a gateway it starts, nothing found, every change delivered to the normal clients
    beside them, the gateway's log read."""
    report = await bench(
        tmp_path,
        database_dsn,
        "fuzz",
        *("--minutes", "0.05", "--seed", "1", "--native", "2", "--supabase", "2"),
        plot=None,
    )
    figures = report["figures"]
    assert figures["sessions"] > 0
    assert figures["messages received"] > 0
    assert figures["problems"] == 0, report["findings"]
    assert figures["log checked"] is True
    written = figures["changes written"]
    assert written > 0
    assert figures["native bystander got"] == figures["supabase bystander got"] == written


async def test_the_gateway_command_runs_the_fuzzer() -> None:
    status, stdout, _ = await run_module("gateway.app.cli", "bench", "fuzz", "--help")
    assert status == 0
    assert b"--minutes" in stdout
    assert b"--known" in stdout
