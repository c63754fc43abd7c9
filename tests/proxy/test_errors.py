"""The proxy's one table of HTTP statuses (`proxy.errors.HTTP_STATUS`): every error class has one status, no two
classes share a code, and docs/errors.md and proxy/openapi.yaml say what the table says; the residency decider's
codes, which reach clients through the proxy, mean there what they mean in the proxy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import nexusml.core.errors as core_errors
from nexusml.core.errors import MetadataError, NexusError, ServerError
from nexusml.updates import residency as decider
from proxy.app import OPENAPI_PATH
from proxy.errors import HttpError, ModelUnknown, NotReady, ProxyError, TooManyRows, http_status

ERRORS_DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"
ROW = re.compile(r"^\|\s*(\d{3})\s*\|\s*`?([a-z0-9_]+)`?\s*\|")


def subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= subclasses(sub)
    return found


def answered() -> set[tuple[int, str]]:
    """(status, code) of every error the proxy answers with, from the classes and the table."""
    classes = {ProxyError} | subclasses(ProxyError) - {HttpError}
    return {(http_status(cls("message")), cls.code) for cls in classes}


def rows(text: str) -> set[tuple[int, str]]:
    found = (ROW.match(line.strip()) for line in text.splitlines())
    return {(int(match[1]), match[2]) for match in found if match}


def test_no_two_classes_share_a_code() -> None:
    """A code is declared by one class; a subclass that declares none is a kind of its parent (ModelUnknown). The
    decider's API is another edge, whose codes the proxy passes on: those are the next test's."""
    classes = {cls for cls in subclasses(NexusError) | {NexusError} if cls.__module__ != decider.__name__}
    declared = [cls.code for cls in classes if "code" in vars(cls)]
    assert len(declared) == len(set(declared)), sorted(c for c in declared if declared.count(c) > 1)
    assert core_errors.ArtifactNotFound.code != "not_found"  # the proxy's 404 for an unknown path


def test_the_deciders_codes_are_the_proxys() -> None:
    """Each code the residency decider declares is one the proxy answers, with the same status: a client sees
    `no_room` or `over_memory_budget` as the decider meant it."""
    proxy = {code: status for status, code in answered()}
    declared = {cls: status for cls, status in decider.HTTP_STATUS.items() if cls.__module__ == decider.__name__}
    assert declared
    for cls, status in declared.items():
        assert proxy.get(cls.code) == status, cls


@pytest.mark.parametrize(
    ("error", "status"),
    [
        pytest.param(ProxyError("bug"), 500, id="internal"),
        pytest.param(TooManyRows("9 rows"), 422, id="inherited-from-invalid-input"),
        pytest.param(ModelUnknown("no name"), 503, id="kind-of-not-ready"),
        pytest.param(NotReady("starting"), 503, id="not-ready"),
        pytest.param(MetadataError("broken file"), 500, id="core-error-is-ours-not-the-clients"),
        pytest.param(ServerError("died"), 500, id="core-server-error"),
        pytest.param(HttpError("I'm a teapot", 418, "im_a_teapot"), 418, id="aiohttp-passthrough"),
    ],
)
def test_status_of(error: NexusError, status: int) -> None:
    assert http_status(error) == status


def test_docs_table_is_the_code_table() -> None:
    text = ERRORS_DOC.read_text(encoding="utf-8")
    block = re.search(r"<!-- http-errors\b[^>]*-->(.*?)<!-- /http-errors -->", text, re.S)
    assert block, "docs/errors.md has no http-errors block"
    assert rows(block.group(1)) == answered()


def test_openapi_table_and_enum_are_the_code_table() -> None:
    document = yaml.safe_load(OPENAPI_PATH.read_text())
    assert rows(document["info"]["description"]) == answered()
    enum = document["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
    assert set(enum) == {code for _, code in answered()}
