"""`errorbook storage gc`: delete the blobs no row refers to."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from app.core.settings import Settings
    from app.core.storage import BlobStore
    from app.storage.migrate import ArtefactMigration


def usable_store_or_exit(settings: Settings) -> BlobStore:
    """The configured store, or exit 2 with the reason it cannot be used (never the secret)."""
    from app.core.errors import DomainError
    from app.storage.backends import usable_blob_store

    try:
        return usable_blob_store(settings)
    except DomainError as error:
        typer.echo(f"errorbook: {error.message}", err=True)
        raise typer.Exit(2) from error


def register(cli: typer.Typer) -> None:
    storage_cli = typer.Typer(help="Blob storage upkeep.", no_args_is_help=True)
    cli.add_typer(storage_cli, name="storage")

    @storage_cli.command("init")
    def init() -> None:
        """Prepare the configured store: with ERRORBOOK_STORAGE=s3, create the bucket if it does not exist and
        check it can be used (a deployment runs this once before its web and worker processes)."""
        from app.core.errors import DomainError
        from app.core.settings import get_settings
        from app.storage.backends import blob_store
        from app.storage.s3 import S3BlobStore

        store = blob_store(get_settings())
        if not isinstance(store, S3BlobStore):
            typer.echo("local blob storage: nothing to prepare")
            return
        try:
            created = store.ensure_bucket()
            store.check_reachable()
        except DomainError as error:
            typer.echo(f"errorbook: {error.message}", err=True)
            raise typer.Exit(2) from error
        typer.echo(f"{'created' if created else 'found'} {store.location.describe()}")

    @storage_cli.command("verify")
    def verify(
        digests: Annotated[bool, typer.Option("--digests", help="Also re-hash every object (reads them all).")] = False,
    ) -> None:
        """List every image whose blob or thumbnail is missing from the store (or, with --digests, holds other
        bytes), and every finished run or embedding set whose files are missing; exits 1 when any is."""
        from app.core.db import get_engine, session_factory
        from app.core.settings import get_settings
        from app.storage.verify import VerifyResult, verify_blobs

        settings = get_settings()
        blobs = usable_store_or_exit(settings)
        for item in verify_blobs(sessions=session_factory(get_engine(settings)), blobs=blobs, check_digests=digests):
            if isinstance(item, VerifyResult):
                files = f"{item.artefacts:,} run and embedding files"
                checked = f"{item.images:,} images, {item.objects:,} objects, {files}"
                typer.echo(f"{checked} checked; {len(item.problems):,} problems")
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
        from app.storage.migrate import MigrateResult, migrate_blobs

        if to != "s3":
            raise typer.BadParameter("only --to s3 is supported", param_hint="--to")
        settings = get_settings()
        target = usable_store_or_exit(settings.model_copy(update={"storage": "s3"}))
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
        artefacts = _migrate_artefacts(settings, target)
        if result.corrupt or artefacts.mismatched:
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
        if result.artefacts_deleted:
            typer.echo(f"{verb} {result.artefacts_deleted:,} files of unfinished runs and ended jobs' checkpoints")


def _migrate_artefacts(settings: Settings, target: BlobStore) -> ArtefactMigration:
    """Run model files, resume checkpoints and embedding sets: copied under their keys, each ETag checked."""
    from app.core.artefacts import LocalArtefacts
    from app.core.db import get_engine, session_factory
    from app.core.migrate import upgrade_to_head
    from app.storage import repository
    from app.storage.migrate import artefact_sources, migrate_artefacts

    engine = get_engine(settings)
    upgrade_to_head(engine)
    with session_factory(engine)() as session:
        legacy = [(run_id, path) for run_id, path, _ in repository.runs_with_models(session)]
    sources = artefact_sources(LocalArtefacts(settings.resolved_data_dir), legacy)
    result = migrate_artefacts(sources=sources, target=target.artefacts)
    for key in result.mismatched:
        typer.echo(f"not copied: the stored copy of {key} does not match the local file")
    typer.echo(
        f"copied {result.copied:,} run and embedding files ({result.copied_bytes:,} bytes); "
        f"{result.already_there:,} were there"
    )
    return result
