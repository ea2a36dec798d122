"""What the ASGI adapter reads of Starlette's and FastAPI's routing beyond their public API.

Each function names one touch and the versions it was checked against: Starlette 0.27 and
1.6-1.10, FastAPI 0.100 and 0.165. A touch that finds nothing returns the neutral value
(``None``, an empty list), so a framework that changes its internals costs labels, never a
request. ``tests/test_compat_starlette.py`` holds a canary per touch.
"""

from __future__ import annotations

from typing import Any

try:
    from starlette.routing import BaseRoute
except ImportError:  # a bare ASGI app: nothing below can be found in its scope

    class BaseRoute:  # type: ignore[no-redef]
        """Stands in for Starlette's BaseRoute when Starlette is not installed."""


_INCLUDED_ROUTER: type | None
try:  # FastAPI >= 0.16x keeps the routes of an included router behind this object.
    from fastapi.routing import _IncludedRouter as _INCLUDED_ROUTER
except ImportError:  # older FastAPI copies included routes into the parent; or no FastAPI
    _INCLUDED_ROUTER = None

__all__ = [
    "effective_route",
    "frontend_path",
    "included_routes",
    "mount_children",
    "routes_version",
]

# FastAPI's per-request state: scope["fastapi"] = {"effective_route_context": ..., ...}.
_FASTAPI_KEY = "fastapi"
_EFFECTIVE_KEY = "effective_route_context"
_FRONTEND_SPECIFICITY_KEY = "frontend_specificity"


def effective_route(scope: Any) -> object | None:
    """The route FastAPI selected inside an included router, with the include prefixes.

    FastAPI 0.165 matches an included router's routes through per-inclusion contexts and
    records the selected one under ``scope["fastapi"]["effective_route_context"]``; the
    context (``APIRoute``s) or its ``starlette_route`` (a prefixed copy of a ``Route``,
    ``WebSocketRoute``, ``Mount`` or ``Host``) carries the full ``path_format``. FastAPI
    0.100 copies included routes instead and sets no such key: ``None``.
    """
    state = scope.get(_FASTAPI_KEY)
    if type(state) is not dict:
        return None
    context: object | None = state.get(_EFFECTIVE_KEY)
    if context is None:
        return None
    route: object | None = getattr(context, "starlette_route", None)
    return context if route is None else route


def frontend_path(scope: Any) -> str | None:
    """The path of the ``frontend()`` FastAPI selected for this request, or ``None``.

    FastAPI 0.165 serves ``frontend()`` builds from a low-priority route group that leaves
    no route or endpoint in the scope, only ``frontend_specificity`` (the length of the
    matched front-end path, 0 for ``/``) and ``frontend_path`` (the file part). The path is
    a literal (no parameters) that prefixes the routed path, so it is the routed path cut
    to that length: a registered front-end path, never a raw request path.
    """
    state = scope.get(_FASTAPI_KEY)
    if type(state) is not dict:
        return None
    length = state.get(_FRONTEND_SPECIFICITY_KEY)
    if type(length) is not int or length < 0:
        return None
    if length == 0:
        return "/"
    path = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    if len(path) < length or (len(path) > length and path[length] != "/"):
        return None  # not a path FastAPI could have matched: leave it unlabelled
    return str(path[:length])


def included_routes(route: object) -> list[Any] | None:
    """The routes of a FastAPI included router as its parent routes them, or ``None``.

    FastAPI 0.165 puts an ``_IncludedRouter`` in the parent's ``routes``; its
    ``effective_route_contexts()`` yields one context per route with the include prefixes
    applied (``starlette_route`` for Starlette routes, mounts and hosts, the context itself
    for ``APIRoute``s). ``None`` for anything else, FastAPI 0.100 included.
    """
    if _INCLUDED_ROUTER is None or not isinstance(route, _INCLUDED_ROUTER):
        return None
    found: list[Any] = []
    included: Any = route
    for context in included.effective_route_contexts():
        inner = getattr(context, "starlette_route", None)
        found.append(context if inner is None else inner)
    return found


def mount_children(route: object) -> list[Any]:
    """The routes behind a ``Mount`` or ``Host``, through any middleware it wraps its app in.

    ``Mount.routes`` reads ``Mount._base_app`` (the app before ``middleware=``; Starlette
    0.27-1.10); when that app is itself a single route (``Mount("/x", app=Route(...))``),
    that route is what the mount routes to.
    """
    routes = getattr(route, "routes", None)
    if routes:
        return list(routes)
    base = getattr(route, "_base_app", None)
    if base is None:
        base = getattr(route, "app", None)  # a Host, or a Mount of another Starlette
    if isinstance(base, BaseRoute):
        return [base]
    return []


def routes_version(router: object) -> int:
    """A number that changes when routes are added to ``router`` or a router it includes.

    FastAPI 0.165 counts changes in ``APIRouter._get_routes_version()`` (included routers'
    changes too); elsewhere the number of routes stands in.
    """
    routes = getattr(router, "routes", None)
    count = len(routes) if isinstance(routes, list) else 0
    version = getattr(router, "_get_routes_version", None)
    if callable(version):
        try:
            found = version()
        except Exception:  # a router of another shape: the count alone
            return count
        if type(found) is int:
            return count + found
    return count
