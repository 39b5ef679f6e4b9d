"""Users, their contact methods and notification rules: the account's people, and the
``/users`` routes (``/users/me``, ``/users/{id}/contact_methods``, ``.../notification_rules``)."""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web

from .api import KEY_INFO, acting_user, includes, json_response, list_param, state_of
from .crud import Resource, crud_routes
from .errors import invalid
from .util import EMAIL, USER_ROLES, iso

CONTACT_METHOD_TYPES = (
    "email_contact_method",
    "phone_contact_method",
    "sms_contact_method",
    "push_notification_contact_method",
    "whatsapp_contact_method",
)


class UserOps:
    """Mixin for :class:`PagerDutyState`: users, contact methods and notification rules."""

    def user_by_email(self, email: str) -> dict | None:
        email = email.strip().lower()
        for user in self.users.values():
            if user["email"].lower() == email:
                return user
        return None

    def resolve_user(self, who: str | dict | None) -> dict | None:
        """A user from an id, an email or a reference; ``None`` stays ``None``."""
        if who is None:
            return None
        if isinstance(who, dict):
            who = who.get("id", "")
        user = self.users.get(who)
        if user is None and "@" in who:
            user = self.user_by_email(who)
        if user is None:
            raise invalid(f"User {who!r} not found", message="User Not Found")
        return user

    # ------------------------------------------------------------------- users

    def _add_user(self, data: dict, created: float) -> dict:
        uid = self._claim_id(data.get("id"))
        user = {
            "id": uid,
            "type": "user",
            "summary": data["name"],
            "self": self._url("users", uid),
            "html_url": self._web("users", uid),
            "name": data["name"],
            "email": data["email"],
            "time_zone": data.get("time_zone", "Etc/UTC"),
            "color": data.get("color", "purple"),
            "role": data.get("role", "user"),
            "avatar_url": f"https://secure.gravatar.com/avatar/{uid.lower()}.png?d=mm&r=PG",
            "description": data.get("description", ""),
            "invitation_sent": False,
            "job_title": data.get("job_title", ""),
            "teams": [],
            "contact_methods": [],
            "notification_rules": [],
        }
        self.users[uid] = user
        self.contact_methods[uid] = {}
        self.notification_rules[uid] = {}
        # Every PagerDuty user starts with their login email as a contact method.
        self._store_contact_method(uid, {"type": "email_contact_method", "label": "Default", "address": data["email"]})
        return user

    def create_user(self, data: dict) -> dict:
        errors = []
        if data.get("type") != "user":
            errors.append("User type must be 'user'")
        name, email = data.get("name"), data.get("email")
        if not isinstance(name, str) or not name.strip():
            errors.append("Name can't be blank")
        if not isinstance(email, str) or not EMAIL.match(email):
            errors.append("Email is invalid")
        elif self.user_by_email(email):
            errors.append("Email has already been taken")
        role = data.get("role", "user")
        if role not in USER_ROLES:
            errors.append(f"Role must be one of {', '.join(USER_ROLES)}")
        if errors:
            raise invalid(*errors)
        return self._add_user({**data, "id": None, "role": role}, self.now())

    def update_user(self, uid: str, data: dict) -> dict:
        user = self._get(self.users, uid, "User")
        errors = []
        if "email" in data:
            email = data["email"]
            other = self.user_by_email(email) if isinstance(email, str) else None
            if not isinstance(email, str) or not EMAIL.match(email):
                errors.append("Email is invalid")
            elif other is not None and other["id"] != uid:
                errors.append("Email has already been taken")
        if "role" in data and data["role"] not in USER_ROLES:
            errors.append(f"Role must be one of {', '.join(USER_ROLES)}")
        if "name" in data and (not isinstance(data["name"], str) or not data["name"].strip()):
            errors.append("Name can't be blank")
        if errors:
            raise invalid(*errors)
        for key in ("name", "email", "time_zone", "color", "role", "description", "job_title"):
            if key in data:
                user[key] = data[key]
        user["summary"] = user["name"]
        self._refresh_ref("user", uid)
        return user

    def delete_user(self, uid: str) -> None:
        self._get(self.users, uid, "User")
        for tid in list(self.team_members):
            self.team_members[tid].pop(uid, None)
        del self.users[uid]
        self.contact_methods.pop(uid, None)
        self.notification_rules.pop(uid, None)

    def render_user(self, user: dict, include: Iterable[str] = ()) -> dict:
        include = set(include)
        if not include & {"contact_methods", "notification_rules", "teams"}:
            return user
        out = dict(user)
        uid = user["id"]
        if "contact_methods" in include:
            out["contact_methods"] = list(self.contact_methods.get(uid, {}).values())
        if "notification_rules" in include:
            out["notification_rules"] = list(self.notification_rules.get(uid, {}).values())
        if "teams" in include:
            out["teams"] = [self.render_team(self.teams[t["id"]]) for t in user["teams"] if t["id"] in self.teams]
        return out

    # ---------------------------------------------- contact methods / notification rules

    def _store_contact_method(self, uid: str, data: dict, cid: str | None = None) -> dict:
        cid = cid or self.ids.new()
        ctype = data["type"]
        cm = {
            "id": cid,
            "type": ctype,
            "summary": data.get("label", ""),
            "self": self._url("users", uid, "contact_methods", cid),
            "html_url": None,
            "label": data.get("label", ""),
            "address": data.get("address", ""),
        }
        if ctype in ("phone_contact_method", "sms_contact_method", "whatsapp_contact_method"):
            cm["country_code"] = int(data.get("country_code", 1))
            cm["enabled"] = True
            cm["blacklisted"] = False
        elif ctype == "email_contact_method":
            cm["send_short_email"] = bool(data.get("send_short_email", False))
        elif ctype == "push_notification_contact_method":
            cm["device_type"] = data.get("device_type", "ios")
            cm["sounds"] = data.get("sounds", [])
            cm["created_at"] = iso(self.now())
            cm["blacklisted"] = False
        self.contact_methods[uid][cid] = cm
        self._sync_user_lists(uid)
        return cm

    def _validate_contact_method(self, uid: str, data: dict, partial: bool = False, cid: str | None = None) -> None:
        errors = []
        ctype = data.get("type")
        if not partial or "type" in data:
            if ctype not in CONTACT_METHOD_TYPES:
                errors.append(f"Type must be one of {', '.join(CONTACT_METHOD_TYPES)}")
        for key in ("label", "address"):
            if (not partial or key in data) and (not isinstance(data.get(key), str) or not data.get(key)):
                errors.append(f"{key.capitalize()} can't be blank")
        if ctype in ("phone_contact_method", "sms_contact_method", "whatsapp_contact_method") and not partial:
            if not isinstance(data.get("country_code"), int):
                errors.append("Country code must be an integer")
        if (
            ctype == "email_contact_method"
            and isinstance(data.get("address"), str)
            and not EMAIL.match(data["address"])
        ):
            errors.append("Address is not a valid email address")
        if errors:
            raise invalid(*errors)
        address = data.get("address")
        for cm in self.contact_methods[uid].values():
            if cm["type"] == ctype and cm["address"] == address and cm["id"] != cid:
                raise invalid("User Contact method must be unique")

    def create_contact_method(self, uid: str, data: dict) -> dict:
        self._get(self.users, uid, "User")
        self._validate_contact_method(uid, data)
        return self._store_contact_method(uid, data)

    def update_contact_method(self, uid: str, cid: str, data: dict) -> dict:
        self._get(self.users, uid, "User")
        cm = self._get(self.contact_methods[uid], cid, "Contact Method")
        merged = {**cm, **{k: v for k, v in data.items() if k != "id"}}
        merged["type"] = cm["type"]
        self._validate_contact_method(
            uid, {k: v for k, v in merged.items() if k in data or k == "type"}, partial=True, cid=cid
        )
        return self._store_contact_method(uid, merged, cid)

    def delete_contact_method(self, uid: str, cid: str) -> None:
        self._get(self.users, uid, "User")
        self._get(self.contact_methods[uid], cid, "Contact Method")
        del self.contact_methods[uid][cid]
        for rid, rule in list(self.notification_rules[uid].items()):
            if rule["contact_method"]["id"] == cid:
                del self.notification_rules[uid][rid]
        self._sync_user_lists(uid)

    def _validate_notification_rule(self, uid: str, data: dict) -> dict:
        errors = []
        if data.get("type") != "assignment_notification_rule":
            errors.append("Type must be 'assignment_notification_rule'")
        delay = data.get("start_delay_in_minutes")
        if not isinstance(delay, int) or isinstance(delay, bool) or delay < 0:
            errors.append("Start delay in minutes must be a non-negative integer")
        if data.get("urgency") not in ("high", "low"):
            errors.append("Urgency must be 'high' or 'low'")
        cmref = data.get("contact_method")
        cm = self.contact_methods[uid].get(cmref.get("id")) if isinstance(cmref, dict) else None
        if cm is None:
            errors.append("Contact method not found")
        if errors:
            raise invalid(*errors)
        return cm

    def _store_notification_rule(self, uid: str, data: dict, cm: dict, rid: str | None = None) -> dict:
        rid = rid or self.ids.new()
        rule = {
            "id": rid,
            "type": "assignment_notification_rule",
            "summary": f"{data['start_delay_in_minutes']} minutes: channel {cm['id']}",
            "self": self._url("users", uid, "notification_rules", rid),
            "html_url": None,
            "start_delay_in_minutes": data["start_delay_in_minutes"],
            "contact_method": {
                "id": cm["id"],
                "type": cm["type"] + "_reference",
                "summary": cm["label"],
                "self": cm["self"],
                "html_url": None,
            },
            "urgency": data["urgency"],
        }
        self.notification_rules[uid][rid] = rule
        self._sync_user_lists(uid)
        return rule

    def create_notification_rule(self, uid: str, data: dict) -> dict:
        self._get(self.users, uid, "User")
        cm = self._validate_notification_rule(uid, data)
        return self._store_notification_rule(uid, data, cm)

    def update_notification_rule(self, uid: str, rid: str, data: dict) -> dict:
        self._get(self.users, uid, "User")
        rule = self._get(self.notification_rules[uid], rid, "Notification Rule")
        merged = {**rule, **data}
        cm = self._validate_notification_rule(uid, merged)
        return self._store_notification_rule(uid, merged, cm, rid)

    def delete_notification_rule(self, uid: str, rid: str) -> None:
        self._get(self.users, uid, "User")
        self._get(self.notification_rules[uid], rid, "Notification Rule")
        del self.notification_rules[uid][rid]
        self._sync_user_lists(uid)

    def _sync_user_lists(self, uid: str) -> None:
        user = self.users.get(uid)
        if user is None:
            return
        user["contact_methods"] = [
            {
                "id": c["id"],
                "type": c["type"] + "_reference",
                "summary": c["label"],
                "self": c["self"],
                "html_url": None,
            }
            for c in self.contact_methods[uid].values()
        ]
        user["notification_rules"] = [
            {
                "id": r["id"],
                "type": "assignment_notification_rule_reference",
                "summary": r["summary"],
                "self": r["self"],
                "html_url": None,
            }
            for r in self.notification_rules[uid].values()
        ]

    def contact_methods_of(self, uid: str) -> dict[str, dict]:
        """A user's contact methods by id (404 for an unknown user)."""
        self._get(self.users, uid, "User")
        return self.contact_methods[uid]

    def notification_rules_of(self, uid: str) -> dict[str, dict]:
        """A user's notification rules by id (404 for an unknown user)."""
        self._get(self.users, uid, "User")
        return self.notification_rules[uid]


