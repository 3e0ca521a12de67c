"""A dalc client in Python, on code generated from proto/dalc/v1/task_service.proto.

    python client.py HOST:PORT      (run.sh generates the code and runs this)

Set DALC_API_KEY when the gateway requires API keys: it is sent as `authorization: Bearer KEY`.
Every step checks its answers; the exit code is 1 if any step went wrong.
"""

import os
import sys
import time

import grpc

from dalc.v1 import task_service_pb2 as pb
from dalc.v1 import task_service_pb2_grpc as pb_grpc

TERMINAL = {
    pb.TASK_STATUS_SUCCEEDED,
    pb.TASK_STATUS_FAILED,
    pb.TASK_STATUS_CANCELLED,
    pb.TASK_STATUS_EXPIRED,
}
DEADLINE = 60  # seconds: every call has one, so nothing here can hang


def status_name(status):
    return pb.TaskStatus.Name(status)


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def sync_submit(stub, metadata):
    reply = stub.SubmitTask(
        pb.SubmitTaskRequest(expression="1 + 1", wait=True), metadata=metadata, timeout=DEADLINE
    )
    task = reply.task
    print(f"sync:  1 + 1 = {task.result} ({status_name(task.status)}, worker {task.worker_id})")
    check(task.status == pb.TASK_STATUS_SUCCEEDED, f"status {status_name(task.status)}: {task.error}")
    check(task.result == "2", f"1 + 1 gave {task.result!r}")
    return task.id


def async_poll(stub, metadata):
    task = stub.SubmitTask(
        pb.SubmitTaskRequest(expression="2^10"), metadata=metadata, timeout=DEADLINE
    ).task
    print(f"async: submitted 2^10 as {task.id} ({status_name(task.status)})")
    started = time.monotonic()
    while task.status not in TERMINAL:
        check(time.monotonic() - started < DEADLINE, f"task {task.id} still {status_name(task.status)}")
        time.sleep(0.05)
        task = stub.GetTask(pb.GetTaskRequest(id=task.id), metadata=metadata, timeout=DEADLINE).task
    print(f"async: polled until {status_name(task.status)}: 2^10 = {task.result}")
    check(task.status == pb.TASK_STATUS_SUCCEEDED and task.result == "1024", f"2^10 ended {task}")
    return task.id


def watch(stub, metadata):
    task = stub.SubmitTask(
        pb.SubmitTaskRequest(expression="sqrt(16) * 10"), metadata=metadata, timeout=DEADLINE
    ).task
    print(f"watch: submitted sqrt(16) * 10 as {task.id}")
    seen = []
    for update in stub.WatchTask(pb.WatchTaskRequest(id=task.id), metadata=metadata, timeout=DEADLINE):
        seen.append(update.task)
        print(f"watch:   {status_name(update.task.status)}")
    # The stream ends by itself once the task is terminal.
    check(seen, "WatchTask sent nothing")
    last = seen[-1]
    print(f"watch: stream ended; sqrt(16) * 10 = {last.result}")
    check(last.status == pb.TASK_STATUS_SUCCEEDED and last.result == "40", f"watch ended with {last}")
    check(all(t.id == task.id for t in seen), "WatchTask sent another task")
    return task.id


def batch(stub, metadata, n=20):
    expressions = [f"{i} * 3 + 1" for i in range(n)]
    results = {}
    request = pb.SubmitBatchRequest(expressions=expressions)
    for reply in stub.SubmitBatch(request, metadata=metadata, timeout=DEADLINE):
        task = reply.task
        print(f"batch: [{reply.index:2}] {task.expression} = {task.result} ({status_name(task.status)})")
        check(reply.index < n, f"index {reply.index} out of range")
        check(reply.index not in results, f"index {reply.index} came twice")
        check(task.expression == expressions[reply.index], f"index {reply.index} is {task.expression!r}")
        check(task.status == pb.TASK_STATUS_SUCCEEDED, f"index {reply.index}: {status_name(task.status)}")
        check(task.result == str(reply.index * 3 + 1), f"index {reply.index}: result {task.result!r}")
        results[reply.index] = task.id
    missing = sorted(set(range(n)) - set(results))
    check(not missing, f"indices never streamed: {missing}")
    print(f"batch: all {n} indices came once, each right")
    return list(results.values())


