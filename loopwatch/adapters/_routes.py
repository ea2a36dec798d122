"""The route index of the ASGI middleware: route templates from what the router left in the scope.

A tree of the app's routes (mounts, hosts, included routers) is built once per router and
looked up by identity; resolved labels are cached per route object, so the cost of a
resolution does not grow with the number of routes. A concrete path never becomes a label.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from .._compat import starlette as _starlette
from .._context import Labels
from .._runtime import internal_error

if TYPE_CHECKING:
    from .asgi import LoopwatchMiddleware

try:
    from starlette.routing import Host, Mount, WebSocketRoute, compile_path
except ImportError:  # a bare ASGI app: no Starlette routes can appear in the scope

    class Mount:  # type: ignore[no-redef]
        """Stands in for Starlette's Mount when Starlette is not installed."""

    class Host:  # type: ignore[no-redef]
        """Stands in for Starlette's Host when Starlette is not installed."""

    class WebSocketRoute:  # type: ignore[no-redef]
        """Stands in for Starlette's WebSocketRoute when Starlette is not installed."""

    compile_path = None  # type: ignore[assignment]

Scope = MutableMapping[str, Any]

UNMATCHED = "__unmatched__"
STANDARD_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)
_MOUNT_TAIL = "/{path}"
_CACHE_LIMIT = 4096  # resolved labels kept per middleware; past it the cache starts over
_MAX_DEPTH = 16  # mounts nested deeper than this are not indexed (and cycles end)
_NEVER = re.compile(r"(?!)")  # matches nothing


class _Frontend:
    """A FastAPI ``frontend()`` path, as a resolver key (one object per path)."""

    __slots__ = ("template",)

    def __init__(self, path: str) -> None:
        # The stable template of everything a front-end serves: its path plus the file,
        # as for a mount (FastAPI reports the same ``http.route`` for it).
        self.template = ("" if path == "/" else path) + _MOUNT_TAIL


