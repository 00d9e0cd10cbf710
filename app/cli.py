"""The ``errorbook`` command: serve, worker, db, users, token (and, per domain, import, demo and storage gc)."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Annotated

import typer
from sqlalchemy import Engine

from app.core.db import get_engine, session_scope
from app.core.migrate import upgrade_to_head
from app.core.settings import Settings, get_settings

cli = typer.Typer(
    help="Errorbook: structure an image-classification project.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_cli = typer.Typer(help="Database maintenance.", no_args_is_help=True)
users_cli = typer.Typer(help="Manage users.", no_args_is_help=True)
token_cli = typer.Typer(help="Manage API tokens.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
cli.add_typer(users_cli, name="users")
cli.add_typer(token_cli, name="token")


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Bring the database schema to the newest version."""
    upgrade_to_head(get_engine(get_settings()))
    typer.echo("database is at the newest schema")


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    workers: Annotated[int, typer.Option(help="Embedded job workers to run in this process.")] = 1,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="Run no jobs here (use `errorbook worker`).")] = False,
) -> None:
    """Start the web UI and API (with an embedded job worker unless --no-worker)."""
    import uvicorn

    from app.auth.service import ensure_initial_admin
    from app.core import running_server
    from app.jobs.worker import Worker
    from app.web.app import create_app

    settings, engine = _start_process()
    with session_scope(engine) as session:
        created = ensure_initial_admin(session)
    host = host or settings.host
    port = port or settings.port
    typer.echo(
        f"data dir: {settings.resolved_data_dir}\ndatabase: {running_server.describe_database(settings)}\n"
        f"This terminal now runs the server (Ctrl+C stops it); run other commands, e.g. `errorbook demo`, in a "
        f"second terminal."
    )
    if created:
        name, password = created
        typer.echo(
            f"\nNo users yet, so an admin was created. Log in at http://{host}:{port}/login\n"
            f"    user: {name}\n    password: {password}\n(shown once; change it or add users on the Users page)\n"
        )
    embedded = [] if no_worker else [Worker(settings=settings, engine=engine) for _ in range(max(1, workers))]
    threads = [threading.Thread(target=w.run, name=f"worker-{i}", daemon=True) for i, w in enumerate(embedded)]
    for thread in threads:
        thread.start()
    app = create_app(settings)
    running_server.announce(settings, url=settings.base_url or f"http://{host}:{port}")
    # Withdrawn in the app's shutdown: after a SIGTERM uvicorn re-raises the signal, so no `finally` here runs.
    running_server.withdraw_on_shutdown(app, settings)
    try:
        proxy_headers, forwarded_allow_ips = settings.proxy_options()
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level="info",
            timeout_graceful_shutdown=10,
            proxy_headers=proxy_headers,
            forwarded_allow_ips=forwarded_allow_ips,
        )
    finally:
        running_server.withdraw(settings)
        for worker in embedded:
            worker.request_stop()
        for thread in threads:
            thread.join(timeout=settings.job_shutdown_grace_seconds + 10)


def _start_process() -> tuple[Settings, Engine]:
    """What a long-running process (server or worker) does first: logging, settings, a usable store, migrations."""
    _logging()
    settings = get_settings()
    _refuse_unusable_storage(settings)
    engine = get_engine(settings)
    upgrade_to_head(engine)
    return settings, engine


def _refuse_unusable_storage(settings: Settings) -> None:
    """A process that cannot reach its object store stops at once with the reason, not on its first image."""
    from app.storage.cli import usable_store_or_exit

    usable_store_or_exit(settings)


@cli.command()
def worker(
    queue: Annotated[
        list[str] | None, typer.Option("--queue", help="Only take jobs from this queue (repeatable).")
    ] = None,
) -> None:
    """Run a job worker (any number of them may share one Postgres)."""
    from app.jobs.worker import Worker

    settings, engine = _start_process()
    job_worker = Worker(settings=settings, engine=engine, queues=queue or None)

    def _graceful(signum: int, _frame: object) -> None:
        logging.getLogger("errorbook.worker").info("signal %s: finishing the job in flight, then stopping", signum)
        job_worker.request_stop()

    signal.signal(signal.SIGTERM, _graceful)
    signal.signal(signal.SIGINT, _graceful)
    job_worker.run()


@users_cli.command("add")
def users_add(
    name: str,
    role: Annotated[str, typer.Option(help="admin, reviewer or viewer.")] = "viewer",
    password: Annotated[str | None, typer.Option(help="Password for the web login (optional).")] = None,
) -> None:
    """Add a user; prints a new API token for it as the last line."""
    from app.auth import service

    engine = get_engine(get_settings())
    upgrade_to_head(engine)
    with session_scope(engine) as session:
        user = service.create_user(session, name=name, role=role, password=password)
        _, secret = service.create_token(session, user=user, name="cli")
    typer.echo(f"added {role} {name!r}; API token:")
    typer.echo(secret)


@token_cli.command("create")
def token_create(name: str) -> None:
    """Create an API token for user NAME; prints it as the last line."""
    from app.auth import service

    engine = get_engine(get_settings())
    upgrade_to_head(engine)
    with session_scope(engine) as session:
        user = service.get_user_by_name(session, name=name)
        _, secret = service.create_token(session, user=user, name="cli")
    typer.echo(f"new API token for {name!r}:")
    typer.echo(secret)


# Each domain adds its own commands (import, demo, ...) from its ``cli`` module.
DOMAIN_COMMANDS = ("app.datasets.cli", "app.storage.cli")


def _register_domain_commands() -> None:
    import importlib

    for module in DOMAIN_COMMANDS:
        importlib.import_module(module).register(cli)


_register_domain_commands()


def main() -> None:
    from app.core.errors import DomainError

    try:
        cli()
    except DomainError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main()
