"""Postgres tier: a private PostgreSQL and a private Redis for the session.

Each test gets its own database (created from scratch, dropped after) and its
own slot name, so tests never see each other's tables, publications or slots.
Nothing here connects to a server it did not start (the machine's Postgres on
5432 included; Redis servers come from `support.private_redis`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import psycopg2
import pytest
import redis
from support import private_redis

from raycluster.postgres.local import LocalPostgres
from raycluster.redis import LocalRedis

_SYSTEM_PG_PORT = 5432
_ids = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[LocalPostgres]:
    """One private PostgreSQL (wal_level=logical) for the whole tier."""
    with LocalPostgres() as srv:
        assert srv.port != _SYSTEM_PG_PORT
        yield srv


@pytest.fixture(scope="session")
def pg_redis() -> Iterator[LocalRedis]:
    """A private Redis of this folder's own: its tests flush it (the shared session
    `redis_server` must not be flushed)."""
    with private_redis() as srv:
        yield srv


@pytest.fixture
def redis_url(pg_redis: LocalRedis) -> str:
    """This folder's Redis, emptied for this test."""
    client = redis.Redis.from_url(pg_redis.url)
    try:
        client.flushall()
    finally:
        client.close()
    return pg_redis.url


@pytest.fixture
def slot() -> str:
    """A slot name of this test alone."""
    return f"t{next(_ids)}_slot"


@pytest.fixture
def db_dsn(pg_server: LocalPostgres, slot: str) -> Iterator[str]:
    """A fresh database of this test (dropped after, with the test's slot)."""
    name = f"db_{slot}"
    admin = psycopg2.connect(pg_server.dsn())
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
        yield pg_server.dsn(name)
    finally:
        drop_database(pg_server, name, slot)
        admin.close()


def drop_database(pg: LocalPostgres, name: str, slot: str) -> None:
    """Drop a test's slot (ending whoever holds it) and its database."""
    if pg.pid is None:
        return
    admin = psycopg2.connect(pg.dsn())
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                "WHERE slot_name = %s AND active_pid IS NOT NULL",
                (slot,),
            )
            for _ in range(100):
                cur.execute(
                    "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s AND active",
                    (slot,),
                )
                if cur.fetchone()[0] == 0:
                    break
                import time

                time.sleep(0.05)
            cur.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s",
                (slot,),
            )
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        admin.close()
