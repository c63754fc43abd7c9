"""The proxy's committed OpenAPI document as schemathesis reads it, and the checks every answer must pass."""

from __future__ import annotations

import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from proxy.app import OPENAPI_PATH

schema = schemathesis.openapi.from_path(OPENAPI_PATH)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
