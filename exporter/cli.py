"""Command line: `cronmon serve`, `cronmon check-config` and `cronmon urls`."""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__, credentials
from .config import ConfigError, load_config, parse_network
from .credentials import GENERATED_KEY_FILE
from .embedded import ALLOCATORS, EmbeddedRedisError, claim_data_dir
from .settings import DEFAULT_PORT, Settings
from .workers import supervise, worker_index

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable

    from aiohttp import web

log = logging.getLogger("cronmon")

# --event-loop's choices: "auto" serves on uvloop when it is installed,
# "asyncio" on the standard library's loop (event_loop_factory).
EVENT_LOOPS = ("auto", "asyncio")


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT, :PORT (all interfaces) or [IPv6]:PORT."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not HOST:PORT (for example :{DEFAULT_PORT} or 127.0.0.1:{DEFAULT_PORT})"
        )
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cronmon",
        description="Prometheus-native monitor for cron jobs, batch jobs and heartbeats.",
    )
    parser.add_argument("--version", action="version", version=f"cronmon {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the exporter",
        description=(
            "Take pings for the monitors in --config, keep their state in Redis and serve "
            "it at /metrics. With no Redis URL, an embedded redis-server is started under "
            "--data-dir and stopped on exit. SIGHUP or POST /-/reload reloads the config."
        ),
    )
    serve.add_argument(
        "--config",
        required=True,
        type=Path,
        metavar="PATH",
        help="a YAML file, or a directory whose *.yaml / *.yml files are merged",
    )
    _add_listen(serve)
    serve.add_argument(
        "--redis-url",
        default=os.environ.get("CRONMON_REDIS_URL"),
        metavar="URL",
        help=(
            "use this Redis server (redis://, rediss:// or unix://) instead of the embedded one, or the primary "
            "Sentinel names: redis+sentinel://[:password@]host:port[,host:port...]/<service>[/db]"
            "[?wait_replicas=1&wait_timeout=1000] (a check-in is answered only once that many replicas hold it), "
            "or a Redis Cluster: redis+cluster://[:password@]host:port[,host:port...][?wait_replicas=...]; "
            "env CRONMON_REDIS_URL"
        ),
    )
    _add_data_dir(serve)
    serve.add_argument(
        "--redis-server",
        default=None,
        metavar="BINARY",
        help=(
            "redis-server binary for the embedded store (default: the one shipped with cronmon; "
            "env CRONMON_REDIS_SERVER)"
        ),
    )
    _add_choice(
        serve, "--redis-allocator", "CRONMON_REDIS_ALLOCATOR", ALLOCATORS, "an allocator choice",
        "the embedded redis-server's memory allocator: auto runs a binary built with glibc's malloc (as the "
        "shipped one is) with mimalloc preloaded, 10-18%% less of Redis's CPU a check-in; builtin runs it "
        "as built",
    )
    _add_public_url(serve)
    serve.add_argument(
        "--key-prefix",
        default="cronmon",
        metavar="PREFIX",
        help="prefix of every Redis key, to share one Redis between installations (default cronmon)",
    )
    serve.add_argument(
        "--alertmanager-url",
        action="append",
        metavar="URL",
        default=[u for u in os.environ.get("CRONMON_ALERTMANAGER_URLS", "").split(",") if u.strip()],
        help=(
            "turn on the direct bridge: post alerts to this Alertmanager (repeat for an HA pair); "
            "env CRONMON_ALERTMANAGER_URLS, comma-separated. Off by default: the Prometheus rules "
            "are the usual path (see README)"
        ),
    )
    serve.add_argument(
        "--alert-resend-interval",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how often the bridge re-posts firing alerts (default 30)",
    )
    serve.add_argument(
        "--boxwatch-plan-limit",
        type=int,
        default=100,
        metavar="N",
        help="Boxwatch API: at most N cron checks per token owner (402 plan_limit_reached beyond; default 100)",
    )
    serve.add_argument(
        "--web.idle-timeout",
        dest="idle_timeout",
        type=float,
        metavar="SECONDS",
        default=float(os.environ.get("CRONMON_WEB_IDLE_TIMEOUT") or 30),
        help=(
            "close a connection that has not sent a complete request within SECONDS of opening or "
            "of its last response (default 30; bounds slow-header clients); env CRONMON_WEB_IDLE_TIMEOUT"
        ),
    )
    serve.add_argument(
        "--monitors-per-owner",
        type=int,
        default=int(os.environ.get("CRONMON_MONITORS_PER_OWNER") or 10_000),
        metavar="N",
        help=(
            "at most N monitors created through the APIs per token owner, over every API "
            "(0: no limit; default 10000); env CRONMON_MONITORS_PER_OWNER"
        ),
    )
    serve.add_argument(
        "--auto-provision",
        action="store_true",
        default=os.environ.get("CRONMON_AUTO_PROVISION", "") in ("1", "true", "yes"),
        help=(
            "let /ping/<ping key>/<slug>?create=1 create an unknown monitor (Healthchecks' "
            "auto-provisioning: 1-day interval, 1-hour grace); env CRONMON_AUTO_PROVISION=1"
        ),
    )
    serve.add_argument(
        "--trusted-proxy",
        action="append",
        type=_network,
        metavar="CIDR",
        default=[_network(n) for n in os.environ.get("CRONMON_TRUSTED_PROXIES", "").split(",") if n.strip()],
        help=(
            "a reverse proxy (address or network) whose X-Forwarded-For header is believed for the "
            "client address (IP allow lists, recorded source IPs); repeat for several; "
            "env CRONMON_TRUSTED_PROXIES (comma-separated)"
        ),
    )
    serve.add_argument(
        "--web.config.file",
        dest="web_config_file",
        type=Path,
        metavar="PATH",
        default=os.environ.get("CRONMON_WEB_CONFIG_FILE") or None,
        help=(
            "TLS, basic auth and response headers, in the format of Prometheus' exporter-toolkit "
            "(README, \"TLS and basic auth\"); read once at start, a bad file refuses to start; "
            "env CRONMON_WEB_CONFIG_FILE"
        ),
    )
    serve.add_argument(
        "--web.enable-lifecycle",
        dest="enable_lifecycle",
        action="store_true",
        default=os.environ.get("CRONMON_WEB_ENABLE_LIFECYCLE", "") in ("1", "true", "yes"),
        help=(
            "serve POST /-/reload (off by default, as in Prometheus: it is unauthenticated, and a "
            "reload of a large config costs seconds of CPU); SIGHUP always reloads; "
            "env CRONMON_WEB_ENABLE_LIFECYCLE=1"
        ),
    )
    serve.add_argument(
        "--probe-concurrency",
        type=int,
        default=64,
        metavar="N",
        help="active checks: at most N running at once in this process (default 64)",
    )
    serve.add_argument(
        "--probe-allow-network",
        action="append",
        type=_network,
        default=[],
        metavar="CIDR",
        help=(
            "a network that active checks of API-created monitors may connect to besides public "
            "addresses (repeat for several). Without it they reach public addresses only: loopback, "
            "private, link-local, multicast and reserved ones are refused. YAML monitors' checks "
            "may connect anywhere but cronmon's own Redis."
        ),
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        default=_workers(os.environ["CRONMON_WORKERS"]) if os.environ.get("CRONMON_WORKERS") else None,
        metavar="N",
        help=(
            "serve with N processes on one port (SO_REUSEPORT) that share the one Redis; "
            "default: one per CPU core, less one for the embedded Redis (at least 1); env CRONMON_WORKERS"
        ),
    )
    _add_choice(
        serve, "--event-loop", "CRONMON_EVENT_LOOP", EVENT_LOOPS, "an event loop choice",
        "auto serves on uvloop where it is installed (a dependency but on Windows): about a tenth fewer "
        "instructions a ping for a worker; asyncio on the standard library's loop",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (default info)",
    )

    check = commands.add_parser(
        "check-config",
        help="validate a config and exit",
        description=(
            "Validate a config file or directory: exit 0 if valid, 1 with one line per problem "
            "(file, monitor, field) otherwise. Run it in CI before merging a YAML change. "
            "Secrets referenced by env or file are not read."
        ),
    )
    check.add_argument("path", type=Path, metavar="PATH", help="a YAML file or a directory of them")

    urls = commands.add_parser(
        "urls",
        help="print the ping URLs of the config's monitors",
        description=(
            "Print every YAML monitor's ping URLs, one per line as '<monitor id> <URL>': its UUID "
            "URL and one /ping/<ping key>/<id> URL per ping key that addresses it. The ping key "
            "comes from where `cronmon serve` reads it (ping_keys: in the config, else "
            "CRONMON_PING_KEY, else the key serve generated in --data-dir); unlike serve's "
            "start-up output, keys and UUIDs from env or files are printed too: whoever runs this "
            "has them already. API-created monitors show their URL in the API (ping_urls)."
        ),
    )
    urls.add_argument(
        "--config",
        required=True,
        type=Path,
        metavar="PATH",
        help="the config `cronmon serve` uses (a YAML file or a directory)",
    )
    urls.add_argument("monitors", nargs="*", metavar="ID", help="only these monitors (default: all)")
    _add_data_dir(urls)
    _add_public_url(urls)
    _add_listen(urls, "serve's --listen, for the URLs' base when there is no --public-url")
    from . import runner  # `cronmon exec`; its options live with it

    runner.add_parser(commands)
    return parser


