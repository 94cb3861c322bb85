"""Which backend `[cse] db` picks, and what a database URL shows of itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from cse.app import CSEConfig, database_label, open_storage
from cse.storage.memory import MemoryStorage
from cse.storage.sqlite import SQLiteStorage


def test_db_picks_memory_a_sqlite_file_or_postgresql(tmp_path: Path) -> None:
    from cse.storage.postgres import PostgresStorage

    assert isinstance(open_storage(CSEConfig(db=":memory:")), MemoryStorage)
    assert isinstance(open_storage(CSEConfig(db=str(tmp_path / "a.db"))), SQLiteStorage)
    url = CSEConfig(db="postgresql://gridm2m@db.example/headend")
    assert isinstance(open_storage(url), PostgresStorage)
    assert isinstance(open_storage(CSEConfig(db="postgres://db.example/x")), PostgresStorage)


def test_a_database_url_of_another_kind_is_refused() -> None:
    with pytest.raises(ValidationError, match="mysql:// URL"):
        CSEConfig(db="mysql://u:p@db.example/x")


def test_the_schema_must_be_a_plain_name() -> None:
    assert CSEConfig.model_validate({"postgres": {"schema": "cse_in"}}).postgres.schema_name
    with pytest.raises(ValidationError):
        CSEConfig.model_validate({"postgres": {"schema": 'x"; DROP TABLE resources; --'}})


def test_a_label_of_a_url_hides_its_password() -> None:
    shown = database_label("postgresql://cse:s3cret@db.example:5433/headend?sslmode=require")
    assert "s3cret" not in shown
    assert shown == "postgresql://cse:***@db.example:5433/headend?sslmode=require"
    assert database_label("postgresql://cse@db.example/headend") == (
        "postgresql://cse@db.example/headend"
    )
    assert database_label("/var/lib/gridm2m/id-in.db") == "/var/lib/gridm2m/id-in.db"


def test_the_credential_store_of_a_postgresql_cse_is_a_file_in_the_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRIDM2M_DATA_DIR", str(tmp_path))
    config = CSEConfig(db="postgresql://cse@db.example/headend", cse_id="/id-in")
    assert config.credentials_path() == str(tmp_path / "id-in-credentials.db")


def test_a_gateway_on_sqlite_never_loads_psycopg(tmp_path: Path) -> None:
    # psycopg (and libpq with it) is for the PostgreSQL backend only: a gateway, its CSE and a
    # SQLite storage it opened leave it unimported. A fresh interpreter, as a gateway has.
    script = (
        "import sys, asyncio\n"
        "import gateway.app\n"
        "from cse.app import CSEConfig, open_storage\n"
        "async def main():\n"
        f"    storage = open_storage(CSEConfig(db={str(tmp_path / 'cse.db')!r}))\n"
        "    await storage.open()\n"
        "    await storage.close()\n"
        "asyncio.run(main())\n"
        "print(sorted(name for name in sys.modules if name.startswith('psycopg')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"
