"""The OpenAPI 3.1 document, generated from the endpoint table and its msgspec structs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from api.endpoints import Endpoint
from api.params import value_type
from api.responses import ErrorBody

REF = "#/components/schemas/{name}"
_REASONS = {
    200: "OK",
    202: "Accepted",
    401: "Authentication required or token not valid",
    403: "Forbidden: writes disabled, or a token sent in the URL",
    404: "Not found",
    409: "Conflict with the resource's current state",
    413: "Request body too large",
    422: "Invalid input; `errors` has messages per field",
    503: "Redis unavailable (health: unhealthy, with the report as `data`)",
}


def _parameters(struct: type[msgspec.Struct] | None, where: str, types_: list[Any]) -> list[Any]:
    if struct is None:
        return []
    out = []
    for field in msgspec.structs.fields(struct):
        tp = value_type(field.type)
        types_.append(tp)
        param: dict[str, Any] = {
            "name": field.encode_name,
            "in": where,
            "required": where == "path" or field.required,
            "schema": len(types_) - 1,  # replaced by the schema once all are generated
        }
        out.append(param)
    return out


def build_openapi(endpoints: Sequence[Endpoint], title: str, version: str) -> dict[str, Any]:
    """The whole document; every schema a struct produces lands in components."""
    types_: list[Any] = []
    operations: list[tuple[Endpoint, dict[str, Any]]] = []
    for ep in endpoints:
        params = _parameters(ep.path_params, "path", types_) + _parameters(
            ep.query, "query", types_
        )
        op: dict[str, Any] = {
            "operationId": ep.name,
            "summary": ep.summary,
            "tags": [ep.tag],
            "parameters": params,
        }
        if ep.body is not None:
            types_.append(ep.body)
            op["requestBody"] = {"required": True, "content": {"application/json": len(types_) - 1}}
        types_.append(ep.response)
        op["x-response-index"] = len(types_) - 1
        if ep.auth:
            op["security"] = [{"bearer": []}]
        operations.append((ep, op))
    types_.append(ErrorBody)
    schemas, components = msgspec.json.schema_components(types_, ref_template=REF)
    error_ref = schemas[-1]

    paths: dict[str, dict[str, Any]] = {}
    for ep, op in operations:
        for param in op["parameters"]:
            param["schema"] = schemas[param["schema"]]
        if "requestBody" in op:
            index = op["requestBody"]["content"]["application/json"]
            op["requestBody"]["content"]["application/json"] = {"schema": schemas[index]}
        data_schema = schemas[op.pop("x-response-index")]
        envelope = {
            "type": "object",
            "properties": {"success": {"const": True}, "data": data_schema},
            "required": ["success", "data"],
        }
        responses: dict[str, Any] = {
            str(ep.status): {
                "description": _REASONS.get(ep.status, "OK"),
                "content": {"application/json": {"schema": envelope}},
            }
        }
        for status in ep.error_statuses():
            responses[str(status)] = {
                "description": _REASONS.get(status, "Error"),
                "content": {"application/json": {"schema": error_ref}},
            }
        op["responses"] = responses
        if not op["parameters"]:
            del op["parameters"]
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
