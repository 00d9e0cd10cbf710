"""/api/docs and the OpenAPI schema tell a script writer what to send and what can come back (issue 15.16);
unknown paths get a 404 the asker can read: JSON for the API, a page for a browser."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient


def test_every_api_operation_documents_its_error_answers_and_a_readable_name(anon: TestClient) -> None:
    schema = anon.get("/api/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            answers = set(operation["responses"])
            assert {"401", "403"} <= answers, (method, path)
            assert "{" not in path or "404" in answers, (method, path)
            assert method == "get" or "409" in answers, (method, path)
            assert "requestBody" not in operation or {"413", "422"} <= answers, (method, path)
            assert not operation["summary"].startswith("Api "), operation["summary"]
    merge = schema["paths"]["/api/datasets/{dataset_id}/labels/{label_id}/merge"]["post"]
    assert merge["summary"] == "Merge a label into another"
    assert merge["responses"]["409"]["content"]["application/json"]["schema"]["properties"]["error"]


def test_the_docs_page_lists_bodies_errors_and_names(anon: TestClient) -> None:
    page = anon.get("/api/docs").text
    row = re.search(
        r'<tr data-operation="POST /api/datasets/\{dataset_id\}/labels/\{label_id\}/merge">(.*?)</tr>', page, re.S
    )
    assert row is not None
    text = re.sub(r"<[^>]+>", " ", row.group(1))
    assert "Merge a label into another" in text
    assert "into_label_id" in text and "integer, required" in text  # the body's fields, not only its media type
    for code in ("401", "403", "404", "409", "413", "422"):
        assert code in text
    assert "Create an API token" in page and "Who am I" in page


def test_an_unknown_path_is_json_for_the_api_and_a_page_with_navigation_for_a_browser(
    anon: TestClient, as_viewer: TestClient
) -> None:
    api = anon.get("/api/no-such-thing")
    assert api.status_code == 404 and api.json()["error"] == "not_found"
    page = anon.get("/no-such-page")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "there is no page at /no-such-page" in page.text and 'href="/login"' in page.text
    assert anon.get("/favicon.ico").headers["content-type"] == "image/svg+xml"
    assert 'rel="icon"' in anon.get("/login").text
