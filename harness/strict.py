"""pydantic models read strictly, and their errors reworded as one line that names the key and where it is.

The scenario format (harness/format.py) is made of `Strict` models: camelCase keys (`alias_generator=to_camel`), no
unknown key (`extra="forbid"`), no type coercion (`strict=True`: "5" is no number, 1.0 no integer, 1 no bool) and
no explicit null. `error_text` turns the first pydantic error into the harness's message, say
`t.yaml.expect: unknown key 'weightsSen' (known keys: phase, ...)`: the location as a dotted path in the file's
own keys, without the union tags pydantic puts into it.
"""

from __future__ import annotations

import copy
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Discriminator, GetCoreSchemaHandler, Tag, field_validator
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails, PydanticCustomError, core_schema


def fail(message: str) -> PydanticCustomError:
    """The error a validator raises; `message` is the text after the path, as is."""
    return PydanticCustomError("scenario", "{message}", {"message": message})


class Strict(BaseModel):
    """A part of a scenario file the harness owns: every key known, every value of its type, none null."""

    model_config = ConfigDict(extra="forbid", strict=True, alias_generator=to_camel, frozen=True)

    @field_validator("*")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:  # `key:` with nothing after it: a forgotten value, not "use the default"
            raise fail("expected a value, got None")
        return value


@dataclass(frozen=True)
class Via:
    """Annotated metadata: read the input as `shape` (a model, a union of them), then keep `convert(result)`.

    The field's own type is what the harness works with (a Bounds, a tuple); `shape` is what a file writes. Errors
    inside `shape` keep their location. Without `convert` the input itself is kept (a copy) once `shape` accepts it.
    """

    shape: Any
    convert: Callable[[Any], Any] | None = None

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        convert = self.convert

        def run(value: Any, validate: core_schema.ValidatorFunctionWrapHandler) -> Any:
            result = validate(value)
            return copy.deepcopy(value) if convert is None else convert(result)

        return core_schema.no_info_wrap_validator_function(run, handler.generate_schema(self.shape))


def _one_or_list_tag(value: object) -> str:
    return "list" if isinstance(value, list) else "one"


def one_or_list(item: Any) -> Any:
    """The shape of "an `item`, or a list of them": errors name `key` or `key[i]`, as the file has it."""
    return Annotated[Annotated[item, Tag("one")] | Annotated[list[item], Tag("list")], Discriminator(_one_or_list_tag)]


# ---------------------------------------------------------------------------------------------- error messages


def _bare(tp: Any) -> tuple[Any, list[Any]]:
    """The type under Annotated, Optional and Via (whose shape is what the file holds), with the metadata met."""
    metadata: list[Any] = []
    while True:
        if get_origin(tp) is Annotated:
            tp, *meta = get_args(tp)
            metadata += meta
            via = next((m for m in meta if isinstance(m, Via)), None)
            if via is not None:
                tp = via.shape
        elif get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp):
            rest = [a for a in get_args(tp) if a is not type(None)]
            tp = rest[0] if len(rest) == 1 else Union[tuple(rest)]  # noqa: UP007 - built at run time
        else:
            return tp, metadata


def _members(tp: Any) -> tuple[Any, ...] | None:
    return get_args(tp) if get_origin(tp) in (Union, types.UnionType) else None


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _member(members: tuple[Any, ...], tag: object) -> Any:
    """The member of a union that pydantic names `tag` in a location: by its Tag, or by a Literal field's value."""
    for m in members:
        tp, metadata = _bare(m)
        if any(isinstance(x, Tag) and x.tag == tag for x in metadata):
            return m
        if _is_model(tp) and any(get_origin(f.annotation) is Literal and tag in get_args(f.annotation)
                                 for f in tp.model_fields.values()):
            return m
    return Any


def _field_type(model: type[BaseModel], key: object) -> Any:
    for name, f in model.model_fields.items():
        if (f.alias or name) == key:
            via = next((m for m in f.metadata if isinstance(m, Via)), None)
            return via.shape if via is not None else f.annotation
    return Any


