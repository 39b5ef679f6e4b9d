"""Encoded queries, pagination headers, field selection and display values."""

from __future__ import annotations

import re

import pytest
from yarl import URL

DATABASE = "791d31c38a869b0f335daf24593fd37d"
NETWORK = "c9f3e1c4781d0ed7199cc9f411b78597"
ALICE = "f164b40bc4b53aa13fb15510f77528f4"
BOB = "1b4d13e3bdcc91087aa6422d46dd25e7"


@pytest.fixture
def incidents(sn_state):
    """Five incidents a minute apart: (short_description, impact, urgency, group, state)."""
    rows = [
        ("Disk full on db-01", 1, 1, DATABASE, "1"),
        ("Slow queries", 2, 2, DATABASE, "2"),
        ("Switch flapping", 1, 2, NETWORK, "2"),
        ("VPN down for one user", 3, 3, NETWORK, "6"),
        ("Backup job failed", 2, 3, "", "1"),
    ]
    out = []
    for text, impact, urgency, group, state in rows:
        sn_state.advance(60)
        out.append(
            sn_state.insert(
                "incident",
                {
                    "short_description": text,
                    "impact": impact,
                    "urgency": urgency,
                    "assignment_group": group,
                    "state": state,
                },
                user="alice.nguyen",
            )
        )
    return out


async def _query(client, headers, table, query=None, **params):
    if query is not None:
        params["sysparm_query"] = query
    response = await client.get(f"/api/now/table/{table}", params=params, headers=headers)
    assert response.status == 200, await response.text()
    return (await response.json())["result"], response


async def _texts(client, headers, query):
    result, _ = await _query(client, headers, "incident", query, sysparm_fields="short_description")
    return sorted(r["short_description"] for r in result)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("priority=1", ["Disk full on db-01"]),
        ("priority!=1", ["Backup job failed", "Slow queries", "Switch flapping", "VPN down for one user"]),
        ("state=2^priority=2", ["Switch flapping"]),
        ("priority=1^ORpriority=5", ["Disk full on db-01", "VPN down for one user"]),
        ("state=2^ORstate=6^assignment_group=" + NETWORK, ["Switch flapping", "VPN down for one user"]),
        ("priority=1^NQstate=6", ["Disk full on db-01", "VPN down for one user"]),
        ("stateIN1,6", ["Backup job failed", "Disk full on db-01", "VPN down for one user"]),
        ("stateNOT IN1,6", ["Slow queries", "Switch flapping"]),
        ("short_descriptionSTARTSWITHdisk", ["Disk full on db-01"]),
        ("short_descriptionENDSWITHFAILED", ["Backup job failed"]),
        ("short_descriptionLIKEdown", ["VPN down for one user"]),
        ("short_descriptionNOTLIKEo", ["Switch flapping"]),
        ("assignment_groupISEMPTY", ["Backup job failed"]),
        ("assignment_groupISNOTEMPTY^state=1", ["Disk full on db-01"]),
        ("priority>3", ["Backup job failed", "VPN down for one user"]),
        ("priority>=3", ["Backup job failed", "Slow queries", "VPN down for one user"]),
        ("priority<2", ["Disk full on db-01"]),
        ("priority<=2", ["Disk full on db-01", "Switch flapping"]),
        ("assignment_group.name=Database", ["Disk full on db-01", "Slow queries"]),
        ("assignment_group.manager.user_name=bob.smith", ["Switch flapping", "VPN down for one user"]),
        ("assignment_group.nameSTARTSWITHnet^state!=6", ["Switch flapping"]),
        ("short_description=slow queries", ["Slow queries"]),
    ],
)
async def test_encoded_query_operators(sn_client, sn_admin, incidents, query, expected):
    assert await _texts(sn_client, sn_admin, query) == expected


