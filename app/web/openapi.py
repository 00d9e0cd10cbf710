"""The OpenAPI description, completed: the errors every operation can answer (one handler renders them all, so
they have one shape), readable operation names, and rows for the /api/docs page."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "detail": {}},
    "description": "`error` is a code (not_found, conflict, …), `detail` says why; some errors add fields.",
}
ERRORS = {
    "401": "Not logged in: no session cookie or API token, or an unknown one",
    "403": "Logged in, but the role is too low (or a form's CSRF token is wrong)",
    "404": "Something the path names does not exist",
    "409": "Conflicts with the current state (a stale label_version, a name taken, an action already done)",
    "413": "The request body is over the size limit",
    "422": "The input is invalid; `detail` says which field and why",
}
PUBLIC: set[str] = set()  # every API operation needs a token or a session
WRITES = {"post", "put", "patch", "delete"}


def _errors_for(path: str, method: str, operation: dict[str, Any]) -> list[str]:
    codes = [] if path in PUBLIC else ["401", "403"]
    if "{" in path:
        codes.append("404")
    if method in WRITES:
        codes.append("409")
    if "requestBody" in operation:
        codes.append("413")
    if "requestBody" in operation or operation.get("parameters"):
        codes.append("422")
    return codes


VERBS = {
    "add", "cancel", "claim", "create", "decide", "delete", "demo", "exclude", "merge", "open", "retry", "revert",
    "revoke", "start", "stop", "undo", "update", "upload", "set", "change", "rename", "resolve", "release",
}  # fmt: skip


# Where the function name does not read well as an operation name.
NAMES = {
    "GET /api/me": "Who am I",
    "POST /api/users": "Create a user",
    "POST /api/tokens": "Create an API token",
    "DELETE /api/tokens/{token_id}": "Revoke an API token",
    "POST /api/jobs/demo": "Queue a demo job",
    "GET /api/datasets/{dataset_id}/images.csv": "Download the images as CSV",
    "GET /api/uploads/{upload_id}/report.csv": "Download an upload report as CSV",
    "POST /api/datasets/{dataset_id}/uploads": "Upload files in one request",
    "GET /api/uploads/{upload_id}": "Get an upload's report",
    "DELETE /api/uploads/{upload_id}": "Discard an upload",
    "POST /api/uploads/{upload_id}/have": "Ask which files the server already has",
    "POST /api/uploads/{upload_id}/chunks": "Send one chunk of a large file",
    "POST /api/uploads/{upload_id}/finish": "Finish an upload and start checking it",
    "GET /api/splits/{split_id}/manifest.csv": "Download a split's manifest (CSV)",
    "GET /api/splits/{split_id}/export.zip": "Download a split as a zip",
    "GET /api/runs/{run_id}/predictions": "List a run's predictions",
    "POST /api/runs/{run_id}/baseline": "Make a run the dataset's baseline",
    "GET /api/runs/{run_id}/files/{name}": "Download a run's file",
    "POST /api/runs/{run_id}/errors/sample": "Draw a new error sample",
    "GET /api/runs/{run_id}/error-analysis": "Get the error analysis",
    "GET /api/runs/{run_id}/error-analysis.csv": "Download the error analysis as CSV",
    "POST /api/reviews/{review_id}/claim": "Claim review items",
    "POST /api/reviews/{review_id}/items/{image_id}/decision": "Decide a review item",
    "GET /api/images/{image_id}/label": "Get an image's label",
    "POST /api/images/{image_id}/exclude": "Exclude an image from scoring",
    "GET /api/images/{image_id}/history": "Get an image's label history",
    "POST /api/label-changes/{change_id}/revert": "Revert a label change",
    "GET /api/runs/{run_id}/rescored": "Get the re-scored errors",
    "GET /api/runs/{run_id}/suspicious": "List suspicious labels",
    "POST /api/datasets/{dataset_id}/labels/{label_id}/merge": "Merge a label into another",
    "POST /api/datasets/{dataset_id}/label-events/{event_id}/revert": "Undo a label merge",
}


def readable_name(method: str, path: str, summary: str) -> str:
    """FastAPI titles api_tokens_create 'Api Tokens Create': it reads 'Create tokens'; a bare noun says what a
    GET does with it ('List users', 'Get job')."""
    if f"{method.upper()} {path}" in NAMES:
        return NAMES[f"{method.upper()} {path}"]
    words = [word.lower() for word in re.sub(r"^Api\s+", "", summary).split()]
    if not words:
        return f"{method.upper()} {path}"
    if words[0] not in VERBS and words[-1] in VERBS:
        words = [words[-1], *words[:-1]]
    elif words[0] not in VERBS and method == "get" and words[0] not in ("list", "get", "download"):
        words = ["get" if path.endswith("}") else "list", *words]
    text = " ".join(words)
    return text[:1].upper() + text[1:]


def complete(app: FastAPI) -> dict[str, Any]:
    """app.openapi() with the error answers and readable names added (computed once, as FastAPI does)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            operation["summary"] = readable_name(method, path, operation.get("summary", ""))
            responses = operation.setdefault("responses", {})
            for code in _errors_for(path, method, operation):
                if code not in responses:  # FastAPI's own 422 (field errors) stays as it is
                    content = {"application/json": {"schema": ERROR_SCHEMA}}
                    responses[code] = {"description": ERRORS[code], "content": content}
    app.openapi_schema = schema
    return schema


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref", "")
    if ref.startswith("#/components/schemas/"):
        resolved: dict[str, Any] = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]
        return resolved
    return node


def _type_of(schema: dict[str, Any], node: dict[str, Any]) -> str:
    node = _resolve(schema, node)
    if "anyOf" in node:
        return " or ".join(_type_of(schema, option) for option in node["anyOf"])
    if node.get("type") == "array":
        return f"list of {_type_of(schema, node.get('items', {}))}"
    if "enum" in node:
        return " | ".join(map(str, node["enum"]))
    return str(node.get("type") or node.get("title") or "any")


def body_fields(schema: dict[str, Any], operation: dict[str, Any]) -> list[dict[str, Any]]:
    """The fields of an operation's request body (each content type's schema), for people to read."""
    fields = []
    for media, content in operation.get("requestBody", {}).get("content", {}).items():
        body = _resolve(schema, content.get("schema", {}))
        required = set(body.get("required", []))
        for name, prop in body.get("properties", {}).items():
            fields.append({"media": media, "name": name, "type": _type_of(schema, prop), "required": name in required})
        if not body.get("properties"):
            fields.append({"media": media, "name": "", "type": _type_of(schema, body), "required": True})
    return fields


def api_operations(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The OpenAPI operations as rows for the docs page."""
    rows = []
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.get("responses", {})
            rows.append(
                {
                    "method": method.upper(),
                    "path": path,
                    "summary": operation.get("summary", ""),
                    "parameters": [
                        {"name": p["name"], "where": p["in"], "required": p.get("required", False)}
                        for p in operation.get("parameters", [])
                    ],
                    "body": list(operation.get("requestBody", {}).get("content", {})),
                    "fields": body_fields(schema, operation),
                    "responses": [
                        {"code": code, "description": r.get("description", "")} for code, r in responses.items()
                    ],
                }
            )
    return rows
