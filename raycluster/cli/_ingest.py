"""`raycluster ingest`: the Postgres ingester in this process, and `--drop-slot`."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import TYPE_CHECKING, TextIO

from raycluster._tasks import TaskSet, cancel_and_wait, logged
from raycluster._urls import mask_url
from raycluster.postgres import (
    PostgresSettings,
    SlotBusy,
    SourceConfigError,
    describe_ingester,
    masked_dsn,
)

from ._common import EXIT_USAGE, CommandError

if TYPE_CHECKING:
    from raycluster.config import TierSettings

__all__ = ("drop", "ingest", "postgres_of")

STOP_TIMEOUT_S = 15.0  # a stop (Ctrl-C, SIGTERM, --seconds) waits this long for the ingester


def postgres_of(settings: TierSettings, path: str | None) -> PostgresSettings:
    """The config's `postgres:` section; a usage error when it has none."""
    if settings.postgres is None:
        where = f"config {path}" if path else "the settings (no config file found)"
        raise CommandError(
            f"{where} has no postgres: section (docs/postgres.md#the-config)", EXIT_USAGE
        )
    return settings.postgres


def drop(pg: PostgresSettings, out: TextIO = sys.stdout) -> int:
    """Drop the slot; 0 whether it existed or not (the message says which)."""
    from raycluster.postgres import drop_slot

    try:
        existed = drop_slot(pg)
    except SlotBusy as e:
        raise CommandError(f"{e}: stop that ingester first, then drop the slot") from e
    if existed:
        print(f"dropped slot {pg.slot} (Postgres keeps no WAL for it now; the next ingester "
              "copies the tables again)", file=out)  # fmt: skip
    else:
        print(f"no slot {pg.slot} at {masked_dsn(pg.dsn)}: nothing to drop", file=out)
    return 0


def ingest(
    settings: TierSettings,
    pg: PostgresSettings,
    redis_url: str,
    *,
    seconds: float | None,
    status_every_s: float,
    out: TextIO = sys.stdout,
) -> int:
    """Run the ingester until Ctrl-C, SIGTERM or `seconds`; 0 when stopped so.

    Prints a status line every `status_every_s` (0: only the first and the
    last). An error the ingester cannot retry past is a `CommandError`: exit
    2 for the config (`SourceConfigError`), 1 for the rest.
    """
    from raycluster.postgres import Ingester

    ingester = Ingester(pg, redis_url, redis_settings=settings.redis, entities=settings.entities)
    print(f"ingesting publication {pg.publication} through slot {pg.slot}: "
          f"{masked_dsn(pg.dsn)} -> {mask_url(redis_url)}", file=out, flush=True)  # fmt: skip

    async def main() -> None:
        loop = asyncio.get_running_loop()
        tasks = TaskSet("ingest")  # the status lines, the stop

        stopping = False

        def stop() -> None:
            nonlocal stopping
            if not stopping and not tasks.closed:  # (a second signal changes nothing)
                stopping = True
                tasks.spawn(ingester.aclose(), "ingest-stop")  # run() then returns

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        if seconds is not None:
            loop.call_later(seconds, stop)
        if status_every_s:

            async def line() -> None:
                print(describe_ingester(ingester.status()), file=out, flush=True)

            tasks.every(status_every_s, line, "status", delay_s=status_every_s)
        # Until stop() (its aclose() ends run() normally) or an error it cannot retry past.
        run = asyncio.create_task(ingester.run(), name=f"ingest-{pg.slot}")
        try:
            await asyncio.wait({run})
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await tasks.aclose(STOP_TIMEOUT_S)
            if not run.done():  # (this command itself was cancelled)
                await cancel_and_wait([run], STOP_TIMEOUT_S)
            with logged(f"ingest {pg.slot}: stopping"):
                await asyncio.wait_for(ingester.aclose(), STOP_TIMEOUT_S)
        if not run.cancelled():  # (cancelled: stopped while it was ending anyway)
            run.result()  # the error that stopped it, if any

    # The error that stops the ingester is this command's one line: not logged too.
    quiet = _BelowError()
    logging.getLogger("raycluster.postgres.ingester").addFilter(quiet)
    try:
        asyncio.run(main())
    except SourceConfigError as e:
        raise CommandError(f"config: {e}", EXIT_USAGE) from e
    finally:
        logging.getLogger("raycluster.postgres.ingester").removeFilter(quiet)
    print(describe_ingester(ingester.status()), file=out, flush=True)
    return 0


class _BelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR
