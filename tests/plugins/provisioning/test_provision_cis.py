"""``dutybridge provision cis``: technical and business services, the cmdb_rel_ci walk
(no depth limit, CI classes, a cycle), dependencies associated once, custom services
with ``--plan`` and a child without a parent."""

from __future__ import annotations

import pytest

from dutybridge_sandbox.faults import FaultInjector
from tests.plugins.provisioning.world import outcomes, summary

pytestmark = pytest.mark.slow

PORTAL = "7467e48000e4a31acf35ac81ad6ca4b2"
PORTAL_WEB = "1721ae5a0ea68e0a533573f9cc49850d"
LB = "a801cd4b9eccf1678c72d5a31396e39d"
PAYMENTS_API = "720b630f97bc169b69b1cfcb70dbd140"
DB_01 = "6eb44e1a6c6757691cc51b3f09e7036e"
DEPENDS_ON = "43ffe84a2aed8da9750ca292c679ad0e"
CI_MODE = {"mapping_mode": "cis_and_assignment_groups"}


def by_name(world):
    out = {s["name"]: ("service", s["id"]) for s in world.pd.services.values()}
    out.update({b["name"]: ("business_service", b["id"]) for b in world.pd.business_services.values()})
    return out


def dependencies(world):
    names = {v[1]: k for k, v in by_name(world).items()}
    return sorted(
        (names[d["dependent_service"]["id"]], names[d["supporting_service"]["id"]])
        for d in world.pd.service_dependencies.values()
    )


async def test_a_business_service_with_its_whole_dependency_map(make_world):
    world = await make_world(**CI_MODE)
    code, lines, err = await world.cli(
        "provision", "cis", "Customer Portal", "--as", "business", "--with-dependencies", "--link-existing"
    )
    assert code == 0, err
    names = by_name(world)
    assert names["Customer Portal"][0] == "business_service"
    for ci in ("portal-web", "lb-01", "payments-api", "db-01"):  # three levels down
        assert names[ci][0] == "service"
    assert dependencies(world) == [
        ("Customer Portal", "portal-web"),
        ("payments-api", "db-01"),
        ("portal-web", "lb-01"),
        ("portal-web", "payments-api"),
    ]
    # Each technical service uses its CI's assignment group's policy (provisioned first).
    svc = world.pd.services[names["portal-web"][1]]
    assert svc["escalation_policy"]["id"] == "PEPNET1"
    link = await world.store.get_link("ci", sn_id=PORTAL_WEB)
    assert link.pd_id == names["portal-web"][1]
    counts = (
        len(world.pd.services),
        len(world.pd.business_services),
        len(world.pd.service_dependencies),
        len(world.pd.webhook_subscriptions),
    )

    code, lines, _ = await world.cli(
        "provision", "cis", "Customer Portal", "--as", "business", "--with-dependencies", "--link-existing"
    )
    assert code == 0
    assert summary(lines)["created"] == 0
    assert (
        len(world.pd.services),
        len(world.pd.business_services),
        len(world.pd.service_dependencies),
        len(world.pd.webhook_subscriptions),
    ) == counts


async def test_a_cycle_is_cut_and_each_ci_provisioned_once(make_world):
    world = await make_world(**CI_MODE)
    world.sn.insert("cmdb_rel_ci", {"parent": DB_01, "child": PAYMENTS_API, "type": DEPENDS_ON})
    code, lines, err = await world.cli("provision", "cis", "payments-api", "--with-dependencies", "--link-existing")
    assert code == 0, err
    assert sorted(o["name"] for o in outcomes(lines, "ci")) == ["db-01", "payments-api"]
    assert dependencies(world) == [("payments-api", "db-01")]
    [cut] = [o for o in outcomes(lines, "dependency") if o["status"] == "skipped"]
    assert cut["name"] == "db-01 -> payments-api" and "cycle" in cut["detail"]


async def test_ci_classes_choose_what_the_walk_takes(make_world):
    world = await make_world(ci_classes=["cmdb_ci_appl"], **CI_MODE)
    code, lines, err = await world.cli(
        "provision", "cis", PORTAL, "--as", "business", "--with-dependencies", "--link-existing"
    )
    assert code == 0, err
    names = by_name(world)
    assert "lb-01" not in names and "db-01" not in names
    assert {"portal-web", "payments-api"} <= set(names)
    # Servers are not walked into, and are reported as left out.
    assert sorted(o["sn_id"] for o in outcomes(lines, "ci") if o["status"] == "skipped") == sorted([LB, DB_01])


async def test_an_existing_business_service_name_is_refused(make_world):
    world = await make_world(**CI_MODE)
    code, lines, _ = await world.cli("provision", "cis", "Payments", "--as", "business")
    assert code == 1
    [ci] = outcomes(lines, "ci")
    assert ci["status"] == "failed" and "business service named 'Payments' already exists" in ci["detail"]


CUSTOM = [
    {
        "table": "cmdb_ci_service",
        "type": "business",
        "name_column": "name",
        "relationship": "consumed_by",
        "related_table": "cmdb_ci_appl",
        "related_type": "technical",
    }
]


async def test_custom_services_plan_lists_children_without_parent_as_errors(make_world):
    world = await make_world(custom_services=CUSTOM, **CI_MODE)
    orphan = world.sn.insert("cmdb_ci_appl", {"name": "orphan-app", "sys_class_name": "cmdb_ci_appl"})
    before = (len(world.pd.services), len(world.pd.business_services))
    code, lines, _err = await world.cli("provision", "cis", "--custom", "--plan")
    assert code == 1
    got = {o["name"]: (o["status"], o["detail"]) for o in outcomes(lines)}
    assert got["orphan-app"] == ("failed", "child CI without a parent: not provisioned")
    assert got["Payments"] == ("planned", "business service")
    assert got["payments-api"] == ("planned", "technical service")
    assert got["Customer Portal -> portal-web"][0] == "planned"
    assert (len(world.pd.services), len(world.pd.business_services)) == before

    code, lines, _err = await world.cli("provision", "cis", "--custom", "--link-existing")
    assert code == 1  # the orphan
    assert dependencies(world) == [("Customer Portal", "portal-web"), ("Payments", "payments-api")]
    assert not [s for s in world.pd.services.values() if s["name"] == "orphan-app"]
    assert orphan["sys_id"] not in {o["sn_id"] for o in outcomes(lines) if o["status"] != "failed"}


async def test_a_failed_dependency_walk_fails_the_command_cleanly(make_world):
    world = await make_world(**CI_MODE)
    world.sn.faults = FaultInjector.parse("GET /api/now/table/cmdb_rel_ci: error_rate=1")
    code, lines, err = await world.cli("provision", "cis", "Customer Portal", "--as", "business", "--with-dependencies")
    assert code == 1
    [failed] = [o for o in outcomes(lines) if o["status"] == "failed"]
    assert failed["kind"] == "cis" and "cmdb_rel_ci" in failed["detail"]
    assert "Traceback" not in err
    assert not world.pd.business_services.keys() - {"PBSPAY1"}
