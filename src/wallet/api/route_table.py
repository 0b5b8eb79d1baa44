"""The application's routes in one flat table, matched once per request.

FastAPI 0.165's `include_router` keeps each included router as a node that is matched per request
by walking its routes with FastAPI's route-context bookkeeping (set and restored in the request's
scope for every candidate), router after router: about a quarter of the CPU of a balance read
(docs/PERFORMANCE.md, issue 19). The route modules still declare their routes on their own
`APIRouter` (prefix, tags, route class); `add_routes` declares each of them again, as it was
declared, on the application's own router with its public `add_api_route`, which is what
`include_router` did in earlier FastAPI versions. So matching is Starlette's plain loop over one
list, and the OpenAPI document is generated from the same declarations, in the same order, with
the application's common responses merged first as before (tests/api/test_golden_responses.py
compares it byte for byte).
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from wallet.api.request_only import RequestOnlyRoute


def add_routes(app: FastAPI, router: APIRouter) -> None:
    """Each route of `router`, in order: routes of the service's class only (`RequestOnlyRoute`,
    which also makes a route that cannot match a path cheap to pass over)."""
    for route in router.routes:
        if not isinstance(route, RequestOnlyRoute):
            raise TypeError(f"{route!r}: a router of the service declares its routes with RequestOnlyRoute")
        app.router.add_api_route(
            route.path,
            route.endpoint,
            response_model=route.response_model,
            status_code=route.status_code,
            tags=list(route.tags),
            dependencies=list(route.dependencies),
            summary=route.summary,
            description=route.description,
            response_description=route.response_description,
            responses=route.responses,
            deprecated=route.deprecated,
            methods=route.methods,
            operation_id=route.operation_id,
            response_model_include=route.response_model_include,
            response_model_exclude=route.response_model_exclude,
            response_model_by_alias=route.response_model_by_alias,
            response_model_exclude_unset=route.response_model_exclude_unset,
            response_model_exclude_defaults=route.response_model_exclude_defaults,
            response_model_exclude_none=route.response_model_exclude_none,
            include_in_schema=route.include_in_schema,
            response_class=route.response_class,
            name=route.name,
            route_class_override=type(route),
            callbacks=route.callbacks,
            openapi_extra=route.openapi_extra,
            generate_unique_id_function=route.generate_unique_id_function,
            strict_content_type=route.strict_content_type,
            max_body_size=route.max_body_size,
        )
