"""Extensions and extension schemas: the legacy V2 webhook (and ServiceNow v7) integrations
attached to services, and the ``/extensions`` and ``/extension_schemas`` routes."""

from __future__ import annotations

from aiohttp import web

from .api import json_response, state_of
from .crud import Resource, crud_routes
from .errors import invalid


class ExtensionOps:
    """Mixin for :class:`PagerDutyState`: extensions (schemas are loaded with the seed)."""

    def _validate_extension(self, data: dict) -> None:
        errors = []
        if data.get("type", "extension") != "extension":
            errors.append("Extension type must be 'extension'")
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            errors.append("Name can't be blank")
        schema = data.get("extension_schema")
        if not isinstance(schema, dict) or schema.get("id") not in self.extension_schemas:
            errors.append("Extension schema not found")
        objects = data.get("extension_objects")
        if not isinstance(objects, list) or not objects:
            errors.append("Extension objects can't be empty")
        else:
            for obj in objects:
                if not isinstance(obj, dict) or obj.get("id") not in self.services:
                    errors.append("Extension object must be an existing service reference")
                    break
        url = data.get("endpoint_url")
        if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
            errors.append("Endpoint url is invalid")
        if "config" in data and not isinstance(data["config"], dict):
            errors.append("Config must be an object")
        if errors:
            raise invalid(*errors)

    def create_extension(self, data: dict, eid: str | None = None) -> dict:
        self._validate_extension(data)
        eid = self._claim_id(eid or data.get("id"))
        ext = {
            "id": eid,
            "type": "extension",
            "summary": data["name"],
            "self": self._url("extensions", eid),
            "html_url": None,
            "name": data["name"],
            "endpoint_url": data.get("endpoint_url"),
            "extension_objects": [self.ref("service", o["id"]) for o in data["extension_objects"]],
            "extension_schema": self.ref("extension_schema", data["extension_schema"]["id"]),
            "temporarily_disabled": False,
            "config": data.get("config", {}),
        }
        if ext["endpoint_url"] is None:
            del ext["endpoint_url"]
        self.extensions[eid] = ext
        return ext

    def update_extension(self, eid: str, data: dict) -> dict:
        old = self._get(self.extensions, eid, "Extension")
        merged = {**old, **data}
        self._validate_extension(merged)
        disabled = old["temporarily_disabled"]
        ext = self.create_extension(merged, eid)
        ext["temporarily_disabled"] = disabled
        self._refresh_ref("extension", eid)
        return ext

    def delete_extension(self, eid: str) -> None:
        self._get(self.extensions, eid, "Extension")
        del self.extensions[eid]
        self.dispatcher.forget(eid)

    def enable_extension(self, eid: str) -> dict:
        ext = self._get(self.extensions, eid, "Extension")
        ext["temporarily_disabled"] = False
        self.dispatcher.enabled(eid)
        return ext


# ------------------------------------------------------------------- routes

routes = web.RouteTableDef()

crud_routes(
    routes,
    Resource(
        "/extension_schemas/{id}",
        "extension_schema",
        "extension_schemas",
        get=lambda st, sid: st._get(st.extension_schemas, sid, "Extension Schema"),
        items=lambda st: st.extension_schemas.values(),
        order=None,
    ),
)


def _matching(request: web.Request, st, exts: list[dict]) -> list[dict]:
    obj = request.query.get("extension_object_id")
    if obj:
        exts = [e for e in exts if any(o["id"] == obj for o in e["extension_objects"])]
    schema = request.query.get("extension_schema_id")
    if schema:
        exts = [e for e in exts if e["extension_schema"]["id"] == schema]
    return exts


crud_routes(
    routes,
    Resource(
        "/extensions/{id}",
        "extension",
        "extensions",
        get=lambda st, eid: st._get(st.extensions, eid, "Extension"),
        items=lambda st: st.extensions.values(),
        create=ExtensionOps.create_extension,
        update=ExtensionOps.update_extension,
        delete=ExtensionOps.delete_extension,
        search=("name",),
        select=_matching,
    ),
)


@routes.post("/extensions/{id}/enable")
async def enable_extension(request):
    return json_response({"extension": state_of(request).enable_extension(request.match_info["id"])})
