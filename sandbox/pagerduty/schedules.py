"""Schedules: on-call rotations (who is on call now), which escalation rules point at, and
the ``/schedules`` routes."""

from __future__ import annotations

from aiohttp import web

from .api import json_response, state_of
from .crud import Resource, crud_routes
from .errors import invalid
from .util import parse_time


class ScheduleOps:
    """Mixin for :class:`PagerDutyState`: schedules, their layers and who is on call."""

    def _seed_layers(self, s: dict, created: float) -> list[dict]:
        # A fixed, long-past Monday so the weekly rotation is the same whatever the clock was at load.
        start = s.get("rotation_start", "2024-01-01T00:00:00Z")
        return [
            {
                "name": "Layer 1",
                "start": start,
                "rotation_virtual_start": start,
                "rotation_turn_length_seconds": int(s.get("rotation_turn_length_seconds", 604800)),
                "users": [{"user": {"id": u, "type": "user_reference"}} for u in s.get("users", [])],
                "restrictions": [],
            }
        ]

    def _store_schedule(self, sid: str | None, name: str, time_zone: str, description: str, layers: list[dict]) -> dict:
        sid = self._claim_id(sid)
        norm_layers = []
        for i, layer in enumerate(layers):
            lid = layer.get("id") or self.ids.new()
            users = []
            for entry in layer.get("users", []):
                uref = entry.get("user", entry) if isinstance(entry, dict) else {"id": entry}
                if uref.get("id") not in self.users:
                    raise invalid(f"User {uref.get('id')} not found")
                users.append({"user": self.ref("user", uref["id"])})
            norm_layers.append(
                {
                    "id": lid,
                    "name": layer.get("name") or f"Layer {i + 1}",
                    "start": layer["start"],
                    "end": layer.get("end"),
                    "rotation_virtual_start": layer.get("rotation_virtual_start", layer["start"]),
                    "rotation_turn_length_seconds": int(layer.get("rotation_turn_length_seconds", 604800)),
                    "users": users,
                    "restrictions": layer.get("restrictions", []),
                }
            )
            if norm_layers[-1]["end"] is None:
                del norm_layers[-1]["end"]
        schedule = {
            "id": sid,
            "type": "schedule",
            "summary": name,
            "self": self._url("schedules", sid),
            "html_url": self._web("schedules", sid),
            "name": name,
            "time_zone": time_zone,
            "description": description,
            "schedule_layers": norm_layers,
        }
        self.schedules[sid] = schedule
        self._refresh_ref("schedule", sid)
        return schedule

    def _validate_schedule(self, data: dict) -> None:
        errors = []
        if data.get("type") != "schedule":
            errors.append("Schedule type must be 'schedule'")
        if not isinstance(data.get("time_zone"), str) or not data.get("time_zone"):
            errors.append("Time zone can't be blank")
        layers = data.get("schedule_layers", [])
        if not isinstance(layers, list):
            errors.append("Schedule layers must be an array")
        else:
            for layer in layers:
                if not isinstance(layer, dict) or not layer.get("start") or not isinstance(layer.get("users"), list):
                    errors.append("Schedule layer needs start, users and rotation_turn_length_seconds")
                    break
        if errors:
            raise invalid(*errors)

    def create_schedule(self, data: dict) -> dict:
        self._validate_schedule(data)
        return self._store_schedule(
            None,
            data.get("name") or "New Schedule",
            data["time_zone"],
            data.get("description", ""),
            data.get("schedule_layers", []),
        )

    def update_schedule(self, sid: str, data: dict) -> dict:
        old = self._get(self.schedules, sid, "Schedule")
        merged = {**old, **data}
        self._validate_schedule(merged)
        return self._store_schedule(
            sid, merged["name"], merged["time_zone"], merged.get("description", ""), merged.get("schedule_layers", [])
        )

    def delete_schedule(self, sid: str) -> None:
        self._get(self.schedules, sid, "Schedule")
        for ep in self.escalation_policies.values():
            for rule in ep["escalation_rules"]:
                if any(t["id"] == sid for t in rule["targets"]):
                    raise invalid("Schedule is used by an escalation policy", message="Invalid Input Provided")
        del self.schedules[sid]

    def schedule_users(self, sid: str) -> list[str]:
        seen: list[str] = []
        for layer in self.schedules[sid]["schedule_layers"]:
            for entry in layer["users"]:
                if entry["user"]["id"] not in seen:
                    seen.append(entry["user"]["id"])
        return seen

    def on_call_for_schedule(self, sid: str) -> str | None:
        """The user on call now: the first layer's weekly (or configured) rotation."""
        layers = self.schedules[sid]["schedule_layers"]
        for layer in layers:
            users = [e["user"]["id"] for e in layer["users"] if e["user"]["id"] in self.users]
            if not users:
                continue
            try:
                start = parse_time(layer.get("rotation_virtual_start") or layer["start"])
            except ValueError:
                start = 0.0
            turn = max(1, layer.get("rotation_turn_length_seconds", 604800))
            index = int(max(0.0, self.now() - start) // turn) % len(users)
            return users[index]
        return None

    def render_schedule(self, schedule: dict) -> dict:
        sid = schedule["id"]
        return {
            **schedule,
            "users": [self.ref("user", u) for u in self.schedule_users(sid) if u in self.users],
            "escalation_policies": [
                self.ref("escalation_policy", ep["id"])
                for ep in self.escalation_policies.values()
                if any(t["id"] == sid for r in ep["escalation_rules"] for t in r["targets"])
            ],
            "teams": [],
        }


# ------------------------------------------------------------------- routes

routes = web.RouteTableDef()

crud_routes(
    routes,
    Resource(
        "/schedules/{id}",
        "schedule",
        "schedules",
        get=lambda st, sid: st._get(st.schedules, sid, "Schedule"),
        items=lambda st: st.schedules.values(),
        create=ScheduleOps.create_schedule,
        update=ScheduleOps.update_schedule,
        delete=ScheduleOps.delete_schedule,
        render=lambda st, schedule, include: st.render_schedule(schedule),
        search=("name",),
    ),
)


@routes.get("/schedules/{id}/users")
async def list_schedule_users(request):
    st = state_of(request)
    sid = request.match_info["id"]
    st._get(st.schedules, sid, "Schedule")
    return json_response({"users": [st.users[u] for u in st.schedule_users(sid) if u in st.users]})
