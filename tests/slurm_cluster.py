"""A single-node Slurm cluster on localhost (Debian's slurm-wlm and munge), for the profile test, and the tiny
pipeline submitted to it in the background.

Where Slurm is missing, it is installed with apt (root only); where that cannot be done, or where a Slurm
configuration this suite did not write already exists, the caller is told why and the test is skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SLURM_CONF = Path("/etc/slurm/slurm.conf")  # where srun inside a job looks for it
MARKER = "# single-node test cluster written by busflow's test suite"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol")


# Layered over workflow/profiles/slurm: sizes for this machine, one thread per training job as in the local
# run (torch's results depend on the thread count), no account, squeue for job states (no accounting here).
# The first status check comes 8 s after a submission, by when a short job (start-up included) is done: the
# plugin waits 10 s longer after every check that finds no job finished, so an early miss costs most.
TEST_PROFILE = """\
slurm-no-account: true
slurm-status-command: squeue
slurm-init-seconds-before-status-checks: 8
seconds-between-status-checks: 2
default-resources: {runtime: 30, mem_mb: 1000, cpus_per_task: 1}
set-threads: {train: 1, train_ablation: 1, cascade: 1, external: 1, group: 1}
set-resources: {report: {mem_mb: 2000}}
"""


class ClusterUnavailable(RuntimeError):
    """No local Slurm cluster can be started here; the message says why."""


def _install() -> None:
    if all(shutil.which(tool) for tool in DAEMONS):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ClusterUnavailable("slurm-wlm and munge are not installed and cannot be (needs root and apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"]):
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if result.returncode != 0:
            raise ClusterUnavailable(f"`{' '.join(command)}` failed: {result.stderr.strip()[-300:]}")


def _port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _config(state: Path) -> str:
    # The node offers twice its cores (config_overrides lets slurmd accept that): a job of the tiny pipeline
    # spends much of its life starting Snakemake and srun, so two per core keep the cores busy. Every
    # training job still runs one thread, so the outputs stay those of the local run.
    memory_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
    return f"""{MARKER}
ClusterName=busflowtest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={state}/munge.socket
CredType=cred/munge
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/spool
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=600
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
NodeName=localhost CPUs={2 * (os.cpu_count() or 1)} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise ClusterUnavailable(f"`{' '.join(command)}` failed: {(result.stderr or result.stdout).strip()[-300:]}")


def _wait_until_idle(state: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        result = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=30)
        if result.stdout.strip() == "idle":
            return
        time.sleep(1)
    logs = "\n".join((state / name).read_text()[-1000:] for name in ("slurmctld.log", "slurmd.log") if (state / name).exists())
    raise ClusterUnavailable(f"the local Slurm node did not become idle within 60 s:\n{logs}")


def _stop(state: Path) -> None:
    """Shut the daemons down and wait until they are gone (the next start needs their ports)."""
    subprocess.run(["scontrol", "shutdown"], capture_output=True, timeout=60)
    for name in ("slurmctld.pid", "slurmd.pid", "munged.pid"):
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((state / name).read_text().strip()), signal.SIGTERM)
    subprocess.run(["pkill", "-TERM", "-f", f"munged --key-file={state}"], capture_output=True, timeout=30)
    deadline = time.monotonic() + 60
    while (_port_in_use(6817) or _port_in_use(6818)) and time.monotonic() < deadline:
        time.sleep(0.5)


@contextlib.contextmanager
def local_cluster(state: Path) -> Iterator[None]:
    """munged + slurmctld + slurmd on this machine for the duration of the block."""
    _install()
    if SLURM_CONF.exists() and MARKER not in SLURM_CONF.read_text(errors="replace"):
        raise ClusterUnavailable(f"{SLURM_CONF} exists and was not written by this suite (a real cluster?): left alone")
    if _port_in_use(6817) or _port_in_use(6818):
        raise ClusterUnavailable("Slurm's ports 6817/6818 are in use on this machine: another Slurm is running")
    for folder in ("ctld", "spool"):
        (state / folder).mkdir(parents=True, exist_ok=True)
    key = state / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text(_config(state))
    try:
        _run("munged", f"--key-file={key}", f"--socket={state}/munge.socket", f"--pid-file={state}/munged.pid",
             f"--log-file={state}/munged.log", "--force")
        _run("slurmctld", "-f", str(SLURM_CONF))
        _run("slurmd", "-f", str(SLURM_CONF))
        _wait_until_idle(state)
        yield
    finally:
        _stop(state)
        SLURM_CONF.unlink(missing_ok=True)


@dataclass
class ProfileRun:
    """Snakemake with the Slurm profile, running in ``project`` while the rest of the suite goes on; or, where
    no cluster can be started, the reason."""

    project: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    unavailable: str = ""

    @property
    def log(self) -> Path:
        assert self.project is not None
        return self.project / "snakemake.log"

    def wait(self, timeout: float) -> str:
        """Snakemake's output once it has finished; an error with its tail when it failed."""
        assert self.process is not None
        returncode = self.process.wait(timeout=timeout)
        output = self.log.read_text(errors="replace")
        if returncode != 0:
            raise AssertionError(f"snakemake with the Slurm profile failed ({returncode}):\n{output[-6000:]}")
        return output


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=60)


@contextlib.contextmanager
def profile_run_in_background(state: Path, project: Path, env: dict[str, str]) -> Iterator[ProfileRun]:
    """The workflow in ``project`` submitted job by job to a local cluster, started now and not waited for: the
    run spends most of its time waiting for the scheduler, which the rest of the suite can use. A run still
    going and the cluster are stopped when the block ends."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(local_cluster(state))
        except ClusterUnavailable as reason:
            unavailable = str(reason)
        else:
            unavailable = ""
        if unavailable:
            yield ProfileRun(unavailable=unavailable)
            return
        (project / "slurm-test").mkdir()
        (project / "slurm-test" / "config.yaml").write_text(TEST_PROFILE)
        run = ProfileRun(project)
        with run.log.open("wb") as log:
            run.process = subprocess.Popen(["snakemake", "--profile", "workflow/profiles/slurm", "--profile", "slurm-test"],
                                           cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
        stack.callback(_terminate, run.process)
        yield run