class _Resolver:
    """Route templates from what the router left in the scope, cached per route object."""

    def __init__(self, middleware: LoopwatchMiddleware) -> None:
        self._middleware = middleware
        # Keyed by id(): routes define __eq__, so they are unhashable; the object is kept
        # in the value and compared, so a recycled id never returns another route's label.
        self._labels: dict[tuple[int, str, Any], tuple[object, Labels]] = {}
        self._trees: dict[int, tuple[object, _Tree]] = {}
        self._frontends: dict[str, _Frontend] = {}
        self._unmatched: Labels | None = None

    def labels(self, scope: Scope, root_path: str) -> Labels:
        """The labels for ``scope`` now (``__unmatched__`` before or without a match)."""
        try:
            leaf, prefix = self.leaf(scope, root_path)
            if leaf is None:
                return self._unmatched_labels()
            key = (id(leaf), prefix, scope.get("method"))
            found = self._labels.get(key)
            if found is not None and found[0] is leaf:
                return found[1]
            labels = self._make(scope, leaf, prefix)
            if labels.handler != UNMATCHED:
                if len(self._labels) >= _CACHE_LIMIT:
                    self._labels.clear()
                self._labels[key] = (leaf, labels)
            return labels
        except Exception as exc:
            internal_error("asgi", exc)
            return self._unmatched_labels()

    def _unmatched_labels(self) -> Labels:
        labels = self._unmatched
        if labels is None:
            labels = Labels(self._middleware.framework or "starlette", UNMATCHED)
            if self._middleware.framework is not None:
                self._unmatched = labels
        return labels

    def leaf(self, scope: Scope, root_path: str) -> tuple[object | None, str]:
        """What the deepest match was, and the concrete mount prefix above the server's.

        Every route, mount and host that matches writes ``scope["endpoint"]`` (its endpoint
        or its app), deeper matches over shallower ones; a route or FastAPI context that the
        router recorded is the leaf only if that endpoint is still its own (or none was
        written: an app that records only the route). Otherwise the endpoint is looked up
        in the router's tree.
        """
        prefix = scope.get("root_path", "")
        if prefix == root_path:
            prefix = ""
        elif prefix.startswith(root_path):
            prefix = prefix[len(root_path):]
        endpoint = scope.get("endpoint")
        if scope.get("fastapi") is not None:
            path = _starlette.frontend_path(scope)
            if path is not None:
                return self._frontend(path), prefix
            effective = _starlette.effective_route(scope)
            if effective is not None and (endpoint is None or _endpoint_of(effective) is endpoint):
                return effective, prefix
        route = scope.get("route")
        if route is not None:
            # Inline for the common case (a route's own endpoint); mounts and hosts by app.
            own = getattr(route, "endpoint", None)
            if own is endpoint or endpoint is None or (
                own is None and getattr(route, "app", None) is endpoint
            ):
                return route, prefix
        if endpoint is None:
            if "router" in scope:
                return None, prefix  # routed, and nothing matched
            # Not routed yet (a middleware ahead of the router is running, or answered
            # first): the route the router will pick, from the route tree.
            return self._tree(scope).route_ahead(scope), prefix
        return self._tree(scope).leaf_for(endpoint, scope, prefix), prefix

    def _frontend(self, path: str) -> _Frontend:
        found = self._frontends.get(path)
        if found is None:
            if len(self._frontends) >= 64:
                self._frontends.clear()
            found = self._frontends[path] = _Frontend(path)
        return found

    def _make(self, scope: Scope, leaf: object, prefix: str) -> Labels:
        template = self._template(scope, leaf, prefix)
        if template is None or not template.startswith("/"):
            return self._unmatched_labels()
        if scope["type"] == "websocket":
            method = "WEBSOCKET"
        else:
            method = scope.get("method", "")
            if method not in STANDARD_METHODS:
                method = "OTHER"
        return Labels(self._middleware.framework or "starlette", f"{method} {template}")

    def _template(self, scope: Scope, leaf: object, prefix: str) -> str | None:
        """The full template of ``leaf`` reached under the concrete ``prefix``, if known."""
        if type(leaf) is _Placement:
            return leaf.label_template()
        tree = self._tree(scope)
        if type(leaf) is _Frontend:
            own: object = leaf.template
        else:
            placement = tree.placement_of(leaf, prefix)
            if placement is not None:
                return placement.label_template()
            # A route the tree does not hold (a router it cannot see into). A mount's or
            # host's own part is already in the concrete prefix: only the prefix counts.
            own = None if isinstance(leaf, (Mount, Host)) else getattr(leaf, "path_format", None)
        if isinstance(own, str) and own.startswith("/"):
            above = tree.prefix_template(prefix)
            if above is not None:
                return above + own
        # The deepest mount the prefix runs through: the most loopwatch can tell; never
        # the concrete prefix itself.
        deepest = tree.deepest_mount(prefix)
        return None if deepest is None else deepest.label_template()

    def _tree(self, scope: Scope) -> _Tree:
        router = scope.get("router") or scope.get("app")
        found = self._trees.get(id(router))
        if found is not None and found[0] is router:
            return found[1]
        tree = _Tree(router)
        if len(self._trees) >= 64:
            self._trees.clear()
        self._trees[id(router)] = (router, tree)
        return tree


def _endpoint_of(route: object) -> object:
    """What a route, mount or host writes as ``scope["endpoint"]`` when it matches."""
    endpoint = getattr(route, "endpoint", None)
    return getattr(route, "app", None) if endpoint is None else endpoint


class _Prefix:
    """A mount prefix template and how to tell whether a concrete prefix is one of its."""

    __slots__ = ("leading", "pattern", "template")

    def __init__(self, template: str) -> None:
        self.template = template
        self.pattern: Any = None
        self.leading: Any = None
        if compile_path is None:
            return
        try:
            if "{" in template:
                self.pattern = compile_path(template)[0]
            self.leading = compile_path(template + "/{loopwatch_rest:path}")[0]
        except Exception as exc:  # a template Starlette itself would not compile
            internal_error("asgi", exc)
            self.pattern = _NEVER

    def matches(self, prefix: str) -> bool:
        """Whether ``prefix`` is this template filled in."""
        if self.pattern is None:
            return prefix == self.template
        return self.pattern.match(prefix) is not None

    def leads(self, prefix: str) -> bool:
        """Whether ``prefix`` is this template filled in, followed by more path."""
        return self.leading is not None and self.leading.match(prefix) is not None


