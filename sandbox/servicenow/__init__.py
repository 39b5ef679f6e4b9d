"""A stateful, in-memory ServiceNow Table API for tests and the demo.

    from dutybridge_sandbox.servicenow import ServiceNowState, create_app
    state = ServiceNowState.from_seed(seed["servicenow"])
    app = create_app(state, faults=None)          # an aiohttp web.Application
    state.insert("incident", {...}, user="alice.nguyen")   # act as a person in ServiceNow
    state.configure_doorbell(url, token="...")    # the business rule stand-in
    await state.drain_doorbells(5)

What it reproduces, and where from (ServiceNow's Table API reference and REST
docs, /work/shared/reference/servicenow-notes.md, captured responses in public
issue threads):

* ``/api/now[/v1|/v2]/table/{table}[/{sys_id}]``: GET/POST/PUT/PATCH/DELETE,
  ``{"result": ...}``, 201 + ``Location``, 204 on delete, PUT = PATCH (partial).
  v1 answers 404 to a list query with no rows; v2 and the default path answer ``[]``.
* ``sysparm_query`` (``=  !=  ^  ^OR  ^NQ  IN  NOT IN  LIKE  NOTLIKE  STARTSWITH
  ENDSWITH  ISEMPTY  ISNOTEMPTY  ANYTHING  EMPTYSTRING  >  >=  <  <=  BETWEEN
  SAMEAS  NSAMEAS  INSTANCEOF  ORDERBY  ORDERBYDESC``, dot-walks, a few
  ``javascript:gs.*`` values); invalid terms are dropped (``ignored_query_terms``);
  name-value pair filters (``?state=In Progress``) when there is no sysparm_query.
  String matches are case-insensitive, as on the instance's database.
* ``sysparm_fields`` (dot-walks too), ``sysparm_limit`` (default 10000),
  ``sysparm_offset``, ``sysparm_display_value`` (false/true/all),
  ``sysparm_exclude_reference_link``, ``sysparm_no_count``,
  ``sysparm_suppress_pagination_header``, ``sysparm_input_display_value`` (choice
  labels), ``X-no-response-body``; ``X-Total-Count`` and a ``Link`` header with
  rel first/prev/next/last. Lists without ORDERBY come back in sys_id order.
* Basic auth (and bearer tokens from ``state.oauth_tokens``); 401/403/404/400/405/
  415/429 with ServiceNow's ``{"error": {"message", "detail"}, "status":
  "failure"}``; table ACLs by role (``state.acl``), row ACLs when reading a
  parent table; hourly per-user rate limit with ``Retry-After`` and
  ``X-RateLimit-*``.
* Write-time behaviour: sys_ fields (1-second ``sys_updated_on``), numbers
  (INC0010001, SIR0010001), the impact x urgency priority lookup, journal fields,
  resolve/close stamps, reopen and reassignment counts, no-op writes that are not
  updates, unknown columns ignored, references set by display value, CMDB class
  hierarchy (a child class is readable through ``cmdb_ci``), custom columns.

Not reproduced: XML bodies, the Aggregate/Import Set/Attachment APIs, OAuth token
endpoint, ``x-sn-apikey``, display values in the user's time zone and date format
(they stay UTC ``YYYY-MM-DD HH:MM:SS``), field-level ACLs, domain separation,
business rules other than the ones named above.
"""

from .app import STATE_KEY, create_app, sn_error_body
from .schema import PD_APP_FIELDS, TABLES
from .state import (
    DoorbellConfig,
    OperationFailed,
    RecordNotFound,
    ServiceNowError,
    ServiceNowState,
    UnknownTable,
)

__all__ = [
    "PD_APP_FIELDS",
    "STATE_KEY",
    "TABLES",
    "DoorbellConfig",
    "OperationFailed",
    "RecordNotFound",
    "ServiceNowError",
    "ServiceNowState",
    "UnknownTable",
    "create_app",
    "sn_error_body",
]
