"""The sandbox's PagerDuty account: every resource in memory, plus the operations on it.

``PagerDutyState`` is the single source of truth. The HTTP routes in ``app.py`` parse
requests and call the methods here; tests and ``dutybridge demo`` call the same methods
directly ("act as a human in PagerDuty") and get the same log entries and webhooks.

Resources are stored as the dicts the API returns (``state.incidents[id]["status"]``),
so inspection from Python sees exactly what a client sees. Computed fields (an
escalation policy's services, a team's members...) are filled in when rendered.

Times come from ``state.now()``: epoch seconds, replaceable (``state.now = lambda: t``)
so rate-limit windows and timestamps need no sleeping in tests.
"""

from __future__ import annotations

import copy
import re
import secrets
import time
from typing import Any, Callable, Iterable

from ..faults import FaultInjector
from . import extension_schemas
from .errors import PDError, invalid, missing_ability, not_found
from .incidents import IncidentOps
from .util import IdGen, iso, parse_time
from .webhooks import WebhookDispatcher

DEFAULT_API_KEY = "sandbox-pd-full-key"

USER_ROLES = (
    "admin",
    "limited_user",
    "observer",
    "owner",
    "read_only_user",
    "restricted_access",
    "read_only_limited_user",
    "user",
)
# Base roles that may look but not act on incidents (Observer and the stakeholder roles).
READ_ONLY_ROLES = frozenset({"observer", "read_only_user", "read_only_limited_user"})
TEAM_ROLES = ("observer", "responder", "manager")
CONTACT_METHOD_TYPES = (
    "email_contact_method",
    "phone_contact_method",
    "sms_contact_method",
    "push_notification_contact_method",
    "whatsapp_contact_method",
)

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

# kind -> (reference type, API collection, web path)
_REF_KINDS = {
    "user": ("user_reference", "users", "users"),
    "team": ("team_reference", "teams", "teams"),
    "service": ("service_reference", "services", "service-directory"),
    "business_service": ("business_service_reference", "business_services", "business-services"),
    "escalation_policy": ("escalation_policy_reference", "escalation_policies", "escalation_policies"),
    "schedule": ("schedule_reference", "schedules", "schedules"),
    "priority": ("priority_reference", "priorities", "account/incident_priorities"),
    "incident": ("incident_reference", "incidents", "incidents"),
    "extension": ("extension_reference", "extensions", "extensions"),
    "extension_schema": ("extension_schema_reference", "extension_schemas", "extension_schemas"),
    "incident_workflow": ("incident_workflow_reference", "incident_workflows", "incident-workflows/workflows"),
    "response_play": ("response_play_reference", "response_plays", "response_plays"),
}


def _summary_of(kind: str, obj: dict) -> str:
    if kind == "incident":
        return f"[#{obj['incident_number']}] {obj['title']}"
    return obj.get("name") or obj.get("summary") or obj.get("id", "")



def _name_errors(name: Any, existing: dict, own_id: str | None) -> list[str]:
    """PagerDuty's answers for a name that is blank or taken by another object of the kind."""
    if not isinstance(name, str) or not name.strip():
        return ["Name can't be blank"]
    if any(o["name"].lower() == name.lower() and o["id"] != own_id for o in existing.values()):
        return ["Name has already been taken"]
    return []

