"""Job ids: unique, time-ordered, and never repeated by a forked child."""

import os
import threading

from chronos.ids import new_job_id


def test_ids_are_unique_across_many_random_batches():
    ids = [new_job_id(1_700_000_000.0) for _ in range(50_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 28 and i.startswith(f"{1_700_000_000_000:012x}") for i in ids)


def test_ids_sort_by_creation_time():
    assert new_job_id(1_700_000_000.0) < new_job_id(1_700_000_000.002) < new_job_id(1_800_000_000.0)


def test_threads_never_share_random_bits():
    out: list[list[str]] = [[] for _ in range(4)]

    def make(slot: list[str]) -> None:
        slot.extend(new_job_id(1.0) for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(slot,)) for slot in out]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for slot in out for i in slot]
    assert len(set(every)) == len(every)


def test_a_forked_child_does_not_repeat_its_parents_next_ids():
    new_job_id()  # the parent has a batch of random bytes buffered
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write_end, " ".join(new_job_id(1.0) for _ in range(100)).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = set(os.read(read_end, 10_000).decode().split())
    parent = {new_job_id(1.0) for _ in range(100)}
    assert len(child) == 100 and not child & parent
