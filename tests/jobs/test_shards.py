"""Fan-out and join on the queue (app/jobs/shards.py): the parent waits holding no worker, exactly one shard
completion queues it again even when the last two finish at once, and a shard's failure or a cancel ends the
family together. On both databases, with the transactions as the queue runs them."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.jobs import repository, service
from app.jobs.shards import ShardSpec, complete_shard, fan_out, unfinished_parent_results
from app.jobs.states import JobStatus
from app.models import Job, JobShard, utcnow

SPAN = (0.0, 1.0)


def _parent_with_shards(engine: Any, count: int) -> tuple[int, list[int]]:
    with Session(engine) as session:
        service.enqueue(session, kind="demo.sleep", payload={})
        session.commit()
        claimed = repository.claim_next(session, worker_id="test", queues=None, lease_seconds=60, now=utcnow())
        assert claimed is not None
        specs = [ShardSpec(payload={"part": i}, items=10) for i in range(count)]
        queued = fan_out(
            session,
            parent_id=claimed.id,
            token=claimed.lease_token,
            kind="demo.sleep",
            shards=specs,
            queue="default",
            max_attempts=2,
            message="waiting",
            now=utcnow(),
        )
        assert queued == count
        session.commit()
        children = list(
            session.scalars(
                select(JobShard.job_id).where(JobShard.parent_job_id == claimed.id).order_by(JobShard.position)
            )
        )
        return claimed.id, children


def _job(engine: Any, job_id: int) -> Job:
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_the_parent_waits_without_a_lease_and_a_second_fan_out_adds_no_shards(fresh_database) -> None:
    engine = fresh_database.engine
    parent_id, children = _parent_with_shards(engine, 3)
    parent = _job(engine, parent_id)
    assert (parent.status, parent.lease_token, parent.attempts) == (JobStatus.WAITING, None, 0)
    assert [_job(engine, child).payload for child in children] == [
        {"part": i, "parent_job_id": parent_id, "shard": i} for i in range(3)
    ]
    with Session(engine) as session:  # the parent is claimed nowhere: only its shards are
        claimed = repository.claim_next(session, worker_id="t", queues=None, lease_seconds=60, now=utcnow())
        assert claimed is not None and claimed.id == children[0]


def test_when_the_last_two_shards_finish_at_once_exactly_one_queues_the_parent(fresh_database) -> None:
    engine = fresh_database.engine
    parent_id, (first, second) = _parent_with_shards(engine, 2)
    outcome: dict[str, bool] = {}
    holding = Session(engine)
    outcome["first"] = complete_shard(
        holding, job_id=first, result_sha256="a" * 64, noun="images", span=SPAN, now=utcnow()
    )

    def finish_second() -> None:
        with Session(engine) as session:
            outcome["second"] = complete_shard(
                session, job_id=second, result_sha256="b" * 64, noun="images", span=SPAN, now=utcnow()
            )
            session.commit()

    other = threading.Thread(target=finish_second)
    other.start()
    other.join(1.0)
    assert other.is_alive()  # it waits on the parent's row, which the first completion holds
    holding.commit()
    holding.close()
    other.join(30)
    assert outcome == {"first": False, "second": True}
    parent = _job(engine, parent_id)
    assert parent.status == JobStatus.QUEUED and parent.progress == 1.0
    with Session(engine) as session:  # a repeated completion (a retried shard) changes nothing
        assert not complete_shard(session, job_id=first, result_sha256="c" * 64, noun="images", span=SPAN, now=utcnow())
        session.commit()
        assert session.scalar(select(JobShard.result_sha256).where(JobShard.job_id == first)) == "a" * 64


def test_a_shard_out_of_attempts_fails_its_parent_and_cancels_the_rest(fresh_database) -> None:
    engine = fresh_database.engine
    parent_id, children = _parent_with_shards(engine, 3)
    for _attempt in range(2):  # max_attempts=2: lost twice
        with Session(engine) as session:
            claimed = repository.claim_next(session, worker_id="t", queues=None, lease_seconds=60, now=utcnow())
            assert claimed is not None and claimed.id == children[0]
            repository.retry_or_fail(session, job_id=claimed.id, token=claimed.lease_token, now=utcnow(), reason="boom")
            session.commit()
    parent = _job(engine, parent_id)
    assert parent.status == JobStatus.FAILED and parent.error and parent.error.startswith("shard 1 failed: boom")
    assert [_job(engine, child).status for child in children] == [JobStatus.FAILED] + [JobStatus.CANCELLED] * 2


def test_cancelling_a_waiting_parent_cancels_its_shards_and_frees_their_results(fresh_database) -> None:
    engine = fresh_database.engine
    parent_id, children = _parent_with_shards(engine, 2)
    with Session(engine) as session:
        running = repository.claim_next(session, worker_id="t", queues=None, lease_seconds=60, now=utcnow())
        assert running is not None
        complete_shard(session, job_id=running.id, result_sha256="d" * 64, noun="images", span=SPAN, now=utcnow())
        session.commit()
        assert unfinished_parent_results(session, ["d" * 64, "e" * 64]) == {"d" * 64}  # kept from the GC
        service.cancel_job(session, job_id=parent_id)
        session.commit()
        assert unfinished_parent_results(session, ["d" * 64]) == set()  # the parent ended: garbage now
    assert _job(engine, parent_id).status == JobStatus.CANCELLED
    assert _job(engine, children[0]).cancel_requested  # running: asked to stop
    assert _job(engine, children[1]).status == JobStatus.CANCELLED  # queued: cancelled at once
