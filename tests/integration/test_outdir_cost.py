"""A job resolves builds_root once (the worker's system time per job).

The checks a fetched job goes through ask whether its profile and its
output lie in the worker's own builds_root/jobs/ (outdir_is_owned), two
or three times in one callback; each asked realpath(builds_root), a
readlink per component of the path.  Now realpath(builds_root) is taken
at most once per turn of the event loop.  strace counts the readlink of
builds_root itself (realpath's last step) while the worker runs jobs.
"""
import shutil
import signal
import subprocess
import time

from tests.harness import make_profile, nskey, poll, submit, wait_result


def test_builds_root_is_resolved_once_per_job(fleet, r, broot, tmp_path):
    assert shutil.which("strace"), "strace is not installed (scripts/install-deps installs it)"
    make_profile(broot, "p")
    w = fleet.start()
    poll(lambda: r.zcard(nskey(fleet.ns, "workers")) == 1, 20, "the worker registered")
    out = tmp_path / "strace.txt"
    st = subprocess.Popen(["strace", "-qq", "-e", "trace=readlink", "-s", "4096", "-o", str(out), "-p",
                           str(w.pid)], stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)    # attached
        n = 5
        for i in range(n):
            res = wait_result(r, fleet.ns, submit(r, fleet.ns, profile="p", output=f"o/{i}"), 30)
            assert res["status"] == "succeeded", res
    finally:
        st.send_signal(signal.SIGINT)
        st.wait(timeout=20)
    calls = [line for line in out.read_text().splitlines() if f'readlink("{broot}",' in line]
    assert len(calls) <= n, f"{len(calls)} readlinks of builds_root for {n} jobs:\n" + "\n".join(calls)
