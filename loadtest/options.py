"""Every knob of every scenario, in one place: the CLI fills it, each part reads its own."""

from __future__ import annotations

from dataclasses import dataclass, field

LAYOUT_BYTES = 2048  # a realistic wireframe layout: ~2 KB of jsonb
CLIENT_BOUND_PERCENT = 70.0  # % of a core: past it an editors' process delays what it reads


@dataclass
class Options:
    """The command line's options (see `sitebuilder-gateway bench --help`)."""

    subscribers: int = 1000
    rate: float = 20.0
    duration: float = 20.0
    users: int = 100
    wireframes: int = 4
    projects: int = 2000
    editors_per_project: int = 5
    clients: int = 1000
    drop_fraction: float = 0.3
    snapshot: bool = False
    client_procs: int = 0  # 0: chosen from the offered load (loadtest.client_load)
    client_bound_percent: float = CLIENT_BOUND_PERCENT
    layout_bytes: int = LAYOUT_BYTES
    delta: bool = False  # editors subscribe with `delta: true`
    receive_buffer_kib: int = 0  # each editor socket's SO_RCVBUF; 0: the kernel's autotuning
    connect_concurrency: int = 200
    drain_seconds: float = 30.0
    ramp: bool = False
    ramp_factor: float = 1.5
    step_seconds: float = 10.0
    max_steps: int = 12
    p99_bound_ms: float = 250.0
    with_reference: bool = False
    url: str | None = None
    database_url: str | None = None
    jwt_secret: str | None = None
    gateway_pid: int | None = None
    feed: str = "auto"
    workers: int | None = None  # `serve --workers N`; None: plain `serve` (failover: 3)
    gateway_env: dict[str, str] = field(default_factory=dict)
    hostile: int = 50  # hostile connections (`bench hostile`, loadtest.hostile)
    hostile_patterns: str = "all"
    rows: int = 50_000  # `bench feed`: wireframes inserted in bulk (loadtest.feed_run)
    batch_rows: int = 1000
    prefill: int = 0
    versioning: bool = True
