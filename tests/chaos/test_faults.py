"""Fault injection on real processes. Each scenario checks the invariants: the run reaches a
terminal state, each (run, key, step) and each log seq appears once, at most one training program
of the run is ever alive, and a successful run's model is byte-identical to the uninterrupted
reference. Measured figures go to test-output/chaos-summary.json (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from functools import partial
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.chaos.conftest import CHAOS_TINYGPT, ChaosStack, ProgramWatch, make_stack, record
from tests.conftest import process_alive, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]


def test_sigkill_of_the_worker_at_random_points_loses_no_run(chaos: ChaosStack, reference_model: str) -> None:
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "0")))
    run_id = chaos.launch(CHAOS_TINYGPT, max_attempts=5)  # three kills need four attempts
    watch = ProgramWatch(chaos, run_id)
    recoveries = []
    for kill in range(3):
        # Somewhere between one checkpoint and the next: work since the checkpoint is redone.
        at_least = 200 * (2 * kill + 1) + rng.randrange(0, 200)
        chaos.wait_progress(run_id, at_least)
        chaos.kill("worker", signal.SIGKILL)
        killed_at = time.monotonic()
        # The worker is gone; its program must not outlive the guardian's grace period.
        wait_for(lambda: not watch.alive(), 10, message="the orphaned program to end")
        chaos.start_worker()
        wait_for(partial(chaos.attempt_running, run_id, kill + 2), 60, message="the next attempt")
        recoveries.append(round(time.monotonic() - killed_at, 1))
    done = chaos.wait_status(run_id, {"succeeded", "failed", "dead"})
    assert done["status"] == "succeeded", done
    assert watch.stop() <= 1
    chaos.check_invariants(run_id)
    assert chaos.model_sha256(run_id) == reference_model
    resumed = [
        row[0]
        for row in chaos.sql(
            "SELECT resumed_from_step FROM runs_runattempt WHERE run_id = %s ORDER BY number", run_id
        )
    ]
    assert resumed[0] is None and all(step and step % 200 == 0 for step in resumed[1:])
    record(
        "worker_sigkill",
        injected=3,
        runs_lost=0,
        duplicates=0,
        attempts=done["attempt"],
        seconds_to_resume=recoveries,
        model_identical=True,
    )


def test_sigkill_of_the_training_process_fails_the_run_readably(chaos: ChaosStack) -> None:
    run_id = chaos.launch(CHAOS_TINYGPT)
    chaos.wait_progress(run_id, 100)
    watch = ProgramWatch(chaos, run_id)
    (pid,) = watch.alive()
    watch.stop()
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    done = chaos.wait_status(run_id, {"succeeded", "failed", "dead"}, timeout=30)
    assert (done["status"], done["error_kind"], done["error_code"]) == ("failed", "program", "killed_sigkill")
    assert "SIGKILL" in done["error_message"]
    chaos.check_invariants(run_id)
    record(
        "program_sigkill",
        injected=1,
        runs_lost=0,
        duplicates=0,
        seconds_to_terminal=round(time.monotonic() - started, 1),
    )


def test_a_supervisor_killed_alone_takes_its_program_down_within_ten_seconds(chaos: ChaosStack) -> None:
    run_id = chaos.launch({"mode": "sleep", "sleep": 600}, program="scripted")
    watch = ProgramWatch(chaos, run_id)
    wait_for(watch.alive, 30, message="the program")
    (program_pid,) = watch.alive()
    chaos.kill("worker", signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: not process_alive(program_pid), 10, message="the program to die")
    took = time.monotonic() - killed
    watch.stop()
    chaos.start_worker()
    # Its lease expires, the reconciler requeues it, and the new attempt starts.
    wait_for(lambda: chaos.run(run_id)["attempt"] == 2, 30, message="the second attempt")
    with chaos.api() as api:
        api.post(f"/api/v1/runs/{run_id}/cancel/")
    chaos.wait_status(run_id, {"cancelled"}, timeout=20)
    chaos.check_invariants(run_id)
    record("supervisor_killed_child_left", injected=1, seconds_until_child_dead=round(took, 1), runs_lost=0)


def test_a_redis_restart_loses_no_queued_run_and_streams_resume(
    chaos: ChaosStack, reference_model: str
) -> None:
    run_id = chaos.launch(CHAOS_TINYGPT)
    chaos.wait_progress(run_id, 300)
    chaos.redis.stop()
    # Launched while the broker is down: the row is committed, the enqueue fails.
    queued_during_outage = chaos.launch({"lines": 3}, program="scripted")
    time.sleep(3)
    chaos.redis.start()
    restarted = time.monotonic()
    assert chaos.wait_status(queued_during_outage, {"succeeded"}, timeout=90)["status"] == "succeeded"
    recovered = time.monotonic() - restarted
    done = chaos.wait_status(run_id, {"succeeded", "failed", "dead"})
    assert done["status"] == "succeeded", done
    chaos.check_invariants(run_id)
    chaos.check_invariants(queued_during_outage)
    assert chaos.model_sha256(run_id) == reference_model
    # A client reconnecting with its last seq gets the rest with no gap or duplicate.
    received = _socket_seqs(chaos, run_id, after=10)
    expected = [
        row[0]
        for row in chaos.sql(
            "SELECT seq FROM runs_logline WHERE run_id = %s AND seq > 10 ORDER BY seq", run_id
        )
    ]
    assert received == expected
    record(
        "redis_restart",
        injected=1,
        runs_lost=0,
        duplicates=0,
        queued_run_recovered_after_s=round(recovered, 1),
        processes_restarted_by_policy=dict(chaos.restarts),
    )


def test_a_postgres_outage_of_thirty_seconds_loses_no_line(tmp_path: Path, reference_model: str) -> None:
    # The lease must outlast the outage plus everything around it that slows down under load: the
    # fast shutdown, the restart, and the pool's reconnection backoff (1, 2, 4, 8, 16 s...). With a
    # 60 s lease those left ~24 s of slack, and on a loaded machine the supervisor once fenced
    # itself off (0.9 x lease without a renewal) and the run finished on attempt 2. 180 s keeps the
    # claim the test makes (a 30 s outage costs no line and no attempt) with 150 s of slack; it
    # only lengthens the wait if the scenario breaks.
    stack = make_stack(tmp_path, CONTROLPLANE_LEASE_SECONDS="180", CONTROLPLANE_HEARTBEAT_SECONDS="2")
    try:
        stack.start_web()
        stack.start_housekeeping()
        stack.start_worker()
        run_id = stack.launch({**CHAOS_TINYGPT, "steps": 12000, "eval_every": 1000, "checkpoint_every": 2000})
        stack.wait_progress(run_id, 500)
        stack.postgres.stop()
        stopped = time.monotonic()
        with httpx.Client(base_url=stack.base_url, timeout=10) as client:
            response = client.get("/api/v1/runs/", headers={"Authorization": f"Bearer {stack.token}"})
        assert response.status_code == 503
        assert response.json()["code"] == "database_unavailable"
        time.sleep(max(0.0, 30 - (time.monotonic() - stopped)))
        stack.postgres.start()
        done = stack.wait_status(run_id, {"succeeded", "failed", "dead"}, timeout=300)
        assert done["status"] == "succeeded", done
        worker_log = stack.log("worker")
        assert done["attempt"] == 1, [
            line for line in worker_log.splitlines() if "lease" in line or "abandon" in line
        ][-3:]
        # The outage reached the supervisor (its renewals failed), so the run really rode it out.
        assert '"heartbeat_failed"' in worker_log
        stack.check_invariants(run_id)
        stdout = [
            row[0]
            for row in stack.sql(
                "SELECT line FROM runs_logline WHERE run_id = %s AND stream = 'stdout' ORDER BY seq", run_id
            )
        ]
        # Every eval line (one per 1,000 steps) made it through the outage, in order.
        evals = [int(line.split()[1].split("/")[0]) for line in stdout if line.startswith("step ")]
        assert evals == list(range(1000, 12000, 1000))
        points = stack.sql(
            "SELECT count(*) FROM runs_metricpoint p JOIN runs_metricseries s ON s.id = p.series_id "
            "WHERE s.run_id = %s AND s.key = 'train/loss'",
            run_id,
        )[0][0]
        assert points == 12000
        record(
            "postgres_outage_30s",
            injected=1,
            runs_lost=0,
            duplicates=0,
            lines_lost=0,
            attempts=done["attempt"],
        )
    finally:
        stack.teardown()


def test_a_run_longer_than_the_visibility_timeout_runs_once(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, CELERY_VISIBILITY_TIMEOUT="5")
    try:
        stack.start_web()
        stack.start_housekeeping()
        stack.start_worker()
        stack.start_worker("worker2")  # a second consumer, to which the broker redelivers
        # Kombu restores unacknowledged messages older than the visibility timeout on about every
        # tenth idle poll (~10 s): 35 s of running sees it redeliver at least once.
        run_id = stack.launch({"mode": "sleep", "sleep": 35}, program="scripted")
        watch = ProgramWatch(stack, run_id)
        done = stack.wait_status(run_id, {"succeeded", "failed", "dead"}, timeout=90)
        assert done["status"] == "succeeded"
        assert done["attempt"] == 1
        assert watch.stop() == 1
        logs = stack.log("worker") + stack.log("worker2")
        redelivered = logs.count('"run_not_claimed"')
        assert redelivered >= 1, "the broker never redelivered: the scenario did not happen"
        stack.check_invariants(run_id)
        record("longer_than_visibility_timeout", injected=1, redeliveries_seen=redelivered, program_starts=1)
    finally:
        stack.teardown()


def test_a_poison_config_fails_once_and_a_device_fault_is_dead_lettered(chaos: ChaosStack) -> None:
    poison = chaos.launch({"config_error": True}, program="scripted")
    done = chaos.wait_status(poison, {"failed", "dead"}, timeout=60)
    assert (done["status"], done["error_kind"], done["attempt"]) == ("failed", "config", 1)
    time.sleep(3)
    assert chaos.run(poison)["attempt"] == 1  # no loop
    flaky = chaos.launch(
        {"mode": "fail", "lines": 1, "exit_code": 1, "device_error": True}, program="scripted", max_attempts=3
    )
    dead = chaos.wait_status(flaky, {"dead", "failed"}, timeout=90)
    assert (dead["status"], dead["error_kind"], dead["attempt"]) == ("dead", "device", 3)
    with chaos.api() as api:
        letters = api.get("/api/v1/dead-letters/").json()["results"]
    assert [letter["id"] for letter in letters] == [flaky]
    assert [a["error_kind"] for a in letters[0]["attempts"]] == ["device"] * 3
    chaos.check_invariants(poison)
    chaos.check_invariants(flaky)
    record("poison_config", injected=1, attempts=1, looped=False)
    record("device_fault_dead_letter", injected=1, attempts=3, dead_lettered=True)


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(
    chaos: ChaosStack, reference_model: str
) -> None:
    run_id = chaos.launch(CHAOS_TINYGPT)
    chaos.wait_progress(run_id, 700)
    chaos.kill("worker", signal.SIGKILL)
    newest = max(
        (chaos.root / "data" / "runs" / str(run_id) / "checkpoints").glob("step-*.pt"),
        key=lambda path: int(path.stem.split("-")[1]),
    )
    with newest.open("r+b") as handle:
        handle.truncate(newest.stat().st_size // 2)
    chaos.start_worker()
    done = chaos.wait_status(run_id, {"succeeded", "failed", "dead"})
    assert done["status"] == "succeeded", done
    newest_step = int(newest.stem.split("-")[1])
    resumed = chaos.sql(
        "SELECT resumed_from_step FROM runs_runattempt WHERE run_id = %s AND number = 2", run_id
    )[0][0]
    assert resumed == newest_step - 200
    lines = [
        row[0]
        for row in chaos.sql("SELECT line FROM runs_logline WHERE run_id = %s AND stream = 'system'", run_id)
    ]
    assert any(f"checkpoint of step {newest_step} is damaged" in line for line in lines)
    chaos.check_invariants(run_id)
    assert chaos.model_sha256(run_id) == reference_model
    record("truncated_checkpoint", injected=1, runs_lost=0, fell_back_to_step=resumed, model_identical=True)


def _socket_seqs(chaos: ChaosStack, run_id: int, after: int) -> list[int]:
    total = chaos.sql("SELECT max(seq) FROM runs_logline WHERE run_id = %s", run_id)[0][0]
    seqs: list[int] = []
    url = chaos.base_url.replace("http://", "ws://") + f"/ws/runs/{run_id}/?after={after}"
    with connect(
        url, additional_headers={"Authorization": f"Bearer {chaos.token}"}, open_timeout=10
    ) as socket:
        while not seqs or seqs[-1] < total:
            frame = json.loads(socket.recv(timeout=10))
            if frame["type"] == "log":
                seqs += [line["seq"] for line in frame["lines"]]
    return seqs


def test_a_worker_stopped_for_a_deploy_hands_its_run_back_and_it_resumes(
    chaos: ChaosStack, reference_model: str
) -> None:
    run_id = chaos.launch(CHAOS_TINYGPT)
    chaos.wait_progress(run_id, 500)
    stopped = time.monotonic()
    chaos.kill("worker", signal.SIGTERM)  # a warm shutdown, as an orchestrator sends
    took = time.monotonic() - stopped
    run = chaos.run(run_id)
    assert (run["status"], run["error_kind"], run["error_code"]) == (
        "queued",
        "infrastructure",
        "worker_shutdown",
    )
    # The program checkpointed on SIGTERM, off the periodic schedule.
    step = chaos.sql("SELECT max(step) FROM runs_checkpoint WHERE run_id = %s", run_id)[0][0]
    assert step >= 500
    chaos.start_worker()
    done = chaos.wait_status(run_id, {"succeeded", "failed", "dead"})
    assert done["status"] == "succeeded", done
    resumed = chaos.sql(
        "SELECT resumed_from_step FROM runs_runattempt WHERE run_id = %s AND number = 2", run_id
    )[0][0]
    assert resumed == step
    chaos.check_invariants(run_id)
    assert chaos.model_sha256(run_id) == reference_model
    record(
        "worker_sigterm_deploy",
        injected=1,
        runs_lost=0,
        worker_stop_seconds=round(took, 1),
        resumed_from_final_checkpoint=step,
        model_identical=True,
    )