class _Placement:
    """One place of a route, mount or host in a router's tree.

    ``template`` is the full label template (mount and include prefixes in, the mount's
    ``/{path}`` tail for a mount); ``prefix`` the mount prefix a request reaching it has
    in its ``root_path``; ``container`` whether routes lie below it (then the request is
    not done routing, or nothing below matched: no template of its own).
    """

    __slots__ = ("children", "container", "depth", "obj", "prefix", "regex", "template")

    def __init__(
        self, obj: object, template: str, prefix: _Prefix, container: bool, depth: int
    ) -> None:
        self.obj = obj
        self.template = template
        self.prefix = prefix
        self.container = container
        self.depth = depth
        self.regex = None if container else getattr(obj, "path_regex", None)
        self.children: list[_Placement] = []  # below a mount or host, in routing order

    def label_template(self) -> str | None:
        return None if self.container else self.template


class _Tree:
    """Where every route, mount and host of one top-level router sits, with its template.

    Built once per router and again when its routes change, so a request never walks the
    routes: lookups are by the identity of the route or endpoint the router left behind.
    """

    def __init__(self, router: object) -> None:
        self._router = router
        self._version = -1
        self._by_obj: dict[int, list[_Placement]] = {}
        self._by_endpoint: dict[int, list[_Placement]] = {}
        self._mounts: list[_Placement] = []
        self._prefixes: dict[str, _Prefix] = {}
        self._build()

    def _build(self) -> None:
        # Into new containers, swapped in at the end: the watchdog thread may be reading
        # the current ones while a request rebuilds.
        self._next: tuple[dict[int, list[_Placement]], dict[int, list[_Placement]],
                          list[_Placement]] = ({}, {}, [])
        version = _starlette.routes_version(self._router)
        routes = getattr(self._router, "routes", None) or []
        top: list[_Placement] = []
        self._walk(list(routes), self._prefix(""), 0, top)
        self._by_obj, self._by_endpoint, self._mounts = self._next
        self._top = top
        self._version = version

    def _prefix(self, template: str) -> _Prefix:
        found = self._prefixes.get(template)
        if found is None:
            found = self._prefixes[template] = _Prefix(template)
        return found

    def _walk(
        self, routes: list[Any], prefix: _Prefix, depth: int, level: list[_Placement]
    ) -> None:
        """Place ``routes`` under ``prefix``; ``level`` gets them in routing order."""
        if depth > _MAX_DEPTH:
            return
        for route in routes:
            included = _starlette.included_routes(route)
            if included is not None:
                # A FastAPI included router: its routes carry the include prefixes, and
                # are tried where the router was included.
                self._walk(included, prefix, depth + 1, level)
                continue
            if isinstance(route, Mount):
                path = route.path_format
                inner = self._prefix(prefix.template + path[: -len(_MOUNT_TAIL)])
                children = _starlette.mount_children(route)
                placement = _Placement(
                    route, prefix.template + path, inner, bool(children), depth
                )
                self._add(placement, route.app)
                self._next[2].append(placement)
                self._walk(children, inner, depth + 1, placement.children)
            elif isinstance(route, Host):
                # The host is not part of the template: requests to any host share it.
                children = _starlette.mount_children(route)
                placement = _Placement(
                    route, prefix.template + _MOUNT_TAIL, prefix, bool(children), depth
                )
                self._add(placement, route.app)
                self._walk(children, prefix, depth + 1, placement.children)
            else:
                template = getattr(route, "path_format", None)
                if not (isinstance(template, str) and template.startswith("/")):
                    continue
                placement = _Placement(route, prefix.template + template, prefix, False, depth)
                self._add(placement, getattr(route, "endpoint", None))
            level.append(placement)

    def _add(self, placement: _Placement, endpoint: object) -> None:
        by_obj, by_endpoint, _ = self._next
        by_obj.setdefault(id(placement.obj), []).append(placement)
        if endpoint is not None:
            by_endpoint.setdefault(id(endpoint), []).append(placement)

    def _found(self, key: object, by_endpoint: bool) -> list[_Placement]:
        """The placements of a route object (or of an endpoint), rebuilding once if the
        router's routes changed since the tree was built."""
        for attempt in range(2):
            index = self._by_endpoint if by_endpoint else self._by_obj
            candidates = [
                p for p in index.get(id(key), ())
                if (_endpoint_of(p.obj) if by_endpoint else p.obj) is key
            ]
            if candidates or attempt:
                return candidates
            if _starlette.routes_version(self._router) == self._version:
                return candidates
            self._build()  # routes were added since: look again
        return []

    def placement_of(self, route: object, prefix: str) -> _Placement | None:
        """Where ``route`` sits under the concrete mount ``prefix``, if the tree holds it."""
        for placement in self._found(route, by_endpoint=False):
            if placement.prefix.matches(prefix):
                return placement
        return None

    def leaf_for(self, endpoint: object, scope: Scope, prefix: str) -> _Placement | None:
        """The route (or mount, host) that wrote ``endpoint`` under the mount ``prefix``."""
        candidates = [
            p for p in self._found(endpoint, by_endpoint=True)
            if p.prefix.matches(prefix)
        ]
        if not candidates:
            # An endpoint below a mount the tree cannot see into (an app that dispatches
            # by hand): the deepest mount it went through.
            return self.deepest_mount(prefix) if prefix else None
        if len(candidates) == 1:
            return candidates[0]
        # One endpoint behind several routes: only those few are tried.
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        for placement in candidates:
            if placement.regex is not None and placement.regex.match(path):
                return placement
        return candidates[0]

    def route_ahead(self, scope: Scope) -> _Placement | None:
        """The route the router will pick for ``scope``, which it has not routed yet.

        Only for a request whose labels are read before its router ran (a block in a
        middleware ahead of it, or a middleware that answered first): the routes' own
        patterns and methods are tried in the router's order, as the router tries them. A
        mount that matches and holds no matching route is where routing ends (its
        placement labels nothing); a method the route does not allow is taken only when
        no other route takes it (the router's 405).
        """
        if _starlette.routes_version(self._router) != self._version:
            self._build()
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        return _first_match(self._top, scope, path, 0)

    def prefix_template(self, prefix: str) -> str | None:
        """The template of a concrete mount prefix (``/orgs/acme`` → ``/orgs/{org}``)."""
        if not prefix:
            return ""
        for placement in self._mounts:
            if placement.prefix.matches(prefix):
                return placement.prefix.template
        return None

    def deepest_mount(self, prefix: str) -> _Placement | None:
        """The deepest mount whose template the concrete ``prefix`` fills or runs through."""
        best: _Placement | None = None
        for placement in self._mounts:
            mount = placement.prefix
            if (mount.matches(prefix) or mount.leads(prefix)) and (
                best is None or placement.depth > best.depth
            ):
                best = placement
        return best



