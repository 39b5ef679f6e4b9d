"""Sign every ServiceNow request with an HMAC-SHA256 header, for an API gateway that checks it.

X-Signature is hex(HMAC(key, "TIMESTAMP\\nMETHOD\\nPATH\\nBODY")) (the query is not signed); the
key is read at each request from $DUTYBRIDGE_SN_HMAC_KEY: without one, the request is vetoed."""

import hashlib
import hmac
import os
import time
from urllib.parse import urlsplit

from dutybridge import hookimpl
from dutybridge.http import RequestVetoed


def _signing_string(request, timestamp: str, body: bytes) -> bytes:
    path = urlsplit(request.url).path
    return b"\n".join([timestamp.encode(), request.method.upper().encode(), path.encode(), body])


# trylast (the default for hook files) and a name late in the alphabet: this signs the
# body after every other hook has changed it.
@hookimpl(trylast=True)
def outbound_request(request, ctx):
    if request.service != "servicenow":
        return
    key = os.environ.get("DUTYBRIDGE_SN_HMAC_KEY", "")
    if not key:
        raise RequestVetoed("DUTYBRIDGE_SN_HMAC_KEY is not set: ServiceNow requests are not sent unsigned")
    body = request.body_bytes() or b""
    if request.json is not None and request.data is None:
        # Freeze the body: what is signed is byte for byte what is sent.
        request.data = body
        request.headers.setdefault("Content-Type", "application/json")
    timestamp = str(int(time.time()))
    digest = hmac.new(key.encode(), _signing_string(request, timestamp, body), hashlib.sha256).hexdigest()
    request.headers["X-Signature-Timestamp"] = timestamp
    request.headers["X-Signature"] = digest
