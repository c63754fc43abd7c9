"""The harness's ports: one stack's settings never share a port."""

from __future__ import annotations

from nexusml.testing.environment import STACK_PORT_SETTINGS, free_ports, stack_ports


def test_free_ports_are_distinct_among_many() -> None:
    # Ports chosen one by one, each socket closed before the next bind, repeat within a few hundred draws
    # from the ~28,000 ephemeral ports (a birthday collision in ~99 % of runs at 600): held together, never.
    ports = free_ports(600)
    assert len(set(ports)) == len(ports)


def test_stack_ports_names_every_setting_with_its_own_port() -> None:
    ports = stack_ports()
    assert list(ports) == list(STACK_PORT_SETTINGS)
    assert len(set(ports.values())) == len(STACK_PORT_SETTINGS)
