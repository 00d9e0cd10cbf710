"""Dataset commands for the ``errorbook`` CLI: import a folder or zip from the server's disk, create the demo."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import Progress, TextColumn

if TYPE_CHECKING:
    from app.core.running_server import RunningServer
    from app.uploads.service import UploadReport

REPORTED_ITEMS = 20


def register(cli: typer.Typer) -> None:
    """Add this domain's commands to the CLI (import, demo)."""
    cli.command("import")(import_command)
    cli.command("demo")(demo_command)


def import_command(
    path: Annotated[Path, typer.Argument(help="A folder (labels from class folders) or a .zip archive.")],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset name; created when it does not exist.")],
    source: Annotated[str, typer.Option(help="Where these images come from (e.g. web, phone).")] = "default",
    labels_csv: Annotated[
        Path | None, typer.Option("--labels-csv", help="A filename,label[,source] CSV with a header row.")
    ] = None,
    label: Annotated[str | None, typer.Option(help="One label for every file instead of folder names.")] = None,
    unlabeled: Annotated[
        bool, typer.Option("--unlabeled", help="Store the images without labels (the pool), to label later.")
    ] = False,
) -> None:
    """Import a folder or zip from this machine, with the same validation and report as a browser upload."""
    from app.core.db import get_engine, session_scope
    from app.core.errors import NotFound
    from app.core.migrate import upgrade_to_head
    from app.core.settings import get_settings
    from app.datasets import service
    from app.storage.backends import blob_store
    from app.uploads import service as uploads

    if not path.exists():
        raise NotFound(f"{path} does not exist")
    settings = get_settings()
    engine = get_engine(settings)
    upgrade_to_head(engine)
    blobs = blob_store(settings)
    csv_bytes = labels_csv.read_bytes() if labels_csv is not None else None
    uploads.check_upload_fields(label=label, labels_csv=csv_bytes, unlabeled=unlabeled)  # before any row is made
    with session_scope(engine) as session:
        found = service.dataset_by_name(session, name=dataset)
        target = found or service.create_dataset(session, name=dataset, user_id=None)
        dataset_id = target.id
        upload, _ = uploads.start_upload(
            session, dataset_id=dataset_id, user_id=None, source=source, label=label, resume=False, unlabeled=unlabeled
        )
        upload_id = upload.id
    typer.echo(f"{'adding to' if found else 'created'} dataset {dataset!r} (id {dataset_id}); upload {upload_id}")
    with session_scope(engine) as session, Progress() as bar:
        task = bar.add_task("Copying files", total=_file_count(path))
        uploads.stage_local_path(
            session, upload_id=upload_id, path=path, blobs=blobs, progress=lambda n: bar.advance(task, n)
        )
        job_id = uploads.finish_upload(
            session, upload_id=upload_id, user_id=None, blobs=blobs, settings=settings, labels_csv=csv_bytes
        ).id
    _run_and_report(upload_id=upload_id, job_id=job_id)


def demo_command(
    name: Annotated[str, typer.Option(help="Name of the demo dataset.")] = "Demo shapes",
    images: Annotated[int, typer.Option(min=40, max=20_000, help="How many images to generate.")] = 600,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same images and flipped labels).")] = 0,
) -> None:
    """Create a ready demo dataset: shapes and stripes, clean renders plus noisy phone shots (the target),
    with 5% of the labels flipped on purpose, generated on the fly (no download)."""
    from app.core.db import get_engine, session_scope
    from app.core.migrate import upgrade_to_head
    from app.core.settings import get_settings
    from app.datasets import service
    from app.ml.demo import DEMO_CLASSES, OTHER_SOURCE, TARGET_SOURCE, generate_demo_dataset, write_demo_zip
    from app.storage.backends import blob_store
    from app.uploads import service as uploads

    server = _follow_running_server()
    settings = get_settings()
    typer.echo(f"data dir: {settings.resolved_data_dir}")
    engine = get_engine(settings)
    upgrade_to_head(engine)
    blobs = blob_store(settings)
    typer.echo(f"generating {images} images ({', '.join(DEMO_CLASSES)}) ...")
    generated = generate_demo_dataset(n_images=images, seed=seed)
    flipped = sum(1 for image in generated if image.given_label != image.true_label)
    description = (
        f"Synthetic demo ({images} images, seed {seed}): clean '{OTHER_SOURCE}' drawings and noisy "
        f"'{TARGET_SOURCE}' shots of the same classes; {flipped} labels ({flipped / images:.0%}) are flipped on "
        "purpose for label review to find."
    )
    with tempfile.TemporaryDirectory() as scratch:
        archive = Path(scratch) / "demo.zip"
        write_demo_zip(generated, archive)
        with session_scope(engine) as session:
            dataset = service.create_dataset(session, name=name, description=description, user_id=None)
            dataset_id = dataset.id
            upload, _ = uploads.start_upload(session, dataset_id=dataset_id, user_id=None, resume=False)
            upload_id = upload.id
            uploads.stage_local_path(session, upload_id=upload_id, path=archive, blobs=blobs)
            job_id = uploads.finish_upload(
                session, upload_id=upload_id, user_id=None, blobs=blobs, settings=settings, source_folders=True
            ).id
    if not _run_and_report(upload_id=upload_id, job_id=job_id, exit_on_failure=False):
        raise typer.Exit(1)
    with session_scope(engine) as session:
        service.update_dataset(session, dataset_id=dataset_id, changes={"target_source": TARGET_SOURCE})
    typer.echo(f"demo dataset {name!r} is ready (id {dataset_id}, target source {TARGET_SOURCE!r}).")
    if server is not None:
        typer.echo(f"Open {server.url}/datasets/{dataset_id} and make a split next.")
    else:
        typer.echo(
            f"No server is running on this data dir: start `errorbook serve` (in another terminal), then open "
            f"http://{settings.host}:{settings.port}/datasets/{dataset_id} and make a split next."
        )


