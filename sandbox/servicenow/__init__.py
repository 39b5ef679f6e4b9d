"""A stateful, in-memory ServiceNow Table API for tests and the demo.

    from dutybridge_sandbox.servicenow import ServiceNowState, create_app
    state = ServiceNowState.from_seed(seed["servicenow"])
    app = create_app(state, faults=None)

See ``state.ServiceNowState`` for acting on the data from Python (as a person in
ServiceNow would) and for the business rule stand-in ("doorbell").
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
    "DoorbellConfig",
    "OperationFailed",
    "PD_APP_FIELDS",
    "RecordNotFound",
    "STATE_KEY",
    "ServiceNowError",
    "ServiceNowState",
    "TABLES",
    "UnknownTable",
    "create_app",
    "sn_error_body",
]
