"""The official API description subsets in tests/fixtures/openapi (its SOURCE.md says where they come from):
find an operation, build a minimal valid object from a schema (so the fake forge's answers carry every
required field), and validate requests and responses."""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import jsonschema

OPENAPI_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "openapi"
STRING_FORMATS = {"date-time": "2026-01-01T00:00:00Z", "uri": "https://forge.invalid/", "email": "nobody@forge.invalid",
                  "date": "2026-01-01", "uuid": "00000000-0000-0000-0000-000000000000"}


def _nullable_to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` is not JSON Schema: rewrite it as anyOf [..., null]."""
    if isinstance(node, list):
        return [_nullable_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _nullable_to_jsonschema(value) for key, value in node.items()}
    if out.pop("nullable", False) is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


def _drop_nulls(node: Any) -> Any:
    """Gitea sends Go's nil pointers as null, which Swagger 2.0 cannot express: an absent property is the
    closest thing the description allows, so nulls are dropped before a Gitea answer is validated."""
    if isinstance(node, dict):
        return {key: _drop_nulls(value) for key, value in node.items() if value is not None}
    if isinstance(node, list):
        return [_drop_nulls(item) for item in node]
    return node


@dataclass
class Spec:
    name: str            # github | gitea

    @cached_property
    def doc(self) -> dict:
        return json.loads((OPENAPI_DIR / f"{self.name}.json").read_text())

    @cached_property
    def _validation_root(self) -> dict:
        doc = _nullable_to_jsonschema(self.doc)
        return {key: doc[key] for key in ("components", "definitions", "responses") if key in doc}

    @cached_property
    def _templates(self) -> list[tuple[re.Pattern, str]]:
        out = []
        for template in self.doc["paths"]:
            # A git ref ("heads/feature/x") keeps its slashes in the path; every other parameter is one segment.
            pattern = re.escape(template).replace(r"\{ref\}", ".+")
            pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", pattern)
            out.append((re.compile(f"^{pattern}$"), template))
        return out

    def template_for(self, path: str) -> str | None:
        base = self.doc.get("basePath", "")
        path = path.removeprefix(base) if base else path
        # Prefer the most literal template when several match (labels/{name} vs issues/{n}/labels).
        matches = [t for p, t in self._templates if p.match(path)]
        return min(matches, key=lambda t: t.count("{")) if matches else None

    def deref(self, node: Any) -> Any:
        seen = 0
        while isinstance(node, dict) and "$ref" in node:
            target = self.doc
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            node, seen = target, seen + 1
            if seen > 50:
                raise RecursionError(node)
        return node

    def operation(self, method: str, template: str) -> dict | None:
        return self.doc["paths"].get(template, {}).get(method.lower())

    def response_schema(self, method: str, template: str, status: int) -> dict | None:
        op = self.operation(method, template)
        if op is None:
            return None
        response = self.deref(op["responses"].get(str(status)) or op["responses"].get("default") or {})
        if "content" in response:
            media = response["content"].get("application/json") or next(iter(response["content"].values()))
            return media.get("schema")
        return response.get("schema")

    def request_schema(self, method: str, template: str) -> dict | None:
        op = self.operation(method, template)
        if op is None:
            return None
        if "requestBody" in op:
            content = self.deref(op["requestBody"]).get("content", {})
            return (content.get("application/json") or {}).get("schema")
        for param in op.get("parameters", []):
            param = self.deref(param)
            if param.get("in") == "body":
                return param.get("schema")
        return None

    def validate(self, schema: dict, instance: Any) -> list[str]:
        if self.doc.get("swagger") == "2.0":
            instance = _drop_nulls(instance)
        root = {**self._validation_root, "allOf": [_nullable_to_jsonschema(schema)]}
        validator = jsonschema.Draft4Validator(root)
        return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:200]}"
                for e in validator.iter_errors(instance)]

    def skeleton(self, schema: dict | None, depth: int = 0) -> Any:
        """The smallest instance the schema accepts, filling only required properties."""
        schema = self.deref(schema or {})
        if depth > 12:
            return None
        if "allOf" in schema:
            merged: dict = {}
            for part in schema["allOf"]:
                value = self.skeleton(part, depth + 1)
                if isinstance(value, dict):
                    merged.update(value)
            return merged
        for key in ("oneOf", "anyOf"):
            if key in schema:
                return self.skeleton(schema[key][0], depth + 1)
        if schema.get("nullable") and depth > 0:  # nested: null is the smallest; the top is always built
            return None
        if "enum" in schema:
            return schema["enum"][0]
        kind = schema.get("type")
        if kind == "object" or "properties" in schema:
            props = schema.get("properties", {})
            return {name: self.skeleton(props.get(name, {}), depth + 1) for name in schema.get("required", [])}
        if kind == "array":
            return []
        if kind == "integer":
            return int(schema.get("minimum", 0))
        if kind == "number":
            return 0
        if kind == "boolean":
            return False
        if kind == "string":
            return STRING_FORMATS.get(schema.get("format", ""), "")
        return None


def overlay(base: Any, top: Any) -> Any:
    """`top`'s values over `base`'s, recursively for objects."""
    if isinstance(base, dict) and isinstance(top, dict):
        out = copy.copy(base)
        for key, value in top.items():
            out[key] = overlay(base.get(key), value)
        return out
    return top


SPECS = {"github": Spec("github"), "gitea": Spec("gitea")}