def locate(root: Any, loc: tuple[int | str, ...]) -> tuple[str, Any]:
    """A pydantic error location as a path in the file (`.a.b[0]`), union tags left out, and the type found there."""
    path, tp = "", root
    for part in loc:
        tp, _ = _bare(tp)
        members = _members(tp)
        if members is not None:  # the location names the union's member here, not a key of the file
            tp = _member(members, part)
            continue
        origin = get_origin(tp)
        if origin in (list, tuple) and isinstance(part, int):
            path, tp = f"{path}[{part}]", get_args(tp)[0]
        elif origin is dict:
            path, tp = f"{path}.{part}", get_args(tp)[1]
        elif _is_model(tp):
            path, tp = f"{path}.{part}", _field_type(tp, part)
        else:
            path, tp = f"{path}.{part}" if isinstance(part, str) else f"{path}[{part}]", Any
    return path, _bare(tp)[0]


def known_keys(tp: Any) -> list[str]:
    return [f.alias or name for name, f in tp.model_fields.items()] if _is_model(tp) else []


_EXPECTED = {"string_type": "a string", "bool_type": "true or false", "int_type": "an integer",
             "int_from_float": "an integer", "float_type": "a number", "dict_type": "a mapping",
             "model_type": "a mapping", "model_attributes_type": "a mapping", "dataclass_type": "a mapping",
             "list_type": "a list", "tuple_type": "a list"}
_CONTAINERS = ("a mapping", "a list")


def _value(v: object) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def error_text(err: ErrorDetails, root: Any, where: str) -> str:
    """One pydantic error as `<where><path>: <what is wrong>`, where `root` is the model that was validated."""
    kind, loc, value, ctx = err["type"], tuple(err["loc"]), err.get("input"), err.get("ctx") or {}
    if kind in ("missing", "extra_forbidden", "invalid_key") or (loc and loc[-1] == "[key]"):
        path, tp = locate(root, loc[:-1] if loc[-1:] != ("[key]",) else loc[:-2])
        at, key = where + path, loc[-1]
        if kind == "missing":
            return f"{at}: missing key {key!r}"
        if kind == "extra_forbidden":
            known = known_keys(tp)
            return f"{at}: unknown key {key!r}" + (f" (known keys: {', '.join(known)})" if known else "")
        return f"{at}: keys must be strings, got {value if kind == 'invalid_key' else loc[-2]!r}"
    path, tp = locate(root, loc)
    at = where + path
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        key = str(ctx.get("discriminator", "")).strip("'")
        if kind == "union_tag_not_found":
            return f"{at}: missing key {key!r}"
        got = value.get(key) if isinstance(value, dict) else None
        if not isinstance(got, str):
            return f"{at}.{key}: expected a string, got {got!r}"
        return f"{at}.{key}: {got!r} is not one of {str(ctx.get('expected_tags', '')).replace(chr(39), '')}"
    if kind == "literal_error":
        choices = get_args(tp) if get_origin(tp) is Literal else (str(ctx.get("expected", "")),)
        return f"{at}: {value!r} is not one of {', '.join(map(str, choices))}"
    if kind in _EXPECTED:
        expected = _EXPECTED[kind]
        got = type(value).__name__ if expected in _CONTAINERS else repr(value)
        return f"{at}: expected {expected}, got {got}"
    bounds = {"greater_than_equal": ("ge", "below"), "less_than_equal": ("le", "above"),
              "greater_than": ("gt", "at or below"), "less_than": ("lt", "at or above")}
    if kind in bounds:
        name, words = bounds[kind]
        return f"{at}: {value!r} is {words} {_value(ctx.get(name))}"
    if kind == "too_short":
        return f"{at}: give at least {ctx.get('min_length')}"
    return f"{at}: {err['msg']}"
