"""Turn path, query and body values into typed structs, collecting a message for every bad field."""

from __future__ import annotations

import functools
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec
from starlette.datastructures import ImmutableMultiDict

from api.errors import ValidationFailed

S = TypeVar("S", bound=msgspec.Struct)

INVALID = "The given data was invalid."
_EXPECTED = re.compile(r"^Expected `(?P<type>[^`]+)`(?:, got `(?P<got>[^`]+)`)?(?P<rest>.*)$")
_TYPE_WORDS = {
    "int": "an integer",
    "str": "a string",
    "bool": "true or false",
    "float": "a number",
    "object": "an object",
    "array": "a list",
}
_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _humanise(message: str) -> str:
    """msgspec's "Expected `int` >= 1" → "must be an integer >= 1"."""
    message = _AT.sub("", message)
    match = _EXPECTED.match(message)
    if match:
        word = _TYPE_WORDS.get(match["type"], match["type"])
        return f"must be {word}{match['rest']}".strip()
    if message.startswith("Invalid RFC3339 encoded date"):
        return "must be a date as YYYY-MM-DD"
    if message.startswith("Invalid RFC3339 encoded datetime"):
        return "must be a date-time in ISO 8601"
    return message[:1].lower() + message[1:]


def _describe(tp: Any) -> str:
    """ "must be <description>" for a type annotated with one (patterns read badly as regexes)."""
    if typing.get_origin(tp) is typing.Literal:
        return "must be one of: " + ", ".join(str(arg) for arg in typing.get_args(tp))
    for arg in typing.get_args(tp):
        described = _describe(arg)
        if described:
            return described
        if isinstance(arg, msgspec.Meta) and arg.description:
            return "must be " + arg.description[:1].lower() + arg.description[1:]
    return ""


def _field_path(message: str) -> str:
    match = _AT.search(message)
    if not match:
        return ""
    return match["path"].lstrip(".").split("[")[0].split(".")[0]


def value_type(tp: Any) -> Any:
    """The type of a path or query value: `X | None` is X (absent means None; a URL has no null)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        kept = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        if len(kept) == 1:
            return kept[0]
    return tp


class _Field(typing.NamedTuple):
    name: str
    value_type: Any
    required: bool


@functools.cache
def _fields(struct: type[msgspec.Struct]) -> tuple[_Field, ...]:
    # msgspec.structs.fields() resolves annotations on every call: far too slow per request.
    return tuple(
        _Field(f.encode_name, value_type(f.type), f.required)
        for f in msgspec.structs.fields(struct)
    )


def parse_values(values: Mapping[str, Any], struct: type[S]) -> S:
    """Build `struct` from string values (path or query), one message per bad field."""
    errors: dict[str, list[str]] = {}
    converted: dict[str, Any] = {}
    for name, tp, required in _fields(struct):
        if name not in values:
            if required:
                errors.setdefault(name, []).append("is required")
            continue
        if isinstance(values, ImmutableMultiDict) and len(values.getlist(name)) > 1:
            errors.setdefault(name, []).append("must be given once")
            continue
        try:
            converted[name] = msgspec.convert(values[name], tp, strict=False)
        except msgspec.ValidationError as exc:
            errors.setdefault(name, []).append(_describe(tp) or _humanise(str(exc)))
    if errors:
        raise ValidationFailed(INVALID, errors)
    return _checked(msgspec.convert(converted, struct, strict=False))


def parse_body(body: bytes, struct: type[S]) -> S:
    """Decode a JSON body into `struct`; a bad or missing field is reported under its name."""
    if not body.strip():
        raise ValidationFailed(INVALID, {"body": ["a JSON object is required"]})
    try:
        value = msgspec.json.decode(body, type=struct)
    except msgspec.ValidationError as exc:
        message = str(exc)
        field = _field_path(message) or "body"
        if message.startswith("Object missing required field"):
            missing = message.split("`")[1]
            raise ValidationFailed(INVALID, {missing: ["is required"]}) from None
        raise ValidationFailed(INVALID, {field: [_humanise(message)]}) from None
    except msgspec.DecodeError:
        raise ValidationFailed(INVALID, {"body": ["is not valid JSON"]}) from None
    return _checked(value)


def _checked(value: S) -> S:
    # Cross-field rules (a range's start before its end) live on the struct as `check()`.
    check = getattr(value, "check", None)
    if check is not None:
        problems: dict[str, list[str]] = check()
        if problems:
            raise ValidationFailed(INVALID, problems)
    return value