def _add_listen(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    parser.add_argument(
        "--listen",
        default=f":{DEFAULT_PORT}",
        type=parse_listen,
        metavar="HOST:PORT",
        help=help or f"address to serve HTTP on (default :{DEFAULT_PORT}, all interfaces)",
    )


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        default=Path(os.environ.get("CRONMON_DATA_DIR", "cronmon-data")),
        type=Path,
        metavar="DIR",
        help=(
            "where the embedded Redis keeps its data and a generated ping key is kept "
            "(default ./cronmon-data; env CRONMON_DATA_DIR)"
        ),
    )


def _add_public_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--public-url",
        default=os.environ.get("CRONMON_PUBLIC_URL"),
        metavar="URL",
        help="base URL jobs use to reach cronmon, for the ping URLs printed (env CRONMON_PUBLIC_URL)",
    )


def default_workers(cores: int | None, embedded_redis: bool) -> int:
    """How many worker processes `serve` runs unless told: one per core,
    but one fewer when cronmon runs its embedded Redis on the same cores.
    redis-server runs every check-in's record script, about as much CPU
    per ping as a worker's Python, on one thread of its own: N workers
    plus Redis on N cores take turns on them, and the one worker and
    Redis of a 2-core machine record ~20% more pings than two workers and
    Redis do (bench/compare.py; README "Performance")."""
    cores = cores or 1
    return max(1, cores - 1) if embedded_redis else cores


