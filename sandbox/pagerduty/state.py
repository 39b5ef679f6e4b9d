"""The sandbox's PagerDuty account: ``PagerDutyState`` holds every resource in memory and
composes the operations each resource family's module defines on it."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from ..faults import FaultInjector
from . import extension_schemas
from .errors import PDError, missing_ability, not_found
from .escalation_policies import EscalationPolicyOps
from .extensions import ExtensionOps
from .incident_changes import IncidentChangeOps
from .incident_extras import IncidentExtraOps
from .incidents import IncidentOps
from .schedules import ScheduleOps
from .services import ServiceOps
from .teams import TEAM_ROLES, TeamOps
from .users import CONTACT_METHOD_TYPES, UserOps
from .util import READ_ONLY_ROLES, USER_ROLES, IdGen
from .webhook_subscriptions import WebhookSubscriptionOps
from .webhooks import WebhookDispatcher
from .workflows import WorkflowOps

DEFAULT_API_KEY = "sandbox-pd-full-key"

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


class PagerDutyState(
    UserOps,
    TeamOps,
    ScheduleOps,
    EscalationPolicyOps,
    ServiceOps,
    ExtensionOps,
    WebhookSubscriptionOps,
    WorkflowOps,
    IncidentOps,
    IncidentChangeOps,
    IncidentExtraOps,
):
    """An in-memory PagerDuty account. Build it with :meth:`from_seed`.

    The HTTP routes parse requests and call the methods here; tests and ``dutybridge
    demo`` call the same methods directly ("act as a human in PagerDuty") and get the
    same log entries and webhooks.

    Resources are stored as the dicts the API returns (``state.incidents[id]["status"]``),
    so inspection from Python sees exactly what a client sees. Computed fields (an
    escalation policy's services, a team's members...) are filled in when rendered.

    Times come from ``state.now()``: epoch seconds, replaceable (``state.now = lambda: t``)
    so rate-limit windows and timestamps need no sleeping in tests.
    """

    def __init__(
        self,
        seed: dict | None = None,
        *,
        api_url: str = "https://api.pagerduty.com",
        now: Callable[[], float] | None = None,
    ):
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
        stores = [
            self._refs,
            self.users,
            self.contact_methods,
            self.notification_rules,
            self.teams,
            self.schedules,
            self.escalation_policies,
            self.services,
            self.business_services,
            self.priorities,
            self.extension_schemas,
            self.extensions,
            self.incident_workflows,
            self.response_plays,
            self.incidents,
            self.log_entries,
            self.notes,
            self.status_updates,
        ]

        def relink(node: Any) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    if isinstance(value, str):
                        if key == "self" and value.startswith(old):
                            node[key] = new + value[len(old) :]
                    else:
                        relink(value)
            elif isinstance(node, list):
                for value in node:
                    relink(value)

        for store in stores:
            relink(store)

    @classmethod
    def from_seed(cls, seed: dict | None, **kwargs) -> PagerDutyState:
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
            self._store_schedule(
                s["id"], s["name"], s.get("time_zone", "UTC"), s.get("description", ""), self._seed_layers(s, created)
            )
        for ep in seed.get("escalation_policies", []):
            rules = [
                {
                    "escalation_delay_in_minutes": r.get("escalation_delay_in_minutes", 30),
                    "targets": r.get("targets", []),
                }
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
        ref = {
            "id": rid,
            "type": rtype,
            "summary": summary,
            "self": f"{self.api_url}/{collection}/{rid}",
            "html_url": html,
        }
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

    async def drain_webhooks(self, timeout: float = 5.0) -> None:
        """Wait until every queued webhook was delivered or dropped (TimeoutError after ``timeout``)."""
        await self.dispatcher.drain(timeout)

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _get(store: dict, key: str, what: str) -> dict:
        obj = store.get(key)
        if obj is None:
            raise not_found(what)
        return obj


__all__ = [
    "CONTACT_METHOD_TYPES",
    "DEFAULT_API_KEY",
    "READ_ONLY_ROLES",
    "TEAM_ROLES",
    "USER_ROLES",
    "PDError",
    "PagerDutyState",
]
