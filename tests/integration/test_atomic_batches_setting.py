"""``nats.atomic_batches``: "auto" batches writes unless the server is known to fsync lazily;
true and false force it. Checked against real servers started in each sync mode."""

from __future__ import annotations

import pytest

from chronos.client import Client
from chronos.config import ConfigError, load_settings
from chronos.embedded import EmbeddedServer
from chronos.states import JobState

from ..conftest import drop_namespace, make_settings


def test_a_bad_value_is_one_line_naming_the_setting():
    with pytest.raises(ConfigError) as err:
        load_settings(overrides={"nats": {"atomic_batches": "sometimes"}}, read_env=False)
    assert str(err.value).startswith("nats.atomic_batches: must be auto, true or false") and "\n" not in str(err.value)
    env = load_settings(environ={"CHRONOS_NATS__ATOMIC_BATCHES": "off"})
    assert env.nats.atomic_batches in (False, "off")  # parsed as false where it is used


async def _used(url: str, namespace: str, setting: object) -> tuple[bool, bool]:
    """(the publisher's decision, whether a bulk submit's records went in an atomic batch)."""
    settings = make_settings(url, namespace, nats={"atomic_batches": setting}, jobs={"check_task_names": False})
    client = await Client.connect(settings)
    try:
        store = await client.ops.store()
        ids = await client.submit_specs([client.build_spec("noop.task") for _ in range(600)])
        assert [(await client.get(i)).state for i in (ids[0], ids[-1])] == [JobState.AVAILABLE] * 2
        # A message stored by an atomic batch keeps its batch headers (Nats-Batch-Id).
        raw = await client.conn.js.get_last_msg(f"KV_{store.bucket}", store.subject(ids[-1]))
        return client.conn.publisher.atomic, "Nats-Batch-Id" in (raw.headers or {})
    finally:
        await client.close()
        await drop_namespace(settings)


@pytest.mark.parametrize("sync, setting, batched", [
    ("2m", "auto", False), ("2m", True, True), ("always", "auto", True), ("always", "false", False),
])
async def test_auto_follows_the_server_sync_mode(tmp_path, sync, setting, batched):
    with EmbeddedServer(tmp_path / "js", sync=sync) as server:
        used, stored_in_batch = await _used(server.url, "ab", setting)
    assert used is batched and stored_in_batch is batched


async def test_auto_batches_on_a_server_whose_sync_mode_is_unknown(nats_server, namespace):
    used, stored_in_batch = await _used(nats_server.url, namespace, "auto")
    assert used is True and stored_in_batch  # the shipped deploy configs fsync every write: batching is what keeps them fast
