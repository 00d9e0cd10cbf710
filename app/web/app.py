"""The application factory: settings, database, routers, static files, error handling, security."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp

from app.auth.router import router as auth_router
from app.core.db import get_engine, session_factory
from app.core.settings import PROJECT_ROOT, Settings, get_settings
from app.datasets.router import router as datasets_router
from app.embeddings.router import router as embeddings_router
from app.error_analysis.router import router as error_analysis_router
from app.health.router import router as health_router
from app.jobs.router import router as jobs_router
from app.labels.router import router as labels_router
from app.pool.router import router as pool_router
from app.review.router import router as review_router
from app.splits.input_store import SplitInputStore
from app.splits.router import router as splits_router
from app.storage.backends import blob_store
from app.training.router import router as training_router
from app.uploads.router import router as uploads_router
from app.web import errors, openapi
from app.web.deps import DB, Viewer
from app.web.gate import BodyLimits, RequestGate
from app.web.middleware import BodySizeLimit, SecurityHeaders
from app.web.templating import render


class CachedStatic(StaticFiles):
    """Vendored assets change only with a release: let browsers keep them for a day."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.setdefault("cache-control", "public, max-age=86400")
        return response


class Errorbook(FastAPI):
    def build_middleware_stack(self) -> ASGIApp:
        # Outside Starlette's server-error middleware, so a 500 carries the security headers too.
        return SecurityHeaders(super().build_middleware_stack())


def create_app(settings: Settings | None = None, *, session_maker: sessionmaker[Session] | None = None) -> FastAPI:
    settings = settings or get_settings()
    # FastAPI's own docs pages load scripts from a CDN and run inline script, which our CSP (rightly) blocks and
    # an offline install cannot reach: /api/docs is a plain page of ours instead.
    app = Errorbook(title="Errorbook", version="0.1.0", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.settings = settings
    app.state.session_maker = session_maker or session_factory(get_engine(settings))
    app.state.secret_key = settings.secret_key()
    app.state.blobs = blob_store(settings)
    app.state.split_inputs = SplitInputStore(settings.split_input_dir)

    errors.install(app)
    app.include_router(auth_router)
    routers = (
        jobs_router,
        datasets_router,
        uploads_router,
        labels_router,
        splits_router,
        training_router,
        error_analysis_router,
        review_router,
        embeddings_router,
        pool_router,
        health_router,
    )
    for router in routers:
        app.include_router(router)
    app.mount("/static", CachedStatic(directory=PROJECT_ROOT / "static"), name="static")

    @app.get("/healthz", include_in_schema=False)
    def healthz(db: DB) -> Response:
        db.execute(text("SELECT 1"))
        return JSONResponse({"status": "ok"})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:  # browsers ask for it before reading the page's <link rel="icon">
        return FileResponse(PROJECT_ROOT / "static" / "favicon.svg", media_type="image/svg+xml")

    @app.get("/", include_in_schema=False)
    def home(request: Request, db: DB, user: Viewer) -> Response:
        return render(request, "home.html", {})

    @app.get("/api/docs", include_in_schema=False)
    def api_docs(request: Request) -> Response:  # public, like the schema it shows
        schema = app.openapi()
        return render(
            request,
            "api_docs.html",
            {
                "operations": openapi.api_operations(schema),
                "openapi_version": schema.get("openapi", ""),
                "schema_url": app.openapi_url,
            },
        )

    app.openapi = lambda: openapi.complete(app)  # type: ignore[method-assign]
    limits = BodyLimits(
        file_bytes=settings.max_request_bytes,
        json_bytes=min(settings.max_json_bytes, settings.max_request_bytes),
        form_bytes=min(settings.max_form_bytes, settings.max_request_bytes),
    )
    app.add_middleware(BodySizeLimit, limits=limits)
    app.add_middleware(RequestGate)  # outermost of the two: credentials and content type before any size
    return app
