"""`errorbook storage gc`: delete the blobs no row refers to."""

from __future__ import annotations

from typing import Annotated

import typer


def register(cli: typer.Typer) -> None:
    storage_cli = typer.Typer(help="Blob storage upkeep.", no_args_is_help=True)
    cli.add_typer(storage_cli, name="storage")

    @storage_cli.command("verify")
    def verify(
        digests: Annotated[bool, typer.Option("--digests", help="Also re-hash every object (reads them all).")] = False,
    ) -> None:
        """List every image whose blob or thumbnail is missing from the store (or, with --digests, holds other
        bytes); exits 1 when any is."""
        from app.core.db import get_engine, session_factory
        from app.core.settings import get_settings
        from app.storage.backends import blob_store
        from app.storage.verify import VerifyResult, verify_blobs

        settings = get_settings()
        for item in verify_blobs(
            sessions=session_factory(get_engine(settings)), blobs=blob_store(settings), check_digests=digests
        ):
            if isinstance(item, VerifyResult):
                typer.echo(f"{item.images:,} images, {item.objects:,} objects checked; {len(item.problems):,} problems")
                if item.problems:
                    raise typer.Exit(1)
            else:
                typer.echo(item.describe())

    @storage_cli.command("migrate")
    def migrate(
        to: Annotated[str, typer.Option("--to", help="The backend to copy into: s3 (settings ERRORBOOK_S3_*).")],
    ) -> None:
        """Copy this install's local blobs into the object store, verifying every digest; run again to resume.
        Then set ERRORBOOK_STORAGE=s3 on every host."""
        from app.core.settings import get_settings
        from app.core.storage import LocalBlobStore
        from app.storage.backends import blob_store
        from app.storage.migrate import MigrateResult, migrate_blobs

        if to != "s3":
            raise typer.BadParameter("only --to s3 is supported", param_hint="--to")
        settings = get_settings()
        target = blob_store(settings.model_copy(update={"storage": "s3"}))
        check = getattr(target, "check_reachable", None)
        if check is not None:
            check()
        result = MigrateResult()
        for seen, result in migrate_blobs(source=LocalBlobStore(settings.blob_dir), target=target):
            if seen % 1000 == 0:
                typer.echo(f"{seen:,} blobs looked at, {result.copied:,} copied")
        for sha in result.corrupt:
            typer.echo(f"not copied: local blob {sha} does not hold the bytes its name says")
        typer.echo(
            f"copied {result.copied:,} blobs ({result.copied_bytes:,} bytes); {result.already_there:,} were there"
            + (f"; {len(result.corrupt):,} corrupt" if result.corrupt else "")
        )
        if result.corrupt:
            raise typer.Exit(1)

    @storage_cli.command("gc")
    def gc(
        grace_hours: Annotated[
            float | None,
            typer.Option(help="Spare blobs younger than this (default ERRORBOOK_BLOB_GC_GRACE_HOURS)."),
        ] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what would go.")] = False,
    ) -> None:
        """Delete blobs that no image, thumbnail, labels CSV or unfinished upload refers to (first discarding
        uploads failed or cancelled longer ago than ERRORBOOK_UPLOAD_RETRY_DAYS)."""
        from app.core.db import get_engine, session_factory
        from app.core.migrate import upgrade_to_head
        from app.core.settings import get_settings
        from app.storage.backends import blob_store
        from app.storage.service import collect_garbage, release_abandoned_uploads

        settings = get_settings()
        engine = get_engine(settings)
        upgrade_to_head(engine)
        grace = settings.blob_gc_grace_hours if grace_hours is None else grace_hours
        blobs = blob_store(settings)
        if not dry_run:
            released = release_abandoned_uploads(sessions=session_factory(engine), blobs=blobs, settings=settings)
            if released:
                days = settings.upload_retry_days
                typer.echo(f"released {released:,} blobs of uploads failed or cancelled over {days:g} days ago")
        result = collect_garbage(
            sessions=session_factory(engine),
            blobs=blobs,
            grace_seconds=grace * 3600,
            dry_run=dry_run,
        )
        verb = "would delete" if dry_run else "deleted"
        typer.echo(
            f"{result.blobs:,} blobs looked at; {verb} {result.deleted:,} unreferenced "
            f"({result.deleted_bytes:,} bytes); kept {result.kept_young:,} unreferenced ones younger than {grace:g} h"
        )
