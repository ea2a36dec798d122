"""Check a Grafana dashboard JSON against the dashboard types of grafana-foundation-sdk.

The SDK's models are generated from Grafana's own dashboard schema (and the schemas of the
panel and data source plugins). ``schema_errors`` decodes the JSON into those models, with
the panel options and queries decoded by panel type and data source type, and reports:

* every value whose JSON type is not the one the schema declares (a string where a number
  belongs, a number outside an enum, an object where a list belongs...);
* every key the schema does not know, found as a key the decode-and-encode round trip
  loses (a misspelt option, an option at the wrong level);
* every query whose data source type has no schema.

The SDK itself assigns what it decodes without checking it; the type walk is what makes
a wrong type fail.
"""

from __future__ import annotations

import enum
import json
import types
import typing
from typing import Any

from grafana_foundation_sdk.cog import plugins, runtime
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model

MODELS_PACKAGE = "grafana_foundation_sdk.models"


def _model_class(hint: Any) -> bool:
    return isinstance(hint, type) and hint.__module__.startswith(MODELS_PACKAGE)


def _is_model(value: Any) -> bool:
    return type(value).__module__.startswith(MODELS_PACKAGE)


def _same_shape(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin is list:
        return isinstance(value, list)
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(hint, type) and _model_class(hint) and type(value) is hint


def _type_errors(value: Any, hint: Any, path: str) -> list[str]:
    """Why ``value`` (as decoded from JSON) does not fit ``hint``; empty when it does."""
    if hint is Any or hint is object:
        # Panel options and field config are typed ``object`` in the panel model and
        # decoded into the panel plugin's own model: walk that one.
        return model_errors(value, path) if _is_model(value) else []
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        arms = typing.get_args(hint)
        if value is not None and len(arms) == 2 and type(None) in arms:
            (arm,) = [a for a in arms if a is not type(None)]
            return _type_errors(value, arm, path)
        results = [_type_errors(value, arm, path) for arm in arms]
        if any(not errors for errors in results):
            return []
        # Report the errors inside the arm the value is shaped like (a list for a list,
        # the panel class for a panel), else that it fits none.
        for arm, errors in zip(arms, results):
            if _same_shape(value, arm):
                return errors
        return [f"{path}: {value!r:.60} is none of {hint}"]
    if hint is type(None):
        return [] if value is None else [f"{path}: {value!r:.60} is not null"]
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        return [] if value in allowed else [f"{path}: {value!r:.60} is not one of {allowed}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: {type(value).__name__} where the schema has a list"]
        (item,) = typing.get_args(hint) or (Any,)
        return [e for i, v in enumerate(value) for e in _type_errors(v, item, f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__} where the schema has an object"]
        args = typing.get_args(hint)
        item = args[1] if len(args) == 2 else Any
        return [e for k, v in value.items() for e in _type_errors(v, item, f"{path}.{k}")]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        if isinstance(value, bool) or value not in {member.value for member in hint}:
            return [f"{path}: {value!r:.60} is not a {hint.__name__}"]
        return []
    if isinstance(hint, type) and issubclass(hint, runtime.UnknownDataquery):
        return [f"{path}: a query of a data source type the schema does not know"]
    if isinstance(hint, type) and (_model_class(hint) or hint.__module__.endswith("variants")):
        if isinstance(value, runtime.UnknownDataquery):
            return [f"{path}: a query of a data source type the schema does not know"]
        if isinstance(value, dict) and _model_class(hint):
            # Some nested types (transformations) stay plain JSON after the SDK's decode.
            try:
                value = getattr(hint, "from_json")(value)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                return [f"{path}: does not decode as {hint.__name__}: {exc!r}"]
        if not isinstance(value, hint):
            return [f"{path}: {type(value).__name__} where the schema has {hint.__name__}"]
        return model_errors(value, path)
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is str:
        ok = isinstance(value, str)
    else:
        return []  # a hint this walk does not know stays unchecked (none in the models used)
    return [] if ok else [f"{path}: {value!r:.60} is not a {hint.__name__}"]


def model_errors(obj: Any, path: str) -> list[str]:
    """Type errors in every attribute of a decoded SDK model object, recursively."""
    if isinstance(obj, runtime.UnknownDataquery):
        return [f"{path}: a query of a data source type the schema does not know"]
    errors: list[str] = []
    for name, hint in typing.get_type_hints(type(obj)).items():
        value = getattr(obj, name, None)
        if value is None:
            continue  # absent in the JSON: the default applies
        errors += _type_errors(value, hint, f"{path}.{name}")
    return errors


def _lost_keys(original: Any, again: Any, path: str, open_keys: frozenset[str]) -> list[str]:
    """Keys of ``original`` that the round trip dropped: fields the schema does not have."""
    errors: list[str] = []
    if isinstance(original, dict) and isinstance(again, dict):
        for key, value in original.items():
            if key not in again:
                if key not in open_keys:
                    errors.append(f"{path}.{key}: not a field of Grafana's schema here")
            else:
                errors += _lost_keys(value, again[key], f"{path}.{key}", open_keys)
    elif isinstance(original, list) and isinstance(again, list):
        for i, (a, b) in enumerate(zip(original, again)):
            errors += _lost_keys(a, b, f"{path}[{i}]", open_keys)
    elif isinstance(again, (dict, list)) and not isinstance(original, type(again)):
        # The SDK decoded a scalar into an object or a list: the schema has one there.
        errors.append(f"{path}: {original!r:.60} where the schema has {type(again).__name__}")
    return errors


def schema_errors(
    document: dict[str, Any], *, open_annotation_keys: frozenset[str] = frozenset()
) -> list[str]:
    """Everything in ``document`` that does not fit Grafana's dashboard schema.

    ``open_annotation_keys`` names data-source fields an annotation query may carry
    beyond the ones the SDK types.
    """
    plugins.register_default_plugins()
    try:
        decoded = model.Dashboard.from_json(document)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return [f"does not decode as a Grafana dashboard: {exc!r}"]
    errors = model_errors(decoded, "dashboard")
    again = json.loads(json.dumps(decoded, cls=JSONEncoder))
    annotations = document.get("annotations", {}).get("list", [])
    for i, annotation in enumerate(annotations):
        extra = set(annotation) & open_annotation_keys
        if extra:
            # Checked apart so that these keys are allowed on annotations only.
            annotation = {k: v for k, v in annotation.items() if k not in extra}
        errors += _lost_keys(
            annotation,
            again["annotations"]["list"][i],
            f"dashboard.annotations[{i}]",
            frozenset(),
        )
    rest = {k: v for k, v in document.items() if k != "annotations"}
    errors += _lost_keys(rest, again, "dashboard", frozenset())
    return errors
