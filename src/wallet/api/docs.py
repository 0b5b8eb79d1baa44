"""Swagger UI at /docs and ReDoc at /redoc, their scripts and styles served by the service itself
(from the fastapi-offline package), never from a CDN: what `fastapi_offline.FastAPIOffline` sets
up, done on the service's own application class (FastAPIOffline builds a plain FastAPI)."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

STATIC_URL = "/static-offline-docs"


def add_offline_docs(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    assert isinstance(app.openapi_url, str)
    assert isinstance(app.swagger_ui_oauth2_redirect_url, str)
    openapi_url = app.openapi_url
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url
    static = resources.files("fastapi_offline") / "static"
    app.mount(STATIC_URL, StaticFiles(directory=str(static)), name="static-offline-docs")

    @app.get(docs_url, include_in_schema=False)
    async def custom_swagger_ui_html(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=app.title + " - Swagger UI",
            oauth2_redirect_url=oauth2_redirect_url,
            swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_URL}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(oauth2_redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(redoc_url, include_in_schema=False)
    async def redoc_html(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=app.title + " - ReDoc",
            redoc_js_url=f"{root}{STATIC_URL}/redoc.standalone.js",
            with_google_fonts=False,
            redoc_favicon_url=f"{root}{STATIC_URL}/favicon.png",
        )