def _workers(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of worker processes from 1 to 64")
    return int(text)


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What `cronmon serve` runs its event loop with: uvloop's (for "auto",
    when installed), or None for asyncio's default.

    Why uvloop: libuv's loop and transports in C take the event loop's own
    share of a ping (reading the socket, calling the protocol, writing the
    answer, running the ready callbacks) off Python: counted with
    bench/instructions.py, a worker's instructions a ping fell by 11%
    (README "Performance"). Its server is not used: libuv accepts one
    connection per loop turn, too slow for a burst of clients
    (web/acceptor.py accepts for both loops)."""
    if choice != "auto":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _add_choice(
    parser: argparse.ArgumentParser, flag: str, env: str, choices: tuple[str, ...], what: str, description: str
) -> None:
    """A flag taking one of `choices` (the first is the default), or the
    value of the environment variable `env`, which is checked as the flag's
    is (argparse applies `type` to a string default too)."""

    def check(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}: use one of {', '.join(choices)}")
        return text

    parser.add_argument(
        flag, type=check, default=os.environ.get(env, choices[0]), metavar="{" + ",".join(choices) + "}",
        help=f"{description} (default {choices[0]}; env {env})",
    )


def _network(text: str):
    try:
        return parse_network(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args.path)
    if args.command == "urls":
        return print_urls(args)
    if args.command == "exec":
        from . import runner

        return runner.main(args)
    return serve(args, argv[argv.index("serve") + 1 :])


def check_config(path: Path) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"config is invalid: {len(exc.problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"config is valid: {len(config.monitors)} monitors in {len(config.files)} file(s)")
    return 0


def print_urls(args: argparse.Namespace) -> int:
    """`cronmon urls`: every YAML monitor's ping URLs with the real keys."""
    host, port = args.listen
    settings = Settings(
        config_path=args.config, listen_host=host, listen_port=port, data_dir=args.data_dir,
        public_url=args.public_url,
    )
    try:
        config = load_config(args.config)
        secrets, keys = credentials.resolve_with_keys(config, settings.data_dir)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print("cronmon: cannot print the ping URLs: the config or a secret it names is not usable", file=sys.stderr)
        return 1
    except credentials.NoPingKey as exc:
        print(f"cronmon: {exc}", file=sys.stderr)
        return 1
    monitors = {m.id: m for m in config.monitors}
    unknown = [monitor_id for monitor_id in args.monitors if monitor_id not in monitors]
    if unknown:
        print(f"cronmon: no monitor {', '.join(unknown)} in {args.config}", file=sys.stderr)
        return 1
    chosen = [monitors[monitor_id] for monitor_id in args.monitors] or list(monitors.values())
    width = max((len(m.id) for m in chosen), default=0)
    for monitor in chosen:
        uuid_url, slug_urls = credentials.ping_urls(monitor, secrets, settings.base_url, keys)
        found = ([uuid_url] if uuid_url else []) + slug_urls
        if not found:
            print(f"{monitor.id:<{width}}  (no ping URL: ping.keys is empty and no ping.uuid_env/uuid_file)")
        for url in found:
            print(f"{monitor.id:<{width}}  {url}")
    return 0


