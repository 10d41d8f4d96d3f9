"""What every model shares: camelCase on the wire, no unknown fields, bounded durations and names, CEL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict
from pydantic_core import core_schema

from saferollout.core.durations import DURATION_PATTERN, parse_duration

GROUP = "saferollout.dev"
VERSION = "v1alpha1"
KIND = "SafeRollout"
PLURAL = "saferollouts"

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
NAME_MAX = 63  # a SafeRollout's own name is a label value (saferollout.dev/rollout) on what it creates
CANARY_SUFFIX = "-canary"
# The target's name becomes a label value and, with CANARY_SUFFIX, a Deployment and Service name: 63 at most.
TARGET_NAME_MAX = 63 - len(CANARY_SUFFIX)
URL_PATTERN = r"^https?://[^\s/][^\n\r]*$"  # an http(s) URL (placeholders may hold spaces)


def cel(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    out: JsonDict = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


@dataclass(frozen=True)
class Bounded:
    """A Go-style duration with a floor and a ceiling, refused by the API server (CEL) and by pydantic alike:
    `interval: 0s` would be a hot loop, and a 400-digit duration overflows every clock sum."""

    floor: str
    ceiling: str

    @property
    def message(self) -> str:
        return f"must be a duration between {self.floor} and {self.ceiling}"

    def check(self, text: str) -> str:
        if len(text) > 32 or not parse_duration(self.floor) <= parse_duration(text) <= parse_duration(self.ceiling):
            raise ValueError(f"{text[:40]!r} {self.message}")
        return text

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> JsonDict:
        out: JsonDict = dict(handler(schema))
        out.update({"pattern": DURATION_PATTERN, "maxLength": 32, "x-kubernetes-validations": [cel(
            f"duration(self) >= duration('{self.floor}') && duration(self) <= duration('{self.ceiling}')",
            self.message)]})
        return out


# a Kubernetes object name that also becomes a label value or a DNS label
ServiceName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=63)]
TargetName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=TARGET_NAME_MAX)]
ObjectName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=253)]
Url = Annotated[str, Field(pattern=URL_PATTERN, max_length=2048)]


class Model(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are an error, never ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", allow_inf_nan=False)

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
