"""`raycluster`: the command line (demo, serve, edge, status, stop, write, watch, ingest).

Every expected failure prints one line, `raycluster: error: …`, on stderr and
exits 2 when the command line is wrong (bad arguments, a query the tier
rejects, no Redis URL, a bad config file or `RAYCLUSTER_*` variable) or 1 for
anything else (no tier running, Redis or Ray unreachable, a bad input line, a
start that timed out). `--debug` shows tracebacks. docs/cli.md lists each
command's exits and how long each of its waits can take.
Heavy imports (Ray, the edge's web stack) happen inside the subcommands.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, NoReturn

from raycluster._jobs import add_demo_args, add_serve_args
from raycluster.errors import ConfigError, InvalidArgument, InvalidQuery, RayclusterError

from ._common import (
    EXIT_RUNTIME,
    EXIT_USAGE,
    CommandError,
    Progress,
    load_settings,
    redis_url_of,
    setup_logging,
    validation_line,
)
from ._query import describe_query, parse_sort, parse_where
from ._table import format_status, format_table

__all__ = (
    "CommandError",
    "build_parser",
    "format_status",
    "format_table",
    "main",
    "parse_sort",
    "parse_where",
)

PROG = "raycluster"
DEMO_RATE = 200.0  # writes/s of `demo`
WEB_DEMO_RATE = 20.0  # writes/s of `demo --web`


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (`raycluster: error: …`, exit 2)."""

    def error(self, message: str) -> NoReturn:
        hint = f" (see '{self.prog} --help')"
        raise CommandError(" ".join(message.split()) + hint, EXIT_USAGE)


def _config_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--config",
        default=None,
        help="tier config (YAML); default $RAYCLUSTER_CONFIG, else ./configs/tier.yaml if present",
    )


def _tier_args(ap: argparse.ArgumentParser) -> None:
    """Which running tier: its name, its Ray namespace, and where Ray is."""
    ap.add_argument("--name", default="raycluster", help="the tier's name")
    ap.add_argument("--namespace", default="raycluster", help="its Ray namespace")
    ap.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS, auto)")


def _redis_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--redis-url",
        default=None,
        help="the tier's Redis; default $RAYCLUSTER_REDIS_URL, else the config's redis.redis_url",
    )