def _first_match(
    level: list[_Placement], scope: Scope, path: str, depth: int
) -> _Placement | None:
    """The placement of ``level`` (and below) that routing ``path`` picks, if any."""
    if depth > _MAX_DEPTH:
        return None
    websocket = scope.get("type") == "websocket"
    method = scope.get("method")
    partial: _Placement | None = None
    for placement in level:
        obj: Any = placement.obj
        if isinstance(obj, Mount):
            found = obj.path_regex.match(path)
            if found is None:
                continue
            if not placement.children:
                return placement  # a mounted app: its own template
            rest = "/" + found.group("path")
            return _first_match(placement.children, scope, rest, depth + 1) or placement
        if isinstance(obj, Host):
            if obj.host_regex.match(_host(scope)) is None:
                continue
            return _first_match(placement.children, scope, path, depth + 1) or placement
        regex = placement.regex
        if regex is None or regex.match(path) is None:
            continue
        if isinstance(obj, WebSocketRoute) != websocket:
            continue
        methods = getattr(obj, "methods", None)
        if not websocket and methods and method not in methods:
            if partial is None:
                partial = placement
            continue
        return placement
    return partial


def _host(scope: Scope) -> str:
    for name, value in scope.get("headers") or ():
        if name == b"host":
            return str(value.decode("latin-1").split(":")[0])
    return ""