def _follow_running_server() -> RunningServer | None:
    """The running server whose database the demo goes to. Unless the user chose a data dir or database for
    this command, a running server's own is used, so the demo shows up where the user looks."""
    from app.core import running_server
    from app.core.settings import get_settings

    settings = get_settings()
    server = running_server.running_server(settings)
    if server is None:
        return None
    if server.data_dir == str(settings.resolved_data_dir) and server.database_url == settings.database_url:
        typer.echo(f"a server is running at {server.url} on this data dir")
        return server
    if any(key in os.environ for key in ("ERRORBOOK_DATA_DIR", "ERRORBOOK_DATABASE_URL")):
        typer.echo(
            f"note: the server running at {server.url} uses another data dir ({server.data_dir}); this demo goes "
            "to the one you set, which that server does not show",
            err=True,
        )
        return None
    os.environ["ERRORBOOK_DATA_DIR"] = server.data_dir
    if server.database_url:
        os.environ["ERRORBOOK_DATABASE_URL"] = server.database_url
    get_settings.cache_clear()
    typer.echo(f"a server is running at {server.url}: adding the demo to its database")
    return server


def _file_count(path: Path) -> int:
    return 1 if path.is_file() else sum(1 for file in path.rglob("*") if file.is_file())


def _run_and_report(*, upload_id: int, job_id: int, exit_on_failure: bool = True) -> bool:
    """Run the ingest job here (a worker on this machine may take it instead), with a progress bar."""
    from app.core.db import get_engine, session_scope
    from app.core.settings import get_settings
    from app.jobs import service as jobs
    from app.jobs.states import JobStatus
    from app.jobs.worker import Worker
    from app.uploads import service
    from app.uploads.states import UploadStatus

    settings = get_settings()
    engine = get_engine(settings)
    worker = Worker(settings=settings, engine=engine, queues=["default"])
    thread = threading.Thread(target=worker.run, name="import-worker", daemon=True)
    thread.start()
    try:
        with Progress(*Progress.get_default_columns(), TextColumn("{task.fields[message]}")) as bar:
            task = bar.add_task("Ingesting", total=1.0, message="queued")
            while True:
                with session_scope(engine) as session:
                    job = jobs.get_job(session, job_id=job_id)
                    status, progress, message = job.status, job.progress, job.message
                bar.update(task, completed=progress, message=message)
                if status not in (JobStatus.QUEUED, JobStatus.RUNNING):
                    break
                time.sleep(0.5)
    finally:
        worker.request_stop()
        thread.join(timeout=settings.job_shutdown_grace_seconds + 10)
    with session_scope(engine) as session:
        report = service.upload_report(session, upload_id=upload_id, limit=REPORTED_ITEMS)
        job = jobs.get_job(session, job_id=job_id)
        _print_report(report, job.error)
    succeeded = report.status == UploadStatus.DONE
    if not succeeded and exit_on_failure:
        raise typer.Exit(1)
    return succeeded


def _print_report(report: UploadReport, error: str | None) -> None:
    typer.echo(
        f"upload {report.upload.id}: {report.status}; {report.files:,} files: {report.accepted:,} added, "
        f"{report.duplicates:,} duplicates, {report.conflicts:,} conflicts, {report.rejected:,} rejected"
    )
    if error:
        typer.echo(f"error: {error}", err=True)
    for title, items in (("rejected", report.rejected_items), ("conflict", report.conflict_items)):
        for item in items[:REPORTED_ITEMS]:
            typer.echo(f"  {title}: {item.name}: {item.reason}")
    for problem in report.csv_problems[:REPORTED_ITEMS]:
        row = f"row {problem['row']}: " if problem.get("row") else ""
        typer.echo(f"  labels CSV {row}{problem['reason']}")
