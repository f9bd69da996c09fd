"""Regenerate tests/unit/data/pgoutput_capture.json: real pgoutput messages from a private server.

Run: `PYTHONPATH=$PWD python3 tests/postgres/capture_pgoutput.py`. The unit tests of the
decoder (tests/unit/test_pgoutput.py) read the file, so they need no server.
"""

from __future__ import annotations

import json
import os
import random
import select
import string
import time
from pathlib import Path

import psycopg2
import psycopg2.extras

from raycluster.postgres.local import LocalPostgres

OUT = Path(__file__).parent.parent / "unit" / "data" / "pgoutput_capture.json"

SETUP = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE items (id bigint PRIMARY KEY, tenant text NOT NULL, name text, n int,
                    price numeric(10,2), at timestamptz, big text, m mood);
ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE full_items (id int PRIMARY KEY, tenant text, v text);
ALTER TABLE full_items REPLICA IDENTITY FULL;
CREATE PUBLICATION cap FOR TABLE items, full_items;
"""

# Each step: (label, SQL run in one transaction).
STEPS = [
    (
        "insert",
        "INSERT INTO items VALUES (1, 'acme', 'pump é', 7, 12.50, "
        "'2024-05-01 12:00:00.5+02', NULL, 'ok')",
    ),
    ("insert_big", "INSERT INTO items VALUES (2, 'acme', 'tank', NULL, NULL, NULL, '{big}', NULL)"),
    ("update_toast_unchanged", "UPDATE items SET n = 3 WHERE id = 2"),
    ("update_key", "UPDATE items SET id = 20, tenant = 'rival' WHERE id = 2"),
    ("update_plain", "UPDATE items SET name = NULL, m = 'happy' WHERE id = 1"),
    ("delete", "DELETE FROM items WHERE id = 1"),
    ("full_insert", "INSERT INTO full_items VALUES (1, 'acme', 'a'), (2, 'rival', 'b')"),
    ("full_update", "UPDATE full_items SET v = 'c' WHERE id = 1"),
    ("full_delete", "DELETE FROM full_items WHERE id = 2"),
    ("truncate", "TRUNCATE items, full_items"),
    (
        "origin",
        "SELECT pg_replication_origin_session_setup('elsewhere'); "
        "INSERT INTO full_items VALUES (9, 'acme', 'from elsewhere')",
    ),
]


def main() -> None:
    rng = random.Random(7)
    big = "".join(rng.choice(string.ascii_letters) for _ in range(5000))
    with LocalPostgres() as pg:
        conn = psycopg2.connect(pg.dsn())
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute(SETUP)
        cur.execute("SELECT pg_replication_origin_create('elsewhere')")
        rconn = psycopg2.connect(
            pg.dsn(), connection_factory=psycopg2.extras.LogicalReplicationConnection
        )
        rcur = rconn.cursor()
        rcur.create_replication_slot("cap", output_plugin="pgoutput")
        for _, sql in STEPS:
            cur.execute(sql.replace("{big}", big))
        rcur.start_replication(
            slot_name="cap",
            decode=False,
            options={"proto_version": "1", "publication_names": "cap"},
        )
        messages: list[dict[str, object]] = []
        deadline = time.monotonic() + 20
        commits = 0
        while commits < len(STEPS) and time.monotonic() < deadline:
            msg = rcur.read_message()
            if msg is None:
                select.select([rcur], [], [], 0.5)
                continue
            payload = bytes(msg.payload)
            messages.append({"data_start": msg.data_start, "hex": payload.hex()})
            if payload[:1] == b"C":
                commits += 1
        rconn.close()
        conn.close()
    if commits < len(STEPS):
        raise SystemExit(f"captured only {commits} of {len(STEPS)} transactions")
    OUT.write_text(
        json.dumps({"steps": [s[0] for s in STEPS], "big": big, "messages": messages}, indent=1)
        + os.linesep
    )
    print(f"wrote {len(messages)} messages to {OUT}")


if __name__ == "__main__":
    main()
