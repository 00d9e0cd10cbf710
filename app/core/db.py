"""Engine and session factory; the one commit point for requests lives in ``session_scope``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from app.core.settings import Settings

_engines: dict[str, Engine] = {}
READ_MOSTLY_OPTION = "errorbook_read_mostly"
_BEGAN_DEFERRED = "errorbook_began_deferred"  # connection.info: total_changes at a deferred BEGIN, else None
_engines_lock = threading.Lock()


def _configure_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling defers BEGIN and breaks SAVEPOINT; take it over
    # (SQLAlchemy's documented recipe) and start every transaction with BEGIN IMMEDIATE so a
    # read that later writes cannot deadlock against another writer: busy_timeout then waits.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Reads (GET requests) begin deferred so they never queue behind the single write lock.
        deferred = connection.get_execution_options().get(READ_MOSTLY_OPTION)
        connection.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")
        connection.info[_BEGAN_DEFERRED] = _total_changes(connection) if deferred else None


def _total_changes(connection: Connection) -> int:
    """Rows the SQLite connection has changed since it opened: whether a transaction has written yet."""
    return int(getattr(connection.connection.dbapi_connection, "total_changes", 0))


def prepare_to_write(session: Session) -> None:
    """Call before the first write of a request that began as a read (a GET: on SQLite a deferred transaction).

    SQLite cannot turn such a read into a write while another connection writes or has written since the read
    began: it answers "database is locked" at once, without waiting for busy_timeout. So a transaction that has
    only read is rolled back and begun again with BEGIN IMMEDIATE, which waits its turn; callers re-read whatever
    their write depends on. A no-op on Postgres and in transactions that began as writes.
    """
    connection = session.connection()
    began = connection.info.get(_BEGAN_DEFERRED)
    if connection.dialect.name != "sqlite" or began is None:
        return
    if _total_changes(connection) != began:
        return  # it has written already, so it holds the write lock
    if session.new or session.dirty or session.deleted:
        raise RuntimeError("prepare_to_write() must come before the transaction's first change")
    session.rollback()
    session.connection(execution_options={READ_MOSTLY_OPTION: False})


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def get_engine(settings: Settings) -> Engine:
    url = settings.sqlalchemy_url
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            if url.startswith("sqlite"):
                settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
            engine = make_engine(url)
            _engines[url] = engine
        return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=True)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A unit of work on the caller's engine: commit on success, roll back on any error. Services only flush."""
    with committing(session_factory(engine)()) as session:
        yield session


@contextmanager
def committing(session: Session, *, before_commit: Callable[[Session], None] | None = None) -> Iterator[Session]:
    """Yield ``session``; commit when the block ends normally (after ``before_commit``, which may refuse by
    raising), roll back when it raises; close it either way. The one shape of every commit point."""
    try:
        yield session
        if before_commit is not None:
            before_commit(session)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