# ------------------------------------------------------------------- routes

routes = web.RouteTableDef()


# Registered before /users/{id}, which would otherwise take "me" for an id.
@routes.get("/users/me")
async def get_current_user(request):
    st = state_of(request)
    uid = request[KEY_INFO].get("user")
    if not uid:
        raise invalid(
            "Because this request was made using an account-level access token, we were unable to "
            "determine the user's identity. Please use a user-level token."
        )
    return json_response({"user": st.render_user(st._get(st.users, uid, "User"), includes(request))})


def _on_teams(request: web.Request, st, users: list[dict]) -> list[dict]:
    team_ids = set(list_param(request, "team_ids"))
    if team_ids:
        users = [u for u in users if any(t["id"] in team_ids for t in u["teams"])]
    return users


def _of_urgency(request: web.Request, st, rules: list[dict]) -> list[dict]:
    urgency = request.query.get("urgency")
    if urgency in ("high", "low"):
        rules = [r for r in rules if r["urgency"] == urgency]
    return rules


crud_routes(
    routes,
    Resource(
        "/users/{id}",
        "user",
        "users",
        get=lambda st, uid: st._get(st.users, uid, "User"),
        items=lambda st: st.users.values(),
        create=UserOps.create_user,
        update=UserOps.update_user,
        delete=UserOps.delete_user,
        render=UserOps.render_user,
        search=("name", "email"),
        select=_on_teams,
        before_create=acting_user,
    ),
)
crud_routes(
    routes,
    Resource(
        "/users/{id}/contact_methods/{cid}",
        "contact_method",
        "contact_methods",
        get=lambda st, uid, cid: st._get(st.contact_methods_of(uid), cid, "Contact Method"),
        items=lambda st, uid: st.contact_methods_of(uid).values(),
        create=UserOps.create_contact_method,
        update=UserOps.update_contact_method,
        delete=UserOps.delete_contact_method,
        order=None,
        paged=False,
    ),
)
crud_routes(
    routes,
    Resource(
        "/users/{id}/notification_rules/{rid}",
        "notification_rule",
        "notification_rules",
        get=lambda st, uid, rid: st._get(st.notification_rules_of(uid), rid, "Notification Rule"),
        items=lambda st, uid: st.notification_rules_of(uid).values(),
        create=UserOps.create_notification_rule,
        update=UserOps.update_notification_rule,
        delete=UserOps.delete_notification_rule,
        select=_of_urgency,
        order=None,
        paged=False,
    ),
)