def list_tasks(stub, metadata, ours):
    found, pages, token = set(), 0, ""
    while True:
        reply = stub.ListTasks(
            pb.ListTasksRequest(page_size=100, page_token=token), metadata=metadata, timeout=DEADLINE
        )
        pages += 1
        found.update(t.id for t in reply.tasks)
        times = [t.created_at.ToNanoseconds() for t in reply.tasks]
        check(times == sorted(times, reverse=True), "ListTasks is not newest first")
        token = reply.next_page_token
        if not token or ours <= found or pages == 50:
            break
    print(f"list:  {len(found)} tasks on {pages} page(s)")
    check(ours <= found, f"ListTasks missed {len(ours - found)} of this run's tasks")


def stats(stub, metadata, ours):
    """`ours`: the tasks this run saw SUCCEEDED; the figures must count at least those."""
    # Workers report their figures now and then: give them time to catch up with this run.
    started = time.monotonic()
    while True:
        reply = stub.GetStats(pb.GetStatsRequest(), metadata=metadata, timeout=DEADLINE)
        counted = min(reply.totals.succeeded, reply.tasks_by_status.get("TASK_STATUS_SUCCEEDED", 0))
        if counted >= len(ours) or time.monotonic() - started > 30:
            break
        time.sleep(0.5)
    totals = reply.totals
    print(f"stats: queue depth {reply.queue_depth}; workers {len(reply.workers)}; "
          f"totals: {totals.succeeded} succeeded, {totals.failed} failed, {totals.total} ended")
    for w in reply.workers:
        print(f"stats:   {w.worker_id}: {w.total} ended, mean {w.mean_run_time.ToMilliseconds()} ms, "
              f"p99 {w.p99_run_time.ToMilliseconds()} ms")
        check(w.succeeded + w.failed <= w.total, f"worker {w.worker_id}: counts do not add up")
    for name, count in sorted(reply.tasks_by_status.items()):
        print(f"stats:   {name}: {count}")
        check(name in pb.TaskStatus.keys(), f"unknown status {name!r}")
    check(totals.succeeded >= len(ours), f"totals count {totals.succeeded} succeeded, this run saw {len(ours)}")
    check(reply.tasks_by_status.get("TASK_STATUS_SUCCEEDED", 0) >= len(ours),
          f"tasks_by_status counts fewer SUCCEEDED tasks than this run saw ({len(ours)})")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: client.py HOST:PORT")
    metadata = []
    if os.environ.get("DALC_API_KEY"):
        metadata.append(("authorization", f"Bearer {os.environ['DALC_API_KEY']}"))

    failures = []
    ours = set()
    with grpc.insecure_channel(sys.argv[1]) as channel:
        stub = pb_grpc.TaskServiceStub(channel)
        steps = [
            ("SubmitTask (sync)", lambda: ours.add(sync_submit(stub, metadata))),
            ("SubmitTask + GetTask (async)", lambda: ours.add(async_poll(stub, metadata))),
            ("WatchTask", lambda: ours.add(watch(stub, metadata))),
            ("SubmitBatch", lambda: ours.update(batch(stub, metadata))),
            ("ListTasks", lambda: list_tasks(stub, metadata, ours)),
            ("GetStats", lambda: stats(stub, metadata, ours)),
        ]
        # Every step runs, so one failure does not hide the state of the others.
        for name, step in steps:
            try:
                step()
            except grpc.RpcError as e:
                failures.append(f"{name}: {e.code().name}: {e.details()}")
            except AssertionError as e:
                failures.append(f"{name}: {e}")
            if failures and failures[-1].startswith(name):
                print(f"FAILED {failures[-1]}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {len(steps)} steps failed", file=sys.stderr)
        sys.exit(1)
    print(f"all {len(steps)} steps passed")


if __name__ == "__main__":
    main()