def serve(args: argparse.Namespace, argv: list[str]) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = args.listen
    if args.redis_url:
        from .store import check_url

        try:
            check_url(args.redis_url)
        except ValueError as exc:
            print(f"cronmon: not starting: --redis-url (env CRONMON_REDIS_URL): {exc}", file=sys.stderr)
            return 2
    if not args.redis_url and worker_index() is None:
        # Before the config is read or anything printed: a second cronmon
        # on a data dir in use stops here, with one sentence.
        try:
            claim_data_dir(args.data_dir)
        except EmbeddedRedisError as exc:
            print(f"cronmon: not starting: {exc}", file=sys.stderr)
            return 1
    web_config = None
    if args.web_config_file:
        from .webconfig import WebConfigError, load_web_config

        try:
            web_config = load_web_config(Path(args.web_config_file))
        except WebConfigError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            print("cronmon: not starting: the web config file is invalid", file=sys.stderr)
            return 1
    settings = Settings(
        config_path=args.config,
        listen_host=host,
        listen_port=port,
        redis_url=args.redis_url or None,
        data_dir=args.data_dir,
        redis_server_binary=args.redis_server,
        redis_allocator=args.redis_allocator,
        key_prefix=args.key_prefix,
        public_url=args.public_url,
        alertmanager_urls=tuple(u.strip() for u in args.alertmanager_url),
        alert_resend_interval=args.alert_resend_interval,
        boxwatch_plan_limit=args.boxwatch_plan_limit,
        monitors_per_owner=args.monitors_per_owner,
        auto_provision=args.auto_provision,
        enable_lifecycle=args.enable_lifecycle,
        idle_timeout=args.idle_timeout,
        trusted_proxies=tuple(args.trusted_proxy),
        probe_concurrency=args.probe_concurrency,
        probe_allowed_networks=tuple(args.probe_allow_network),
        bridge_enabled=worker_index() in (None, 0),
        web_config=web_config,
    )
    workers = args.workers or default_workers(os.cpu_count(), embedded_redis=settings.redis_url is None)
    if workers > 1 and worker_index() is None:
        return _serve_workers(settings, argv, workers)
    from .web.app import create_app
    from .web.keys import CORE, RELOADER

    try:
        app = create_app(settings)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print("cronmon: not starting: the config is invalid", file=sys.stderr)
        return 1

    async def handle_sighup(app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, app[RELOADER].request_reload)
        loop.add_signal_handler(signal.SIGUSR1, log_tasks)

    app.on_startup.append(handle_sighup)
    if worker_index() is None:
        print_banner(settings, app[CORE].registry)
        print("serving with 1 process (--workers N for more)", flush=True)
    # The scrape cache renders in a worker thread; a 1 ms switch interval
    # (default 5 ms) gives the event loop the GIL back sooner: the worst
    # ping during 10,000-monitor scrapes went from 107 ms to 66 ms.
    sys.setswitchinterval(0.001)
    try:
        ssl_context = web_config.ssl_context if web_config else None
        loop_factory = event_loop_factory(args.event_loop)
        log.info("serving on %s's event loop", "uvloop" if loop_factory else "asyncio")
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(run_until_stopped(app, host, port, settings.idle_timeout, ssl_context))
    except EmbeddedRedisError as exc:
        print(f"cronmon: {exc}", file=sys.stderr)
        return 1
    return 0


