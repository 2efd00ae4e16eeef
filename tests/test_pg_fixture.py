"""The throwaway PostgreSQL cluster (tests/pg.py) and its fixtures `pg_cluster` and `pg_url`."""

from __future__ import annotations

import socket
import uuid
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.pg import PostgresCluster

SEEN_DATABASES: set[str] = set()


async def fresh_database_is_empty(pg_url: str) -> str:
    """Check the test's database is its own and empty, then leave a table in it."""
    conn = await asyncpg.connect(pg_url)
    try:
        name = await conn.fetchval("SELECT current_database()")
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        assert tables == 0
        await conn.execute("CREATE TABLE leftover (id int)")
        await conn.execute("INSERT INTO leftover VALUES (1)")
    finally:
        await conn.close()
    assert name == urlsplit(pg_url).path.lstrip("/")
    assert name not in SEEN_DATABASES
    SEEN_DATABASES.add(name)
    return str(name)


async def test_server_is_postgresql_15(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        version = await conn.fetchval("SELECT version()")
    finally:
        await conn.close()
    assert "PostgreSQL 15" in version


@pytest.mark.parametrize("round_", [1, 2])
async def test_each_test_gets_an_empty_database_of_its_own(pg_url: str, round_: int) -> None:
    await fresh_database_is_empty(pg_url)


async def test_databases_of_finished_tests_are_dropped(
    pg_cluster: PostgresCluster, pg_url: str
) -> None:
    names = pg_cluster.psql("SELECT datname FROM pg_database WHERE datname LIKE 'jambot_test_%'")
    assert names.split() == [urlsplit(pg_url).path.lstrip("/")]


async def test_listens_on_127_0_0_1_only(pg_cluster: PostgresCluster, pg_url: str) -> None:
    assert urlsplit(pg_url).hostname == "127.0.0.1"
    conn = await asyncpg.connect(pg_url)
    try:
        listen = await conn.fetchval("SHOW listen_addresses")
        sockets = await conn.fetchval("SHOW unix_socket_directories")
        server = await conn.fetchval("SELECT host(inet_server_addr())")
    finally:
        await conn.close()
    assert (listen, sockets, server) == ("127.0.0.1", "", "127.0.0.1")

    # another loopback address reaches this machine too, but nothing listens there
    assert pg_cluster.port is not None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        with pytest.raises(ConnectionRefusedError):
            probe.connect(("127.0.0.2", pg_cluster.port))


async def test_dropping_closes_connections_still_open(pg_cluster: PostgresCluster) -> None:
    name = f"jambot_test_{uuid.uuid4().hex}"
    conn = await asyncpg.connect(pg_cluster.create_database(name))
    try:
        pg_cluster.drop_database(name)
        with pytest.raises(
            (asyncpg.exceptions.AdminShutdownError, asyncpg.ConnectionDoesNotExistError)
        ):
            await conn.fetchval("SELECT 1")
    finally:
        conn.terminate()
        pg_cluster.drop_database(name)
    assert name not in pg_cluster.psql("SELECT datname FROM pg_database").split()