class PagerDutyState(IncidentOps):
    """An in-memory PagerDuty account. Build it with :meth:`from_seed`."""

    def __init__(self, seed: dict | None = None, *, api_url: str = "https://api.pagerduty.com",
                 now: Callable[[], float] | None = None):
        self._seed = copy.deepcopy(seed or {})
        self.api_url = api_url.rstrip("/")
        subdomain = self._seed.get("subdomain", "acme-sandbox")
        self.web_url = f"https://{subdomain}.pagerduty.com"
        self.now: Callable[[], float] = now or time.time
        self.faults: FaultInjector = FaultInjector()
        # Webhook delivery tuning (compressed versus PagerDuty's 48 hours of retries).
        self.webhook_timeout = 5.0
        self.webhook_retry_base = 0.05
        self.webhook_retry_max_delay = 1.0
        self.webhook_max_attempts = 6
        self.webhook_disable_after = 3
        self.dispatcher = WebhookDispatcher(self)
        self._load()

    @property
    def base_url(self) -> str:
        """Where clients reach this API; every ``self`` link starts with it."""
        return self.api_url

    @base_url.setter
    def base_url(self, url: str) -> None:
        old, new = self.api_url, url.rstrip("/")
        if old == new:
            return
        self.api_url = new
        stores = [self._refs, self.users, self.contact_methods, self.notification_rules, self.teams, self.schedules,
                  self.escalation_policies, self.services, self.business_services, self.priorities,
                  self.extension_schemas, self.extensions, self.incident_workflows, self.response_plays,
                  self.incidents, self.log_entries, self.notes, self.status_updates]

        def relink(node: Any) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    if isinstance(value, str):
                        if key == "self" and value.startswith(old):
                            node[key] = new + value[len(old):]
                    else:
                        relink(value)
            elif isinstance(node, list):
                for value in node:
                    relink(value)

        for store in stores:
            relink(store)

    @classmethod
    def from_seed(cls, seed: dict | None, **kwargs) -> "PagerDutyState":
        """``seed`` is the ``[pagerduty]`` table of ``sandbox/seed.toml`` (a dict).

        Keyword arguments: ``api_url`` (the base of ``self`` links) and ``now`` (the clock).
        """
        return cls(seed, **kwargs)

    # ------------------------------------------------------------------ loading

    def reset(self) -> None:
        """Back to the seed: data, counters, rate-limit windows, webhook queues."""
        self.dispatcher.reset()
        self._load()
        self.faults.reset()

    def _load(self) -> None:
        seed = self._seed
        # Random unless the seed pins ``id_seed``: ids and X-Webhook-Ids must not repeat across
        # resets or runs, or a daemon's store would take new incidents and webhooks for old ones.
        self.ids = IdGen(seed.get("id_seed"))
        self._refs: dict[tuple[str, str], dict] = {}
        self.api_keys: dict[str, dict] = {}
        for entry in seed.get("api_keys", [{"key": DEFAULT_API_KEY, "read_only": False}]):
            self.api_keys[entry["key"]] = {"read_only": bool(entry.get("read_only", False)), "user": entry.get("user")}
        self.rate_limit_per_minute: int = int(seed.get("rate_limit_per_minute", 960))
        self._rate_windows: dict[str, list[float]] = {}
        self.abilities: list[str] = list(seed.get("abilities", []))
        self.response_plays_enabled: bool = bool(seed.get("response_plays_enabled", False))

        self.users: dict[str, dict] = {}
        self.contact_methods: dict[str, dict[str, dict]] = {}
        self.notification_rules: dict[str, dict[str, dict]] = {}
        self.teams: dict[str, dict] = {}
        self.team_members: dict[str, dict[str, str]] = {}
        self.schedules: dict[str, dict] = {}
        self.escalation_policies: dict[str, dict] = {}
        self.services: dict[str, dict] = {}
        self.business_services: dict[str, dict] = {}
        self.service_dependencies: dict[str, dict] = {}
        self.priorities: dict[str, dict] = {}
        self.extension_schemas: dict[str, dict] = {}
        self.extensions: dict[str, dict] = {}
        self.webhook_subscriptions: dict[str, dict] = {}
        self._subscription_secrets: dict[str, str] = {}
        self.incident_workflows: dict[str, dict] = {}
        self.workflow_instances: dict[str, dict] = {}
        self.response_plays: dict[str, dict] = {}
        self.response_play_runs: list[dict] = []
        self.webhook_deliveries: list[dict] = []
        self.webhook_drops: list[dict] = []
        self._init_incident_store()

        created = self.now()
        for u in seed.get("users", []):
            self._add_user(u, created)
        for t in seed.get("teams", []):
            team = self._new_team(t["id"], t["name"], t.get("description", ""), t.get("default_role", "manager"))
            self.teams[team["id"]] = team
            self.team_members[team["id"]] = {}
            for m in t.get("members", []):
                self._set_team_member(team["id"], m["user"], m.get("role", "manager"))
        for s in seed.get("schedules", []):
            self._store_schedule(s["id"], s["name"], s.get("time_zone", "UTC"), s.get("description", ""),
                                 self._seed_layers(s, created))
        for ep in seed.get("escalation_policies", []):
            rules = [
                {"escalation_delay_in_minutes": r.get("escalation_delay_in_minutes", 30), "targets": r.get("targets", [])}
                for r in ep.get("rules", [])
            ]
            self._store_escalation_policy(
                ep["id"], ep["name"], ep.get("description", ""), rules, ep.get("teams", []), ep.get("num_loops", 0)
            )
        for s in seed.get("services", []):
            self._store_service(s["id"], s, created)
        for b in seed.get("business_services", []):
            self._store_business_service(b["id"], b)
        for i, p in enumerate(seed.get("priorities", [])):
            pid = p["id"]
            self.ids.used.add(pid)
            self.priorities[pid] = {
                "id": pid,
                "type": "priority",
                "summary": p["name"],
                "self": f"{self.api_url}/priorities/{pid}",
                "html_url": f"{self.web_url}/account/incident_priorities",
                "name": p["name"],
                "description": p.get("description", ""),
                "order": (len(seed.get("priorities", [])) - i) * 1024,
                "color": p.get("color", "a8171c"),
            }
        for schema in extension_schemas.SCHEMAS:
            sid = schema["id"]
            self.ids.used.add(sid)
            self.extension_schemas[sid] = {
                **schema,
                "type": "extension_schema",
                "self": f"{self.api_url}/extension_schemas/{sid}",
                "html_url": None,
            }
        for w in seed.get("incident_workflows", []):
            self.ids.used.add(w["id"])
            self.incident_workflows[w["id"]] = self._new_workflow(w["id"], w, created)
        for rp in seed.get("response_plays", []):
            self.ids.used.add(rp["id"])
            self.response_plays[rp["id"]] = self._new_response_play(rp["id"], rp)
        for rel in seed.get("service_dependencies", []):
            self.associate_dependencies([rel])
        for ext in seed.get("extensions", []):
            self.create_extension(ext)
        for sub in seed.get("webhook_subscriptions", []):
            self.create_webhook_subscription(sub, secret=sub.get("secret"))

    # --------------------------------------------------------------- references

    def ref(self, kind: str, rid: str) -> dict:
        """The reference object (``{"id","type":"<kind>_reference","summary","self","html_url"}``).

        One dict per resource, shared by everything that embeds it, updated in place
        when the resource is renamed.
        """
        key = (kind, rid)
        cached = self._refs.get(key)
        if cached is not None:
            return cached
        rtype, collection, web = _REF_KINDS[kind]
        obj = self._store_for(kind).get(rid)
        summary = _summary_of(kind, obj) if obj else rid
        html = f"{self.web_url}/{web}" if kind == "priority" else f"{self.web_url}/{web}/{rid}"
        ref = {"id": rid, "type": rtype, "summary": summary, "self": f"{self.api_url}/{collection}/{rid}", "html_url": html}
        self._refs[key] = ref
        return ref

    def _refresh_ref(self, kind: str, rid: str) -> None:
        ref = self._refs.get((kind, rid))
        obj = self._store_for(kind).get(rid)
        if ref is not None and obj is not None:
            ref["summary"] = _summary_of(kind, obj)

    def _store_for(self, kind: str) -> dict:
        return {
            "user": self.users,
            "team": self.teams,
            "service": self.services,
            "business_service": self.business_services,
            "escalation_policy": self.escalation_policies,
            "schedule": self.schedules,
            "priority": self.priorities,
            "incident": self.incidents,
            "extension": self.extensions,
            "extension_schema": self.extension_schemas,
            "incident_workflow": self.incident_workflows,
            "response_play": self.response_plays,
        }[kind]

    def _url(self, *parts: str) -> str:
        return "/".join((self.api_url, *parts))

    def _web(self, *parts: str) -> str:
        return "/".join((self.web_url, *parts))

    def _claim_id(self, wanted: str | None = None) -> str:
        if wanted:
            self.ids.used.add(wanted)
            return wanted
        return self.ids.new()

    # ---------------------------------------------------------------- accounts

    def require_ability(self, ability: str) -> None:
        if ability not in self.abilities:
            raise missing_ability(ability)

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
        if not isinstance(email, str) or not _EMAIL.match(email):
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
            if not isinstance(email, str) or not _EMAIL.match(email):
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
        if ctype == "email_contact_method" and isinstance(data.get("address"), str) and not _EMAIL.match(data["address"]):
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
        self._validate_contact_method(uid, {k: v for k, v in merged.items() if k in data or k == "type"}, partial=True,
                                      cid=cid)
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
            {"id": c["id"], "type": c["type"] + "_reference", "summary": c["label"], "self": c["self"], "html_url": None}
            for c in self.contact_methods[uid].values()
        ]
        user["notification_rules"] = [
            {"id": r["id"], "type": "assignment_notification_rule_reference", "summary": r["summary"], "self": r["self"],
             "html_url": None}
            for r in self.notification_rules[uid].values()
        ]

    # ------------------------------------------------------------------- teams

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
        errors += _name_errors(data.get("name"), self.teams, tid)
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

    # --------------------------------------------------------------- schedules

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
        return self._store_schedule(None, data.get("name") or "New Schedule", data["time_zone"],
                                    data.get("description", ""), data.get("schedule_layers", []))

    def update_schedule(self, sid: str, data: dict) -> dict:
        old = self._get(self.schedules, sid, "Schedule")
        merged = {**old, **data}
        self._validate_schedule(merged)
        return self._store_schedule(sid, merged["name"], merged["time_zone"], merged.get("description", ""),
                                    merged.get("schedule_layers", []))

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

    # ------------------------------------------------------- escalation policies

    def _norm_targets(self, targets: Any) -> list[dict]:
        if not isinstance(targets, list) or not targets:
            raise invalid("Escalation rules must have at least one target")
        out = []
        for t in targets:
            if not isinstance(t, dict):
                raise invalid("Escalation rule target must be an object")
            ttype = t.get("type", "")
            if ttype in ("user", "user_reference"):
                if t.get("id") not in self.users:
                    raise invalid(f"Escalation rule target user {t.get('id')} not found")
                out.append(self.ref("user", t["id"]))
            elif ttype in ("schedule", "schedule_reference"):
                if t.get("id") not in self.schedules:
                    raise invalid(f"Escalation rule target schedule {t.get('id')} not found")
                out.append(self.ref("schedule", t["id"]))
            else:
                raise invalid("Escalation rule target type must be user_reference or schedule_reference")
        return out

    def _store_escalation_policy(self, epid, name, description, rules, team_ids, num_loops=0, handoff="if_has_services"):
        epid = self._claim_id(epid)
        if not isinstance(rules, list) or not rules:
            raise invalid("Escalation policy must have at least one escalation rule")
        norm_rules = []
        for r in rules:
            if not isinstance(r, dict):
                raise invalid("Escalation rule must be an object")
            delay = r.get("escalation_delay_in_minutes", 30)
            if not isinstance(delay, int) or isinstance(delay, bool) or delay < 1:
                raise invalid("Escalation delay in minutes must be a positive integer")
            norm_rules.append(
                {"id": r.get("id") or self.ids.new(), "escalation_delay_in_minutes": delay,
                 "targets": self._norm_targets(r.get("targets"))}
            )
        teams = []
        for tid in team_ids:
            if tid not in self.teams:
                raise invalid(f"Team {tid} not found")
            teams.append(self.ref("team", tid))
        ep = {
            "id": epid,
            "type": "escalation_policy",
            "summary": name,
            "self": self._url("escalation_policies", epid),
            "html_url": self._web("escalation_policies", epid),
            "name": name,
            "description": description,
            "num_loops": num_loops,
            "on_call_handoff_notifications": handoff,
            "escalation_rules": norm_rules,
            "teams": teams,
        }
        self.escalation_policies[epid] = ep
        self._refresh_ref("escalation_policy", epid)
        return ep

    def _ep_from_body(self, data: dict, epid: str | None) -> dict:
        errors = []
        if data.get("type") != "escalation_policy":
            errors.append("Escalation policy type must be 'escalation_policy'")
        name = data.get("name")
        errors += _name_errors(name, self.escalation_policies, epid)
        if not isinstance(data.get("escalation_rules"), list) or not data.get("escalation_rules"):
            errors.append("Escalation rules can't be empty")
        handoff = data.get("on_call_handoff_notifications", "if_has_services")
        if handoff not in ("if_has_services", "always"):
            errors.append("On call handoff notifications must be 'if_has_services' or 'always'")
        num_loops = data.get("num_loops", 0)
        if not isinstance(num_loops, int) or num_loops < 0 or num_loops > 9:
            errors.append("Num loops must be between 0 and 9")
        teams = data.get("teams", [])
        if not isinstance(teams, list) or not all(isinstance(t, dict) for t in teams):
            errors.append("Teams must be an array of team references")
        elif teams:
            self.require_ability("teams")
        if errors:
            raise invalid(*errors)
        return {"name": name, "description": data.get("description", ""), "rules": data["escalation_rules"],
                "team_ids": [t.get("id") for t in teams], "num_loops": num_loops, "handoff": handoff}

    def create_escalation_policy(self, data: dict) -> dict:
        d = self._ep_from_body(data, None)
        return self._store_escalation_policy(None, d["name"], d["description"], d["rules"], d["team_ids"],
                                             d["num_loops"], d["handoff"])

    def update_escalation_policy(self, epid: str, data: dict) -> dict:
        old = self._get(self.escalation_policies, epid, "Escalation Policy")
        merged = {**old, **data}
        merged["type"] = data.get("type", old["type"])
        d = self._ep_from_body(merged, epid)
        return self._store_escalation_policy(epid, d["name"], d["description"], d["rules"], d["team_ids"],
                                             d["num_loops"], d["handoff"])

    def delete_escalation_policy(self, epid: str) -> None:
        self._get(self.escalation_policies, epid, "Escalation Policy")
        users = [s["name"] for s in self.services.values() if s["escalation_policy"]["id"] == epid]
        if users:
            raise invalid(f"Escalation policy is in use by services: {', '.join(users)}",
                          message="Escalation Policy In Use")
        del self.escalation_policies[epid]

    def render_escalation_policy(self, ep: dict, include: Iterable[str] = ()) -> dict:
        include = set(include)
        out = {**ep, "services": [self.ref("service", s["id"]) for s in self.services.values()
                                  if s["escalation_policy"]["id"] == ep["id"]]}
        if "teams" in include:
            out["teams"] = [self.teams[t["id"]] for t in ep["teams"] if t["id"] in self.teams]
        if "services" in include:
            out["services"] = [self.render_service(self.services[s["id"]]) for s in out["services"]]
        if "targets" in include:
            out["escalation_rules"] = [
                {**r, "targets": [self._full(t) for t in r["targets"]]} for r in ep["escalation_rules"]
            ]
        return out

    def _full(self, ref: dict) -> dict:
        kind = ref["type"].removesuffix("_reference")
        obj = self._store_for(kind).get(ref["id"])
        if obj is None:
            return ref
        if kind == "schedule":
            return self.render_schedule(obj)
        return obj

    def level_targets(self, epid: str, level: int) -> list[str]:
        """User ids a level (1-based) of an escalation policy points at right now."""
        ep = self.escalation_policies[epid]
        rules = ep["escalation_rules"]
        rule = rules[min(level, len(rules)) - 1]
        users: list[str] = []
        for t in rule["targets"]:
            if t["type"] == "user_reference":
                uid = t["id"] if t["id"] in self.users else None
            else:
                uid = self.on_call_for_schedule(t["id"]) if t["id"] in self.schedules else None
            if uid and uid not in users:
                users.append(uid)
        return users

    # ----------------------------------------------------------------- services

    def _store_service(self, sid: str | None, data: dict, created: float) -> dict:
        sid = self._claim_id(sid)
        epid = data["escalation_policy"]
        epid = epid.get("id") if isinstance(epid, dict) else epid
        teams = [t.get("id") if isinstance(t, dict) else t for t in data.get("teams", [])]
        service = {
            "id": sid,
            "type": "service",
            "summary": data["name"],
            "self": self._url("services", sid),
            "html_url": self._web("service-directory", sid),
            "name": data["name"],
            "description": data.get("description", ""),
            "auto_resolve_timeout": data.get("auto_resolve_timeout", 14400),
            "acknowledgement_timeout": data.get("acknowledgement_timeout", 1800),
            "created_at": iso(created),
            "status": data.get("status", "active"),
            "escalation_policy": self.ref("escalation_policy", epid),
            "teams": [self.ref("team", t) for t in teams if t in self.teams],
            "integrations": [],
            "incident_urgency_rule": data.get("incident_urgency_rule", {"type": "constant", "urgency": "high"}),
            "scheduled_actions": data.get("scheduled_actions", []),
            "addons": [],
            "alert_creation": data.get("alert_creation", "create_alerts_and_incidents"),
        }
        if data.get("support_hours"):
            service["support_hours"] = data["support_hours"]
        self.services[sid] = service
        self._refresh_ref("service", sid)
        return service

    def _validate_service(self, data: dict, sid: str | None = None) -> None:
        errors = []
        if data.get("type") != "service":
            errors.append("Service type must be 'service'")
        errors += _name_errors(data.get("name"), self.services, sid)
        ep = data.get("escalation_policy")
        if not isinstance(ep, dict) or ep.get("id") not in self.escalation_policies:
            errors.append("Escalation policy not found")
        for key in ("auto_resolve_timeout", "acknowledgement_timeout"):
            value = data.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                errors.append(f"{key} must be a non-negative integer or null")
        rule = data.get("incident_urgency_rule")
        if rule is not None and (not isinstance(rule, dict) or rule.get("type") not in ("constant", "use_support_hours")):
            errors.append("Incident urgency rule type must be 'constant' or 'use_support_hours'")
        if data.get("alert_creation", "create_alerts_and_incidents") not in ("create_incidents", "create_alerts_and_incidents"):
            errors.append("Alert creation must be 'create_incidents' or 'create_alerts_and_incidents'")
        for t in data.get("teams", []) or []:
            if not isinstance(t, dict) or t.get("id") not in self.teams:
                errors.append("Team not found")
        if errors:
            raise invalid(*errors)

    def create_service(self, data: dict) -> dict:
        self._validate_service(data)
        service = self._store_service(None, data, self.now())
        self._emit_service_event("service.created", service)
        return service

    def update_service(self, sid: str, data: dict) -> dict:
        old = self._get(self.services, sid, "Service")
        merged = {**old, **data}
        merged["type"] = data.get("type", "service")
        self._validate_service(merged, sid)
        for key in ("name", "description", "auto_resolve_timeout", "acknowledgement_timeout", "incident_urgency_rule",
                    "alert_creation", "scheduled_actions", "support_hours"):
            if key in data:
                old[key] = data[key]
        if data.get("status") in ("active", "disabled", "maintenance"):
            old["status"] = "disabled" if data["status"] == "disabled" else "active"
        if "escalation_policy" in data:
            old["escalation_policy"] = self.ref("escalation_policy", data["escalation_policy"]["id"])
        if "teams" in data:
            old["teams"] = [self.ref("team", t["id"]) for t in data["teams"]]
        old["summary"] = old["name"]
        self._refresh_ref("service", sid)
        self._emit_service_event("service.updated", old)
        return old

    def delete_service(self, sid: str) -> None:
        service = self._get(self.services, sid, "Service")
        self._emit_service_event("service.deleted", service)
        del self.services[sid]
        for rid, rel in list(self.service_dependencies.items()):
            if sid in (rel["supporting_service"]["id"], rel["dependent_service"]["id"]):
                del self.service_dependencies[rid]
        for ext in self.extensions.values():
            ext["extension_objects"] = [o for o in ext["extension_objects"] if o["id"] != sid]

    def render_service(self, service: dict, include: Iterable[str] = ()) -> dict:
        out = dict(service)
        if service["status"] not in ("disabled", "maintenance"):
            statuses = self._open_by_service.get(service["id"])
            if statuses:
                out["status"] = "critical" if "triggered" in statuses.values() else "warning"
            else:
                out["status"] = "active"
        last = self._last_incident_at.get(service["id"])
        if last is not None:
            out["last_incident_timestamp"] = iso(last)
        include = set(include)
        if "escalation_policies" in include:
            ep = self.escalation_policies.get(service["escalation_policy"]["id"])
            if ep:
                out["escalation_policy"] = self.render_escalation_policy(ep)
        if "teams" in include:
            out["teams"] = [self.teams[t["id"]] for t in service["teams"] if t["id"] in self.teams]
        return out

    # -------------------------------------------------------- business services

    def _store_business_service(self, bid: str | None, data: dict) -> dict:
        bid = self._claim_id(bid)
        team = data.get("team")
        tid = team.get("id") if isinstance(team, dict) else team
        bs = {
            "id": bid,
            "type": "business_service",
            "summary": data["name"],
            "self": self._url("business_services", bid),
            "html_url": self._web("business-services", bid),
            "name": data["name"],
            "description": data.get("description", ""),
            "point_of_contact": data.get("point_of_contact", ""),
            "team": {"id": tid, "type": "team_reference", "self": self._url("teams", tid)} if tid else None,
        }
        self.business_services[bid] = bs
        self._refresh_ref("business_service", bid)
        return bs

    def _validate_business_service(self, data: dict, bid: str | None = None) -> None:
        errors = []
        errors += _name_errors(data.get("name"), self.business_services, bid)
        team = data.get("team")
        if isinstance(team, dict) and team.get("id") and team["id"] not in self.teams:
            errors.append("Team not found")
        if errors:
            raise invalid(*errors)

    def create_business_service(self, data: dict) -> dict:
        self._validate_business_service(data)
        return self._store_business_service(None, data)

    def update_business_service(self, bid: str, data: dict) -> dict:
        old = self._get(self.business_services, bid, "Business Service")
        merged = {**old, **data}
        self._validate_business_service(merged, bid)
        return self._store_business_service(bid, merged)

    def delete_business_service(self, bid: str) -> None:
        self._get(self.business_services, bid, "Business Service")
        del self.business_services[bid]
        for rid, rel in list(self.service_dependencies.items()):
            if bid in (rel["supporting_service"]["id"], rel["dependent_service"]["id"]):
                del self.service_dependencies[rid]

    # ------------------------------------------------------ service dependencies

    _DEP_TYPES = {
        "service": "service",
        "service_reference": "service",
        "technical_service": "service",
        "technical_service_reference": "service",
        "business_service": "business_service",
        "business_service_reference": "business_service",
    }
    MAX_DEPENDENCIES_PER_SERVICE = 2000

    def _dep_end(self, end: Any, role: str) -> tuple[str, str]:
        if not isinstance(end, dict) or not isinstance(end.get("id"), str):
            raise invalid(f"{role} must be an object with id and type")
        kind = self._DEP_TYPES.get(end.get("type", ""))
        if kind is None:
            raise invalid(f"{role}.type must be 'service' or 'business_service'")
        store = self.services if kind == "service" else self.business_services
        if end["id"] not in store:
            raise not_found("Service" if kind == "service" else "Business Service")
        return kind, end["id"]

    def _parse_relationships(self, relationships: Any) -> list[tuple[tuple[str, str], tuple[str, str]]]:
        if not isinstance(relationships, list) or not relationships:
            raise invalid("relationships must be a non-empty array")
        pairs = []
        for rel in relationships:
            if not isinstance(rel, dict):
                raise invalid("relationship must be an object")
            sup = self._dep_end(rel.get("supporting_service"), "supporting_service")
            dep = self._dep_end(rel.get("dependent_service"), "dependent_service")
            if sup == dep:
                raise invalid("A service cannot depend on itself")
            if dep[0] == "service" and sup[0] == "business_service":
                raise invalid("A technical service cannot depend on a business service")
            pairs.append((sup, dep))
        return pairs

    def _find_dependency(self, sup: tuple[str, str], dep: tuple[str, str]) -> str | None:
        for rid, rel in self.service_dependencies.items():
            if (rel["supporting_service"]["id"], rel["dependent_service"]["id"]) == (sup[1], dep[1]):
                return rid
        return None

    def associate_dependencies(self, relationships: Any) -> list[dict]:
        pairs = self._parse_relationships(relationships)
        out = []
        for sup, dep in pairs:
            rid = self._find_dependency(sup, dep)
            if rid is None:
                if self._would_cycle(sup[1], dep[1]):
                    raise invalid("Dependency would create a cycle")
                for sid in (sup[1], dep[1]):
                    if sum(sid in (r["supporting_service"]["id"], r["dependent_service"]["id"])
                           for r in self.service_dependencies.values()) >= self.MAX_DEPENDENCIES_PER_SERVICE:
                        raise invalid(f"Service {sid} already has {self.MAX_DEPENDENCIES_PER_SERVICE} dependencies")
                rid = self.ids.new("D", 14)
                self.service_dependencies[rid] = {
                    "id": rid,
                    "type": "service_dependency",
                    "supporting_service": {"id": sup[1], "type": sup[0]},
                    "dependent_service": {"id": dep[1], "type": dep[0]},
                }
            out.append(self.service_dependencies[rid])
        return out

    def _would_cycle(self, supporting: str, dependent: str) -> bool:
        # A cycle appears if `dependent` already (transitively) supports `supporting`.
        stack, seen = [supporting], set()
        while stack:
            node = stack.pop()
            if node == dependent:
                return True
            if node in seen:
                continue
            seen.add(node)
            stack.extend(r["dependent_service"]["id"] for r in self.service_dependencies.values()
                         if r["supporting_service"]["id"] == node)
        # supporting's dependents reaching `dependent` means no cycle; check the other direction.
        stack, seen = [dependent], set()
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            for r in self.service_dependencies.values():
                if r["supporting_service"]["id"] == node:
                    if r["dependent_service"]["id"] == supporting:
                        return True
                    stack.append(r["dependent_service"]["id"])
        return False

    def disassociate_dependencies(self, relationships: Any) -> list[dict]:
        pairs = self._parse_relationships(relationships)
        found = []
        for sup, dep in pairs:
            rid = self._find_dependency(sup, dep)
            if rid is None:
                raise not_found("Service dependency")
            found.append(rid)
        return [self.service_dependencies.pop(rid) for rid in found]

    def dependencies_of(self, kind: str, sid: str) -> list[dict]:
        store = self.services if kind == "service" else self.business_services
        self._get(store, sid, "Service" if kind == "service" else "Business Service")
        return [r for r in self.service_dependencies.values()
                if sid in (r["supporting_service"]["id"], r["dependent_service"]["id"])]

    def business_services_depending_on(self, sid: str) -> list[str]:
        """Business services that (transitively) depend on technical service ``sid``."""
        out: list[str] = []
        stack, seen = [sid], set()
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            for r in self.service_dependencies.values():
                if r["supporting_service"]["id"] == node:
                    dep = r["dependent_service"]
                    if dep["type"] == "business_service" and dep["id"] not in out:
                        out.append(dep["id"])
                    stack.append(dep["id"])
        return out

    # -------------------------------------------------------------- extensions

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

    # --------------------------------------------------- webhook subscriptions

    V3_EVENT_TYPES = frozenset(
        {
            "incident.acknowledged", "incident.annotated", "incident.conference_bridge.updated",
            "incident.custom_field_values.updated", "incident.delegated", "incident.escalated",
            "incident.incident_type.changed", "incident.priority_updated", "incident.reassigned",
            "incident.reopened", "incident.resolved", "incident.responder.added", "incident.responder.replied",
            "incident.role.assigned", "incident.service_updated", "incident.status_update_published",
            "incident.task.completed", "incident.task.created", "incident.task.updated", "incident.triggered",
            "incident.unacknowledged", "incident.action_invocation.created",
            "incident.action_invocation.terminated", "incident.action_invocation.updated",
            "incident.workflow.started", "incident.workflow.completed", "service.created",
            "service.custom_field_values.updated", "service.deleted", "service.updated",
        }
    )

    def _validate_filter(self, flt: Any, errors: list[str]) -> None:
        if not isinstance(flt, dict) or flt.get("type") not in ("account_reference", "service_reference", "team_reference"):
            errors.append("filter.type must be account_reference, service_reference or team_reference")
            return
        if flt["type"] == "service_reference" and flt.get("id") not in self.services:
            errors.append("filter.id: service not found")
        if flt["type"] == "team_reference" and flt.get("id") not in self.teams:
            errors.append("filter.id: team not found")

    def _validate_events(self, events: Any, errors: list[str]) -> None:
        if not isinstance(events, list) or not events:
            errors.append("events must be a non-empty array")
            return
        unknown = [e for e in events if e not in self.V3_EVENT_TYPES]
        if unknown:
            errors.append(f"events: unknown event types {', '.join(map(str, unknown))}")

    def create_webhook_subscription(self, data: dict, secret: str | None = None) -> dict:
        errors: list[str] = []
        if data.get("type") != "webhook_subscription":
            errors.append("type must be 'webhook_subscription'")
        dm = data.get("delivery_method")
        if not isinstance(dm, dict) or dm.get("type") != "http_delivery_method":
            errors.append("delivery_method.type must be 'http_delivery_method'")
        elif not isinstance(dm.get("url"), str) or not dm["url"].startswith(("http://", "https://")):
            errors.append("delivery_method.url is invalid")
        else:
            headers = dm.get("custom_headers") or []
            names = [h.get("name") for h in headers if isinstance(h, dict)]
            if len(names) != len(headers) or any(not isinstance(n, str) or not n for n in names):
                errors.append("delivery_method.custom_headers must be objects with name and value")
            elif len({n.lower() for n in names}) != len(names):
                errors.append("delivery_method.custom_headers names must be unique")
        self._validate_events(data.get("events"), errors)
        self._validate_filter(data.get("filter"), errors)
        if errors:
            raise invalid(*errors)
        wid = self._claim_id(data.get("id"))
        secret = secret or secrets.token_urlsafe(24)
        self._subscription_secrets[wid] = secret
        flt = {"type": data["filter"]["type"]}
        if data["filter"].get("id"):
            flt["id"] = data["filter"]["id"]
        sub = {
            "id": wid,
            "type": "webhook_subscription",
            "active": bool(data.get("active", True)),
            "delivery_method": {
                "id": self.ids.new(),
                "secret": None,
                "temporarily_disabled": False,
                "type": "http_delivery_method",
                "url": dm["url"],
                "custom_headers": [{"name": h["name"], "value": str(h.get("value", ""))} for h in dm.get("custom_headers") or []],
            },
            "description": data.get("description", ""),
            "events": list(dict.fromkeys(data["events"])),
            "filter": flt,
        }
        self.webhook_subscriptions[wid] = sub
        return sub

    def subscription_secret(self, wid: str) -> str:
        return self._subscription_secrets[wid]

    def render_webhook_subscription(self, sub: dict, with_secret: bool = False) -> dict:
        dm = dict(sub["delivery_method"])
        if with_secret:
            dm["secret"] = self._subscription_secrets[sub["id"]]
        else:
            # "The header values are redacted in GET requests" (webhooks 01-Overview.md).
            dm["custom_headers"] = [{"name": h["name"], "value": "<redacted>"} for h in dm["custom_headers"]]
        return {**sub, "delivery_method": dm}

    def update_webhook_subscription(self, wid: str, data: dict) -> dict:
        sub = self._get(self.webhook_subscriptions, wid, "Webhook Subscription")
        errors: list[str] = []
        if "events" in data:
            self._validate_events(data["events"], errors)
        if "filter" in data:
            self._validate_filter(data["filter"], errors)
        if "active" in data and not isinstance(data["active"], bool):
            errors.append("active must be a boolean")
        if errors:
            raise invalid(*errors)
        if "description" in data:
            sub["description"] = data["description"]
        if "events" in data:
            sub["events"] = list(dict.fromkeys(data["events"]))
        if "filter" in data:
            sub["filter"] = {k: v for k, v in data["filter"].items() if k in ("id", "type")}
        if "active" in data:
            sub["active"] = data["active"]
        return sub

    def delete_webhook_subscription(self, wid: str) -> None:
        self._get(self.webhook_subscriptions, wid, "Webhook Subscription")
        del self.webhook_subscriptions[wid]
        self._subscription_secrets.pop(wid, None)
        self.dispatcher.forget(wid)

    def enable_webhook_subscription(self, wid: str) -> dict:
        sub = self._get(self.webhook_subscriptions, wid, "Webhook Subscription")
        sub["delivery_method"]["temporarily_disabled"] = False
        self.dispatcher.enabled(wid)
        return sub

    def ping_webhook_subscription(self, wid: str) -> None:
        sub = self._get(self.webhook_subscriptions, wid, "Webhook Subscription")
        self.dispatcher.send_v3(sub, "pagey.ping", "pagey", "pagey",
                                {"message": "Hello from your friend Pagey!", "type": "ping"}, None)

    async def drain_webhooks(self, timeout: float = 5.0) -> None:
        """Wait until every queued webhook was delivered or dropped (TimeoutError after ``timeout``)."""
        await self.dispatcher.drain(timeout)

    # ------------------------------------------------- workflows / response plays

    def _new_workflow(self, wid: str, data: dict, created: float) -> dict:
        return {
            "id": wid,
            "type": "incident_workflow",
            "summary": data["name"],
            "self": self._url("incident_workflows", wid),
            "html_url": self._web("incident-workflows/workflows", wid),
            "name": data["name"],
            "description": data.get("description", ""),
            "created_at": iso(created),
            "is_enabled": bool(data.get("is_enabled", True)),
            "steps": data.get("steps", []),
        }

    def create_incident_workflow(self, data: dict) -> dict:
        self.require_ability("incident_workflows")
        if not isinstance(data.get("name"), str) or not data["name"].strip():
            raise invalid("Name can't be blank")
        wid = self.ids.new()
        wf = self._new_workflow(wid, data, self.now())
        self.incident_workflows[wid] = wf
        return wf

    def delete_incident_workflow(self, wid: str) -> None:
        self.require_ability("incident_workflows")
        self._get(self.incident_workflows, wid, "Incident Workflow")
        del self.incident_workflows[wid]

    def _new_response_play(self, rid: str, data: dict) -> dict:
        return {
            "id": rid,
            "type": "response_play",
            "summary": data["name"],
            "self": self._url("response_plays", rid),
            "html_url": self._web("response_plays", rid),
            "name": data["name"],
            "description": data.get("description", ""),
            "team": None,
            "subscribers": [],
            "subscribers_message": None,
            "responders": [],
            "responders_message": None,
            "runnability": "services",
            "conference_number": data.get("conference_number"),
            "conference_url": data.get("conference_url"),
            "conference_type": data.get("conference_type", "none"),
        }

    # -------------------------------------------------------------- rate limits

    def take_rate_limit(self, bucket: str) -> tuple[bool, int, int, int]:
        """Count one request against ``bucket``: (allowed, limit, remaining, reset_seconds).

        A fixed one-minute window per token, opened by the first request after the
        previous window ended, as the ``ratelimit-*`` headers describe it.
        """
        now = self.now()
        limit = int(self.rate_limit_per_minute)
        window = self._rate_windows.get(bucket)
        if window is None or now >= window[0] + 60.0:
            window = [now, 0]
            self._rate_windows[bucket] = window
        reset = max(1, int(window[0] + 60.0 - now + 0.999))
        if window[1] >= limit:
            return False, limit, 0, reset
        window[1] += 1
        return True, limit, limit - window[1], reset

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _get(store: dict, key: str, what: str) -> dict:
        obj = store.get(key)
        if obj is None:
            raise not_found(what)
        return obj


__all__ = ["DEFAULT_API_KEY", "PDError", "PagerDutyState", "READ_ONLY_ROLES", "USER_ROLES"]
