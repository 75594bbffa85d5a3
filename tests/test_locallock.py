"""Local flock election: one leader, handover on stop and on SIGKILL, annotations survive."""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from tests.vtime import advance, run_virtual
from wgpy.supervisor.locallock import LocalLockElector, read_sidecar
from wgpy.testbed import wait_until

RETRY = 0.05
POLL = 0.01  # the step of wait_until


run = partial(run_virtual, timeout=60)


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []

    def started(self) -> None:
        self.events.append("started")

    def stopped(self) -> None:
        self.events.append("stopped")

    def new_leader(self, who: str) -> None:
        self.events.append(f"leader:{who}")


def make(path: Path, identity: str, rec: Recorder) -> LocalLockElector:
    return LocalLockElector(
        str(path),
        identity,
        retry_period=RETRY,
        on_started_leading=rec.started,
        on_stopped_leading=rec.stopped,
        on_new_leader=rec.new_leader,
    )


def lock_is_free(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def test_one_leader_and_graceful_handover(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "supervisor.lock"  # the directory is created

    async def main() -> None:
        ra, rb = Recorder(), Recorder()
        a, b = make(path, "node-a", ra), make(path, "node-b", rb)
        ta = asyncio.create_task(a.run())
        await wait_until(lambda: a.is_leader)
        tb = asyncio.create_task(b.run())
        await wait_until(lambda: b.leader == "node-a")
        await advance(5 * RETRY)
        assert not b.is_leader
        assert rb.events == ["leader:node-a"]
        assert read_sidecar(str(path))["holderIdentity"] == "node-a"

        t0 = asyncio.get_running_loop().time()
        a.stop()
        await ta
        assert ra.events == ["leader:node-a", "started", "stopped"]
        taken = await wait_until(lambda: b.is_leader)
        assert taken - t0 <= 1.2 * RETRY + POLL  # b's next (jittered) attempt, no expiry
        assert rb.events == ["leader:node-a", "leader:node-b", "started"]
        side = read_sidecar(str(path))
        assert side["holderIdentity"] == "node-b"
        assert side["leaseTransitions"] == 0  # a released: free, not taken over
        b.stop()
        await tb
        assert read_sidecar(str(path))["holderIdentity"] == ""
        assert lock_is_free(path)

    run(main)


def test_annotations_survive_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "l.lock"

    async def main() -> None:
        a = make(path, "a", Recorder())
        ta = asyncio.create_task(a.run())
        await wait_until(lambda: a.is_leader)
        a.set_annotation("wgpy.io/tai64n-floor.wg0", "abcd")
        a.set_annotation("gone", "x")
        a.set_annotation("gone", None)
        # written at once, not at some later renewal
        assert read_sidecar(str(path))["annotations"] == {"wgpy.io/tai64n-floor.wg0": "abcd"}
        a.stop(release=False)
        await ta
        assert read_sidecar(str(path))["holderIdentity"] == "a"  # as a crash leaves it
        b = make(path, "b", Recorder())
        tb = asyncio.create_task(b.run())
        await wait_until(lambda: b.is_leader)
        assert b.annotation("wgpy.io/tai64n-floor.wg0") == "abcd"
        assert read_sidecar(str(path))["leaseTransitions"] == 1  # taken over from "a"
        b.stop()
        await tb

    run(main)


def test_stopped_callback_runs_before_the_lock_is_released(tmp_path: Path) -> None:
    path = tmp_path / "l.lock"
    seen: list[bool] = []
    cancelled: list[bool] = []

    async def main() -> None:
        async def leading() -> None:
            try:
                await asyncio.Event().wait()  # leads until cancelled
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        a = LocalLockElector(
            str(path),
            "a",
            retry_period=RETRY,
            on_started_leading=leading,
            on_stopped_leading=lambda: seen.append(lock_is_free(path)),
        )
        ta = asyncio.create_task(a.run())
        await wait_until(lambda: a.is_leader)
        a.stop()
        await ta
        assert cancelled == [True]  # the coroutine from on_started_leading was cancelled
        assert seen == [False]  # still locked while tearing down
        assert lock_is_free(path)

    run(main)


def test_replaced_lock_file_makes_the_leader_step_down(tmp_path: Path) -> None:
    path = tmp_path / "l.lock"

    async def main() -> None:
        rec = Recorder()
        a = make(path, "a", rec)
        ta = asyncio.create_task(a.run())
        await wait_until(lambda: a.is_leader)
        path.unlink()
        await asyncio.wait_for(ta, 2)
        assert a.lost_leadership
        assert rec.events[-1] == "stopped"

    run(main)


HOLDER = """
import asyncio, sys
from wgpy.supervisor.locallock import LocalLockElector
async def main():
    e = LocalLockElector(sys.argv[1], "crashy", retry_period=0.05,
                         on_started_leading=lambda: print("leading", flush=True))
    await e.run()
asyncio.run(main())
"""


def test_sigkill_of_the_holder_hands_over_within_a_retry_period(tmp_path: Path) -> None:
    path = tmp_path / "l.lock"
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "leading"

        async def main() -> None:
            b = make(path, "b", Recorder())
            tb = asyncio.create_task(b.run())
            await wait_until(lambda: b.leader == "crashy")
            await advance(3 * RETRY)
            assert not b.is_leader
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)  # dead: the kernel has dropped its flock (the clock stood still)
            t0 = asyncio.get_running_loop().time()
            taken = await wait_until(lambda: b.is_leader)
            assert taken - t0 <= 1.2 * RETRY + POLL  # b's next (jittered) attempt
            assert read_sidecar(str(path))["leaseTransitions"] == 1
            b.stop()
            await tb

        run(main)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_rejects_bad_retry_period(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="retry_period"):
        LocalLockElector(str(tmp_path / "x"), "a", retry_period=0)
