"""A nats-server with the chronos accounts and least-privilege users, for the deploy and fault tests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from chronos.config import Settings, load_settings
from chronos.embedded import EmbeddedServer
from chronos.permissions import ROLES, render_authorization
from chronos.subjects import Names

PASSWORDS = {role: f"{role}-secret" for role in ROLES}


def auth_server(tmp: Path, namespace: str) -> EmbeddedServer:
    """Generated equivalent of deploy/nats/single-node.conf: same accounts block, free port, temp store."""
    users = {role: (f"chronos-{role}", PASSWORDS[role]) for role in ROLES}
    conf = tmp / "server.conf"
    conf.write_text(
        "jetstream { max_memory_store: 64M, max_file_store: 1G }\n"
        + render_authorization(Names(namespace), users, jetstream_limits={"max_mem": "64M", "max_file": "1G"},
                               system_user=("sys", "sys-secret"))
    )
    return EmbeddedServer(store_dir=tmp / "js", extra_args=["-c", str(conf)])


def role_settings(server: EmbeddedServer, namespace: str, role: str, **sections: dict[str, Any]) -> Settings:
    overrides: dict[str, Any] = {
        "namespace": namespace,
        "nats": {"url": server.url, "user": f"chronos-{role}", "password": PASSWORDS[role],
                 "manage_topology": role == "admin"},
        "worker": {"ack_wait": 2.0, "shutdown_grace": 2.0, "heartbeat_interval": 0.5, "poll_expires": 1.0,
                   **sections.pop("worker", {})},
        "streams": {"dlq_max_bytes": 8 * 1024**2, "events_max_bytes": 8 * 1024**2},
    }
    overrides.update(sections)
    return load_settings(overrides=overrides, read_env=False)


VIOLATION = re.compile(r'"[^"/]*/user:([^"]+)" - (Publish|Subscription) Violation - Subject "([^"]+)"')


def violations(server: EmbeddedServer) -> list[tuple[str, str, str]]:
    """(kind, user, subject) for every permission violation the server logged."""
    text = Path(server.log_file).read_text(errors="replace") if Path(server.log_file).exists() else ""
    return [(kind, user, subject) for user, kind, subject in VIOLATION.findall(text)]