async def run_until_stopped(
    app: web.Application, host: str, port: int, idle_timeout: float, ssl_context: ssl.SSLContext | None = None
) -> None:
    """Serve `app` until SIGTERM or SIGINT, then run its cleanup.

    aiohttp's run_app stops by cancelling its main task, and Python 3.11's
    asyncio.wait_for loses a cancellation that arrives as the awaitable it
    waits on completes (CPython gh-86296, fixed in 3.12): a SIGTERM during
    start-up (a worker's first Redis round trips) was swallowed and the
    process then served forever, ignoring it (about one start in 25 under
    load). Here the signals only set an event, looked at once start-up is
    done: nothing is cancelled, so nothing can be lost."""
    from aiohttp import web

    from .web import fast_ping

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    # keepalive_timeout also bounds how long a connection may take to send
    # a request's headers (aiohttp closes a connection whose request has not
    # arrived by then): a slowloris client holds a connection for
    # idle_timeout seconds at most.
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=idle_timeout)
    await runner.setup()
    listener = None
    try:
        # Each connection starts on the ping fast path, which hands it to
        # aiohttp at its first request that is not a plain ping (fast_ping).
        # reuse_port: the workers of a supervisor share the address.
        listener = await fast_ping.listen(
            app, runner, host, port, ssl_context=ssl_context, reuse_port=worker_index() is not None
        )
        await stopping.wait()
    finally:
        if listener is not None:
            await listener.close()
        await runner.cleanup()


def log_tasks() -> None:
    """SIGUSR1: log what every asyncio task of this process is waiting for
    (for a process that does not stop, or stalls). A diagnostic; it changes
    nothing."""
    for task in asyncio.all_tasks():
        frames = io.StringIO()
        task.print_stack(limit=20, file=frames)
        log.warning("SIGUSR1: task %s:\n%s", task.get_name(), frames.getvalue())


def _serve_workers(settings: Settings, argv: list[str], workers: int) -> int:
    """Validate the config and print the banner once, then supervise."""
    from .reloader import Reloader

    try:
        registry = Reloader(settings).load_initial()  # also makes the ping key the workers share
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print("cronmon: not starting: the config is invalid", file=sys.stderr)
        return 1
    print_banner(settings, registry)
    print(f"serving with {workers} worker processes", flush=True)
    return supervise(argv, workers, settings.redis_url, settings.data_dir, settings.redis_server_binary,
                     settings.redis_allocator)


def print_banner(settings: Settings, registry) -> None:
    """What `cronmon serve` prints at start-up: where it listens, how to
    reach the APIs, and every YAML monitor's ping URLs. Keys and UUIDs the
    operator configured (env, files) appear as placeholders naming their
    source; `cronmon urls` prints them."""
    base = settings.base_url
    store = settings.redis_url and "Redis at the given URL" or f"embedded redis-server, data in {settings.data_dir}/"
    print(f"cronmon {__version__} on {settings.listen_host}:{settings.listen_port}, store: {store}")
    print(f"metrics: {base}/metrics")
    secrets = registry.secrets
    if secrets is not None and not secrets.api_tokens:
        print(
            "management APIs: no API token configured, so they answer 401; declare one under "
            "api_tokens: in the config (README, \"Management API\")"
        )
    if secrets is None or not registry.monitors:
        sys.stdout.flush()
        return
    if secrets.generated_key:
        kept = settings.data_dir / GENERATED_KEY_FILE
        if secrets.generated_now:
            print(f"ping key generated and kept in {kept} (set CRONMON_PING_KEY to choose one)")
        else:
            print(f"ping key reused: kept in {kept} since an earlier start (set CRONMON_PING_KEY to choose one)")
    print("ping URLs (append /start, /fail, /log or /<exit status>; all of them: cronmon urls):")
    for monitor in registry.monitors.values():
        uuid_url, slug_urls = credentials.ping_urls(monitor, secrets, base)
        # One URL per form that exists: the first key's, and the UUID one.
        shown = slug_urls[:1] + ([uuid_url] if uuid_url else [])
        print(f"  {monitor.id}: {'  or  '.join(shown) or 'no ping URL (its ping.keys is empty)'}")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
