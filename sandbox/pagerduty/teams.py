"""Teams and their members: the account's groups, which escalation policies and services
name, and the ``/teams`` routes (members, users, escalation policies)."""

from __future__ import annotations

from aiohttp import web

from .api import includes, no_content, page, read_body, state_of
from .crud import Resource, crud_routes
from .errors import invalid, not_found
from .util import name_errors

TEAM_ROLES = ("observer", "responder", "manager")


class TeamOps:
    """Mixin for :class:`PagerDutyState`: teams, memberships and team escalation policies."""

    def _new_team(self, tid: str | None, name: str, description: str = "", default_role: str = "manager") -> dict:
        tid = self._claim_id(tid)
        return {
            "id": tid,
            "type": "team",
            "summary": name,
            "self": self._url("teams", tid),
            "html_url": self._web("teams", tid),
            "name": name,
            "description": description,
            "default_role": default_role,
        }

    def _set_team_member(self, tid: str, uid: str, role: str) -> None:
        if uid not in self.users:
            raise invalid(f"User {uid} not found")
        self.team_members[tid][uid] = role
        self._sync_user_teams(uid)

    def _sync_user_teams(self, uid: str) -> None:
        user = self.users.get(uid)
        if user is not None:
            user["teams"] = [self.ref("team", tid) for tid, members in self.team_members.items() if uid in members]

    def _validate_team(self, data: dict, tid: str | None = None) -> None:
        errors = []
        if data.get("type") != "team":
            errors.append("Team type must be 'team'")
        errors += name_errors(data.get("name"), self.teams, tid)
        if data.get("default_role", "manager") not in ("manager", "none"):
            errors.append("Default role must be 'manager' or 'none'")
        if errors:
            raise invalid(*errors)

    def create_team(self, data: dict) -> dict:
        self.require_ability("teams")
        self._validate_team(data)
        team = self._new_team(None, data["name"], data.get("description", ""), data.get("default_role", "manager"))
        self.teams[team["id"]] = team
        self.team_members[team["id"]] = {}
        return team

    def update_team(self, tid: str, data: dict) -> dict:
        team = self._get(self.teams, tid, "Team")
        self._validate_team({**team, **data}, tid)
        for key in ("name", "description", "default_role"):
            if key in data:
                team[key] = data[key]
        team["summary"] = team["name"]
        self._refresh_ref("team", tid)
        return team

    def delete_team(self, tid: str) -> None:
        self._get(self.teams, tid, "Team")
        members = self.team_members.pop(tid, {})
        del self.teams[tid]
        for uid in members:
            self._sync_user_teams(uid)
        for ep in self.escalation_policies.values():
            ep["teams"] = [t for t in ep["teams"] if t["id"] != tid]
        for svc in self.services.values():
            svc["teams"] = [t for t in svc["teams"] if t["id"] != tid]

    def render_team(self, team: dict) -> dict:
        return team

    def set_team_user(self, tid: str, uid: str, role: str | None = None) -> None:
        team = self._get(self.teams, tid, "Team")
        self._get(self.users, uid, "User")
        if role is None:
            role = "manager" if team["default_role"] == "manager" else "responder"
        if role not in TEAM_ROLES:
            raise invalid(f"Role must be one of {', '.join(TEAM_ROLES)}")
        self._set_team_member(tid, uid, role)

    def remove_team_user(self, tid: str, uid: str) -> None:
        self._get(self.teams, tid, "Team")
        self._get(self.users, uid, "User")
        if uid not in self.team_members[tid]:
            raise not_found("Team membership")
        del self.team_members[tid][uid]
        self._sync_user_teams(uid)

    def set_team_escalation_policy(self, tid: str, epid: str, add: bool) -> None:
        self._get(self.teams, tid, "Team")
        ep = self._get(self.escalation_policies, epid, "Escalation Policy")
        ids = [t["id"] for t in ep["teams"]]
        if add and tid not in ids:
            ep["teams"].append(self.ref("team", tid))
        elif not add:
            if tid not in ids:
                raise not_found("Team escalation policy")
            ep["teams"] = [t for t in ep["teams"] if t["id"] != tid]

    def team_members_list(self, tid: str) -> list[dict]:
        self._get(self.teams, tid, "Team")
        return [{"user": self.ref("user", uid), "role": role} for uid, role in self.team_members[tid].items()]


# ------------------------------------------------------------------- routes

routes = web.RouteTableDef()

crud_routes(
    routes,
    Resource(
        "/teams/{id}",
        "team",
        "teams",
        get=lambda st, tid: st._get(st.teams, tid, "Team"),
        items=lambda st: st.teams.values(),
        create=TeamOps.create_team,
        update=TeamOps.update_team,
        delete=TeamOps.delete_team,
        search=("name",),
    ),
)


@routes.get("/teams/{id}/members")
async def list_team_members(request):
    st = state_of(request)
    members = st.team_members_list(request.match_info["id"])
    if "users" in includes(request):
        members = [{**m, "user": st.users[m["user"]["id"]]} for m in members]
    return page(request, "members", members)


@routes.put("/teams/{id}/users/{user_id}")
async def put_team_user(request):
    data = await read_body(request)
    role = data.get("role")
    state_of(request).set_team_user(request.match_info["id"], request.match_info["user_id"], role)
    return no_content()


@routes.delete("/teams/{id}/users/{user_id}")
async def delete_team_user(request):
    state_of(request).remove_team_user(request.match_info["id"], request.match_info["user_id"])
    return no_content()


@routes.put("/teams/{id}/escalation_policies/{ep_id}")
async def put_team_ep(request):
    state_of(request).set_team_escalation_policy(request.match_info["id"], request.match_info["ep_id"], True)
    return no_content()


@routes.delete("/teams/{id}/escalation_policies/{ep_id}")
async def delete_team_ep(request):
    state_of(request).set_team_escalation_policy(request.match_info["id"], request.match_info["ep_id"], False)
    return no_content()
