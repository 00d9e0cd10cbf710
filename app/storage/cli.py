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
        from app.core.storage import LocalBlobStore
        from app.storage.service import collect_garbage, release_abandoned_uploads

        settings = get_settings()
        engine = get_engine(settings)
        upgrade_to_head(engine)
        grace = settings.blob_gc_grace_hours if grace_hours is None else grace_hours
        blobs = LocalBlobStore(settings.blob_dir)
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
