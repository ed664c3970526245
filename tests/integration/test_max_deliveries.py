"""The max_deliver backstop: a message JetStream stops delivering is moved to the DLQ."""

import asyncio

from chronos import Client, Registry
from chronos.states import JobState

from ..conftest import make_settings


async def test_message_past_max_deliver_lands_in_the_dlq(nats_server, namespace, start_worker):
    settings = make_settings(nats_server.url, namespace, worker={"max_deliver": 2, "ack_wait": 1.0},
                             jobs={"default_max_attempts": 1})  # must stay below max_deliver
    async with await Client.connect(settings) as client:
        await client.register_tasks(["never_acked"])
        job = await client.submit("never_acked", max_attempts=1)
        # A worker serving another queue only runs the advisory handler for the namespace.
        await start_worker(Registry(), settings, queues=["elsewhere"])
        # Something pulls the job twice and never acks it: a stuck consumer outside chronos.
        durable = client.names.consumer_name("default", "default")
        sub = await client.conn.js.pull_subscribe_bind(durable, client.names.jobs_stream)
        for _ in range(2):
            msgs = await sub.fetch(1, timeout=10)
            assert len(msgs) == 1  # never acked: redelivered after ack_wait
        # The server notices the limit when it would deliver a third time, i.e. on the next pull.
        try:
            await sub.fetch(1, timeout=3)
        except Exception:  # nothing is delivered: that is the point
            pass

        async def discarded():
            while (await client.get(job)).state != JobState.DISCARDED:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(discarded(), 20)
        await sub.unsubscribe()  # else closing the client waits out drain's timeout
        entry = await client.dlq_get(job)
        assert "max deliveries reached (2)" in entry.reason

        # Never delivered again: not pending, not awaiting an ack. On the limits-retention jobs stream
        # it stays until a later ack moves the consumer's ack floor past it and the leader purges
        # (purger.py, which waits `grace` so this handler can still read it); on a work-queue
        # stream the handler's ack by sequence removes it.
        info = await client.conn.js.consumer_info(client.names.jobs_stream, durable)
        assert info.num_pending == 0 and info.num_ack_pending == 0