async def test_datetime_fields_compare_as_servicenow_timestamps(sn_client, sn_admin, incidents):
    third = incidents[2]["sys_created_on"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", third)
    after = await _texts(sn_client, sn_admin, f"sys_created_on>{third}")
    assert after == ["Backup job failed", "VPN down for one user"]
    since = await _texts(sn_client, sn_admin, f"sys_created_on>={third}")
    assert len(since) == 3
    day, clock = third.split(" ")
    generated = await _texts(sn_client, sn_admin, f"sys_created_on>javascript:gs.dateGenerate('{day}','{clock}')")
    assert generated == after


async def test_an_invalid_term_is_ignored_and_the_rest_applies(sn_client, sn_state, sn_admin, incidents):
    assert await _texts(sn_client, sn_admin, "u_nonexistent=1^priority=1") == ["Disk full on db-01"]
    assert await _texts(sn_client, sn_admin, "priority=1^ORu_nonexistent=1") == ["Disk full on db-01"]
    assert len(await _texts(sn_client, sn_admin, "u_nonexistent=1")) == 5, (
        "a query with only invalid terms filters nothing"
    )
    assert "u_nonexistent=1" in sn_state.ignored_query_terms
    sn_state.invalid_query_returns_no_rows = True
    assert await _texts(sn_client, sn_admin, "u_nonexistent=1^priority=1") == []


async def test_orderby_and_orderbydesc(sn_client, sn_admin, incidents):
    result, _ = await _query(
        sn_client,
        sn_admin,
        "incident",
        "ORDERBYpriority^ORDERBYDESCshort_description",
        sysparm_fields="priority,short_description",
    )
    assert [(r["priority"], r["short_description"]) for r in result] == [
        ("1", "Disk full on db-01"),
        ("2", "Switch flapping"),
        ("3", "Slow queries"),
        ("4", "Backup job failed"),
        ("5", "VPN down for one user"),
    ]
    newest_first, _ = await _query(
        sn_client, sn_admin, "incident", "ORDERBYDESCsys_created_on", sysparm_fields="number"
    )
    assert [r["number"] for r in newest_first] == [i["number"] for i in reversed(incidents)]
    by_group, _ = await _query(
        sn_client,
        sn_admin,
        "incident",
        "assignment_groupISNOTEMPTY^ORDERBYassignment_group.name^ORDERBYnumber",
        sysparm_fields="number",
    )
    assert [r["number"] for r in by_group] == [incidents[i]["number"] for i in (0, 1, 2, 3)]


async def test_name_value_pairs_filter_like_a_query(sn_client, sn_admin, incidents):
    result, _ = await _query(sn_client, sn_admin, "incident", state="In Progress", assignment_group="Database")
    assert [r["short_description"] for r in result] == ["Slow queries"]


async def test_pagination_headers(sn_client, sn_admin, incidents):
    seen = []
    page, response = await _query(sn_client, sn_admin, "incident", "ORDERBYnumber", sysparm_limit=2)
    assert response.headers["X-Total-Count"] == "5"
    while True:
        seen += [r["number"] for r in page]
        links = dict((rel, URL(url)) for url, rel in re.findall(r'<([^>]+)>;rel="(\w+)"', response.headers["Link"]))
        assert set(links) >= {"first", "last"}
        assert links["first"].query["sysparm_offset"] == "0"
        assert links["last"].query["sysparm_offset"] == "4"
        assert links["first"].query["sysparm_query"] == "ORDERBYnumber"
        assert links["first"].query["sysparm_limit"] == "2"
        if "next" not in links:
            assert "prev" in links
            break
        response = await sn_client.get(links["next"].path_qs, headers=sn_admin)
        page = (await response.json())["result"]
    assert seen == sorted(i["number"] for i in incidents)


async def test_link_urls_echo_the_request_query_string(sn_client, sn_admin, incidents):
    # As in a header captured from an instance: the caller's own encoding is kept, so
    # the commas of sysparm_fields stay raw inside each <url>.
    response = await sn_client.get(
        "/api/now/table/incident?sysparm_fields=number,state&sysparm_query=stateIN1,2&sysparm_limit=1&sysparm_offset=1",
        headers=sn_admin,
    )
    assert response.headers["X-Total-Count"] == "4"
    first, prev, nxt, last = re.findall(r'<([^>]+)>;rel="(\w+)"', response.headers["Link"])
    assert [rel for _, rel in (first, prev, nxt, last)] == ["first", "prev", "next", "last"]
    assert nxt[0].endswith(
        "/api/now/table/incident?sysparm_fields=number,state&sysparm_query=stateIN1,2&sysparm_offset=2&sysparm_limit=1"
    )
    assert response.headers["Link"].count(",") > 3, "raw commas inside the URLs, not only between links"
    assert last[0].endswith("sysparm_offset=3&sysparm_limit=1")
    assert first[0].endswith("sysparm_offset=0&sysparm_limit=1") and prev[0].endswith(
        "sysparm_offset=0&sysparm_limit=1"
    )


async def test_offset_beyond_the_end_and_no_count(sn_client, sn_admin, incidents):
    page, response = await _query(sn_client, sn_admin, "incident", sysparm_offset=10)
    assert page == []
    assert response.headers["X-Total-Count"] == "5"
    page, response = await _query(sn_client, sn_admin, "incident", sysparm_limit=3, sysparm_no_count="true")
    assert len(page) == 3
    assert "X-Total-Count" not in response.headers
    assert 'rel="next"' in response.headers["Link"]


async def test_sysparm_fields_selects_and_dot_walks(sn_client, sn_admin, incidents):
    result, _ = await _query(
        sn_client,
        sn_admin,
        "incident",
        "number=" + incidents[0]["number"],
        sysparm_fields="number,assignment_group.name,nonsense,priority",
    )
    assert result == [{"number": incidents[0]["number"], "assignment_group.name": "Database", "priority": "1"}]


async def test_reference_fields_read_as_link_and_value(sn_client, sn_admin, incidents):
    record = (
        await (await sn_client.get(f"/api/now/table/incident/{incidents[0]['sys_id']}", headers=sn_admin)).json()
    )["result"]
    base = str(sn_client.make_url("")).rstrip("/")
    assert record["assignment_group"] == {"link": f"{base}/api/now/table/sys_user_group/{DATABASE}", "value": DATABASE}
    assert record["assigned_to"] == ""
    plain = await sn_client.get(
        f"/api/now/table/incident/{incidents[0]['sys_id']}",
        params={"sysparm_exclude_reference_link": "true"},
        headers=sn_admin,
    )
    assert (await plain.json())["result"]["assignment_group"] == DATABASE


async def test_display_value_modes(sn_client, sn_admin, incidents):
    url = f"/api/now/table/incident/{incidents[0]['sys_id']}"
    base = str(sn_client.make_url("")).rstrip("/")
    shown = (await (await sn_client.get(url, params={"sysparm_display_value": "true"}, headers=sn_admin)).json())[
        "result"
    ]
    assert shown["state"] == "New"
    assert shown["priority"] == "1 - Critical"
    assert shown["impact"] == "1 - High"
    assert shown["active"] == "true"
    assert shown["assignment_group"] == {
        "display_value": "Database",
        "link": f"{base}/api/now/table/sys_user_group/{DATABASE}",
    }
    assert shown["opened_by"]["display_value"] == "Alice Nguyen"

    plain = (
        await (
            await sn_client.get(
                url,
                params={"sysparm_display_value": "true", "sysparm_exclude_reference_link": "true"},
                headers=sn_admin,
            )
        ).json()
    )["result"]
    assert plain["assignment_group"] == "Database"

    both = (await (await sn_client.get(url, params={"sysparm_display_value": "all"}, headers=sn_admin)).json())[
        "result"
    ]
    assert both["state"] == {"display_value": "New", "value": "1"}
    assert both["assignment_group"] == {
        "display_value": "Database",
        "link": f"{base}/api/now/table/sys_user_group/{DATABASE}",
        "value": DATABASE,
    }
    assert both["short_description"] == {"display_value": "Disk full on db-01", "value": "Disk full on db-01"}


async def test_integer_display_values_are_grouped_like_the_ui(sn_client, sn_state, sn_admin, incidents):
    sn_state.tables["incident"][incidents[0]["sys_id"]]["reassignment_count"] = "1234"
    shown = await sn_client.get(
        f"/api/now/table/incident/{incidents[0]['sys_id']}",
        params={"sysparm_display_value": "true", "sysparm_fields": "reassignment_count"},
        headers=sn_admin,
    )
    assert (await shown.json())["result"] == {"reassignment_count": "1,234"}


async def test_unordered_lists_are_not_in_insertion_order_guaranteed(sn_client, sn_admin, incidents):
    # Without ORDERBY the instance returns rows in database order; the sandbox
    # uses sys_id order so that code relying on creation order fails here too.
    result, _ = await _query(sn_client, sn_admin, "incident", sysparm_fields="sys_id")
    assert [r["sys_id"] for r in result] == sorted(i["sys_id"] for i in incidents)


def test_equality_in_every_group_finds_what_a_full_scan_finds(sn_state, incidents):
    # Equality terms are tested inline before the whole query (the lookup a sync makes:
    # sys_id ^NQ correlation_id ^NQ ...); the result must be the full scan's, in sys_id order.
    sn_state.tables["incident"][incidents[3]["sys_id"]]["correlation_id"] = "PABC123"  # changed in place
    queries = [
        "short_description=slow QUERIES",
        f"sys_id={incidents[4]['sys_id']}^NQcorrelation_id=pabc123^NQshort_description=Nowhere",
        f"assignment_group={DATABASE}^impact=1^ORshort_description=Slow queries",
        f"assignment_group={NETWORK}^NQstate=1",
        "short_description=Disk full on db-01^NQshort_description!=Disk full on db-01^state=2",
    ]
    for query in queries:
        compiled = sn_state.compile("incident", query)
        rows = sn_state.tables["incident"]
        scanned = compiled.sort([rows[k] for k in sorted(rows) if compiled.matches(rows[k])])
        assert sn_state.select("incident", query) == scanned, query
    assert [r["short_description"] for r in sn_state.select("incident", queries[1])] == sorted(
        ["Backup job failed", "VPN down for one user"],
        key=lambda text: next(i["sys_id"] for i in incidents if i["short_description"] == text),
    )
    assert sn_state.compile("incident", queries[1]).narrowing() is not None
    assert sn_state.compile("incident", queries[3]).narrowing() is None  # state is an integer: compared as a number