# Each command: how `raycluster --help` lists it, and its own `--help` text.
_COMMANDS_HELP: dict[str, dict[str, Any]] = {
    "demo": {
        "help": "run the main job (local Ray, three shards, a failover, exactness check)",
        "description": "Run the main job (what jobs/demo.py does); with --web, the browser demo "
        "(no Ray: a private Redis, two in-process shards, the edge, a live table page).",
    },
    "serve": {
        "help": "run the tier on a Ray cluster until stopped (the `ray job submit` entrypoint)",
        "description": "Start (or re-adopt) the tier, print a status line every --status-every "
        "seconds, stop every actor on SIGTERM/Ctrl-C (what jobs/serve.py does).",
    },
    "edge": {
        "help": "serve the HTTP/WebSocket edge (docs/edge-protocol.md)",
        "description": "Serve the edge over the tier's Redis until Ctrl-C.",
    },
    "status": {
        "help": "a running tier's shards: partitions, subscriptions, frames/s, lag",
        "description": "Attach to a running tier (Tier.connect) and print a table of its shards.",
    },
    "stop": {
        "help": "stop a running tier (every shard and gateway, then its controller)",
        "description": "Attach to a running tier (Tier.connect) and stop it: afterwards none of "
        "its actors runs or heartbeats.",
    },
    "write": {
        "help": "write rows from JSON lines",
        "formatter_class": argparse.RawDescriptionHelpFormatter,
        "description": "Write rows of TENANT/ENTITY from JSON lines (FILE, or stdin for '-').\n\n"
        '  {"id": "a1", "row": {"name": "p1", "temp": 70}}   upsert the whole row\n'
        '  {"id": "a2", "delete": true}                      delete\n\n'
        "Blank lines are skipped. A bad line stops the run: every line before it\n"
        "is written, nothing from it on; the error names the line.",
    },
    "watch": {
        "help": "print a live window, redrawn as it changes",
        "formatter_class": argparse.RawDescriptionHelpFormatter,
        "description": "Subscribe to a live query and print its window as it changes, until "
        "Ctrl-C\n(or --frames / --seconds). Filters (ANDed):\n\n"
        "  --where 'kind=pump' --where 'temp>50'     OP: = != > >= < <= ~ (~ is ILIKE)\n"
        "  --where \"name='007'\"                      quoted: a string\n"
        "  --where 'site=null' / 'site!=null'        IS NULL / IS NOT NULL\n\n"
        "Values take the column's declared type (else int/float/true/false when\n"
        "they look like one). --sort name,-temp sorts by name, then temp descending.",
    },
    "ingest": {
        "help": "follow the config's Postgres publication into the tier's Redis (or drop its slot)",
        "description": "Run the Postgres ingester of the config's postgres: section in this "
        "process until Ctrl-C or SIGTERM (or --seconds), printing its status every "
        "--status-every seconds (docs/postgres.md). With --drop-slot, drop its replication "
        "slot instead (Postgres stops keeping WAL for it; the next ingester copies the "
        "tables again).",
    },
}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (subcommands and their options)."""
    common = _Parser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    ap = _Parser(
        prog=PROG,
        description="A sharded live-query tier on Ray and Redis.",
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'raycluster COMMAND --help' for a command's options.",
    )
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, add in _ADDERS.items():
        add(sub.add_parser(name, parents=[common], **_COMMANDS_HELP[name]))
    return ap


def _add_demo(p: argparse.ArgumentParser) -> None:
    add_demo_args(p)
    p.set_defaults(rate=None)  # 200 writes/s for the Ray demo, WEB_DEMO_RATE with --web
    p.add_argument("--web", action="store_true", help="serve the browser demo instead")
    p.add_argument("--host", default="127.0.0.1", help="--web: address to listen on")
    p.add_argument("--port", type=int, default=8080, help="--web: port (0: a free one)")
    p.add_argument("--rows", type=int, default=200, help="--web: rows seeded")


def _add_serve(p: argparse.ArgumentParser) -> None:
    add_serve_args(p)


def _add_edge(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    _redis_arg(p)
    p.add_argument("--host", default=None, help="default: the config's edge.host")
    p.add_argument("--port", type=int, default=None, help="default: the config's edge.port")


def _add_status(p: argparse.ArgumentParser) -> None:
    _tier_args(p)
    p.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="seconds between the two samples frames/s is measured over (0: one sample)",
    )
    p.add_argument("--json", action="store_true", help="print the raw status as JSON")


def _add_stop(p: argparse.ArgumentParser) -> None:
    _tier_args(p)


def _add_write(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    _redis_arg(p)
    p.add_argument("tenant", metavar="TENANT")
    p.add_argument("entity", metavar="ENTITY")
    p.add_argument("file", metavar="FILE", nargs="?", default="-", help="default: stdin")


def _add_watch(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    _redis_arg(p)
    p.add_argument("tenant", metavar="TENANT")
    p.add_argument("entity", metavar="ENTITY")
    p.add_argument("--where", action="append", default=[], metavar="COND", help="a condition")
    p.add_argument("--sort", default=None, metavar="COLS", help="e.g. name,-temp")
    p.add_argument("--limit", type=int, default=20, help="window size (default 20)")
    p.add_argument("--columns", default=None, metavar="COLS", help="columns shown, e.g. name,temp")
    p.add_argument(
        "--frames", type=int, default=None, help="exit after N frames (after the first window)"
    )
    p.add_argument("--seconds", type=float, default=None, help="exit after S seconds")
    p.add_argument("--json", action="store_true", help="one JSON object per window drawn")


def _add_ingest(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    _redis_arg(p)
    p.add_argument("--seconds", type=float, default=None, help="stop after S seconds")
    p.add_argument(
        "--status-every",
        type=float,
        default=10.0,
        help="seconds between status lines (0: only the last)",
    )
    p.add_argument(
        "--drop-slot", action="store_true", help="drop the slot and exit (no Redis needed)"
    )


_ADDERS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "demo": _add_demo,
    "serve": _add_serve,
    "edge": _add_edge,
    "status": _add_status,
    "stop": _add_stop,
    "write": _add_write,
    "watch": _add_watch,
    "ingest": _add_ingest,
}


# -- subcommands -------------------------------------------------------------------


def _need(extra: str, e: ImportError) -> CommandError:
    return CommandError(
        f"this command needs the '{extra}' extra ({e.name or e}): pip install 'raycluster[{extra}]'"
    )


def _demo(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, shards=3)  # a bad config or env: one line, exit 2
    if args.web:
        try:
            from raycluster.edge.demo import run_web_demo
        except ImportError as e:
            raise _need("edge", e) from e
        rate = WEB_DEMO_RATE if args.rate is None else args.rate
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it stops
            run_web_demo(args.host, args.port, rate, args.rows)
        return 0
    try:
        from raycluster._jobs import demo
    except ImportError as e:
        raise _need("ray", e) from e
    if args.postgres:
        try:
            import psycopg2  # noqa: F401
        except ImportError as e:
            raise _need("postgres", e) from e
    if args.rate is None:
        args.rate = DEMO_RATE
    return demo(args, settings)


def _serve(args: argparse.Namespace) -> int:
    from raycluster.config import check_shard_count

    settings = load_settings(args.config)  # a bad config or env: one line, exit 2
    if args.shards is not None:
        check_shard_count(args.shards, "--shards")  # InvalidArgument: exit 2
    try:
        from raycluster._jobs import serve
    except ImportError as e:
        raise _need("ray", e) from e
    return serve(args, settings)


def _edge(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    url = redis_url_of(args.redis_url, settings)  # none anywhere: a usage error (exit 2)
    settings = settings.model_copy(
        update={"redis": settings.redis.model_copy(update={"redis_url": url})}
    )
    try:
        from raycluster.edge import run_edge
    except ImportError as e:
        raise _need("edge", e) from e
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it stops
        run_edge(settings, host=args.host, port=args.port)
    return 0


def _attach(args: argparse.Namespace) -> Any:
    """The running tier `--name` in `--namespace`, at `--address` (a `Tier`)."""
    try:
        from raycluster.actors import Tier
        from raycluster.actors.attach import attach_ray
    except ImportError as e:
        raise _need("ray", e) from e
    attach_ray(args.address, args.namespace)
    return Tier.connect(args.name, args.namespace)


def _status(args: argparse.Namespace) -> int:
    import json

    tier = _attach(args)
    first = tier.status()
    if args.interval <= 0:
        st, previous, dt = first, None, None
    else:
        t0 = time.monotonic()
        time.sleep(args.interval)
        st = tier.status()
        previous, dt = first, time.monotonic() - t0
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True, default=str))
    else:
        print(format_status(st, previous, dt))
    return 0


def _stop(args: argparse.Namespace) -> int:
    _attach(args).stop()
    print(f"stopped tier {args.name!r}")
    return 0


def _write(args: argparse.Namespace) -> int:
    from raycluster.redis import Writer

    from ._write import WriteStats, check_target, summary, write_lines

    settings = load_settings(args.config)
    url = redis_url_of(args.redis_url, settings)
    check_target(args.tenant, args.entity, settings)
    # Bytes, decoded line by line: an invalid line is named, the lines before it written.
    if args.file == "-":
        stream: BinaryIO = sys.stdin.buffer
    else:
        try:
            stream = open(args.file, "rb")  # noqa: SIM115 (closed below)
        except OSError as e:
            raise CommandError(f"cannot read {args.file}: {e.strerror or e}") from e
    progress = Progress()
    stats = WriteStats()

    async def run() -> None:
        writer = Writer.from_url(url, entities=settings.entities, settings=settings.redis)
        try:
            await write_lines(writer, args.tenant, args.entity, stream, progress, stats)
        except CommandError:
            raise
        except RayclusterError as e:
            where = f" (after {stats.lines} line(s) written, up to line {stats.last_line})"
            raise CommandError(_first_line(e) + where) from e
        finally:
            progress.done()
            await writer.aclose()

    try:
        asyncio.run(run())
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    print(summary(stats, args.tenant, args.entity, progress.elapsed_s()))
    return 0


def _watch(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from raycluster.livequery import LiveQuery

    from ._watch import Screen, WatchLimits, run_watch

    settings = load_settings(args.config)
    url = redis_url_of(args.redis_url, settings)
    spec = next((e for e in settings.entities if e.name == args.entity), None)
    columns = dict(spec.columns) if spec is not None else None
    try:
        where = [parse_where(w, columns) for w in args.where]
        sort = parse_sort(args.sort) if args.sort else []
        query = LiveQuery(entity=args.entity, where=where, sort=sort, limit=args.limit)
    except InvalidQuery as e:
        raise CommandError(str(e), EXIT_USAGE) from e
    except ValidationError as e:
        raise CommandError(validation_line(e), EXIT_USAGE) from e
    if args.frames is not None and args.frames < 0:
        raise CommandError("--frames: must be 0 or more", EXIT_USAGE)
    if args.seconds is not None and not 0 <= args.seconds < float("inf"):
        raise CommandError("--seconds: must be 0 or more (and finite)", EXIT_USAGE)
    mode = "json" if args.json else "tty" if sys.stdout.isatty() else "plain"
    screen = Screen(
        title=f"{args.tenant}/{args.entity} {describe_query(where, sort, args.limit)}",
        columns=[c.strip() for c in args.columns.split(",")] if args.columns else None,
        mode=mode,
        declared=list(spec.columns) if spec is not None else [],
    )
    limits = WatchLimits(frames=args.frames, seconds=args.seconds)
    try:
        asyncio.run(run_watch(url, settings, args.tenant, query, screen, limits))
    except InvalidQuery as e:
        raise CommandError(str(e), EXIT_USAGE) from e
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from ._common import config_path
    from ._ingest import drop, ingest, postgres_of

    settings = load_settings(args.config)
    pg = postgres_of(settings, config_path(args.config))
    if args.seconds is not None and args.seconds < 0:
        raise CommandError("--seconds: must be 0 or more", EXIT_USAGE)
    if args.status_every < 0:
        raise CommandError("--status-every: must be 0 or more", EXIT_USAGE)
    try:
        import psycopg2  # noqa: F401
    except ImportError as e:
        raise _need("postgres", e) from e
    if args.drop_slot:
        return drop(pg)
    url = redis_url_of(args.redis_url, settings)
    return ingest(settings, pg, url, seconds=args.seconds, status_every_s=args.status_every)


_COMMANDS = {
    "demo": _demo,
    "serve": _serve,
    "edge": _edge,
    "status": _status,
    "stop": _stop,
    "write": _write,
    "watch": _watch,
    "ingest": _ingest,
}


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit status (0 ok, 1 runtime error, 2 usage error)."""
    raw = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in raw
    undo_logging = None
    try:
        args = build_parser().parse_args(raw)
        debug = getattr(args, "debug", False)
        if args.command not in ("serve", "demo"):  # those log as the jobs always did
            undo_logging = setup_logging(debug)
        return _COMMANDS[args.command](args)
    except SystemExit as e:  # --help, and the jobs' own exits
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        return _fail("interrupted", 130)
    except CommandError as e:
        if debug:
            traceback.print_exc()
        return _fail(str(e), e.code)
    except (InvalidQuery, InvalidArgument, ConfigError) as e:
        if debug:
            traceback.print_exc()
        return _fail(str(e), EXIT_USAGE)
    except (RayclusterError, OSError) as e:
        if debug:
            traceback.print_exc()
        return _fail(_first_line(e), EXIT_RUNTIME)
    finally:
        if undo_logging is not None:
            undo_logging()
