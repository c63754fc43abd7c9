"""The local S3 refuses a taken port at once, naming the holder and the setting that chose the port."""

from __future__ import annotations

import os
import socket

import pytest

from nexusml.command.s3local import LocalS3
from nexusml.core.errors import ServerError
from nexusml.testing.environment import base_environment

pytestmark = pytest.mark.integration


def test_a_taken_port_names_its_holder_and_the_setting() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        s3 = LocalS3(port, base_environment(), port_setting="LOCAL_S3_PORT")
        with pytest.raises(
            ServerError, match=f"^cannot start local S3 \\(moto\\): port {port} is already in use"
        ) as raised:
            s3.start()
    assert f"by pid {os.getpid()} (" in str(raised.value)
    assert str(raised.value).endswith("; stop it or set LOCAL_S3_PORT")
    assert s3.process is None
