"""Running Slurm's commands from the hub: each with a time limit, and only
sbatch as the server's owner.

batchspawner runs every command through `exec_prefix` as the owner and waits
for it without limit. The owner can stop (SIGSTOP) their own ``squeue``, and
the hub's poll of their server then waits forever. Here sbatch alone runs as
the owner (the job must be theirs); ``squeue``, ``scancel``, ``sstat`` and
``scontrol`` run as the hub's own user (root, whom Slurm lets see and cancel
every job). Every command, and whatever it started, is killed after
`slurm_command_timeout`.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal

from batchspawner.batchspawner import JobStatus, format_template
from traitlets import Float, Unicode
from traitlets.config import LoggingConfigurable

from ..spawner.enforcement import Usage

#: sstat's TRES memory values: a number and a unit
_SIZE = re.compile(r"(\d+(?:\.\d+)?)([KMGTP]?)")
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}


class SlurmCommandTimeout(RuntimeError):
    """A Slurm command did not finish within `slurm_command_timeout` (it was killed)."""


def tres(text):
    """``cpu=00:00:07,mem=105184K,...`` (sstat's TRES fields) as a dict."""
    return dict(item.split("=", 1) for item in text.split(",") if "=" in item)


def slurm_seconds(text):
    """Seconds in Slurm's ``[days-][hours:]minutes:seconds[.fraction]``."""
    days, _, clock = text.rpartition("-")
    seconds = 0.0
    for part in clock.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds + int(days or 0) * 86400


def slurm_bytes(text):
    """Bytes in Slurm's ``105184K``; 0 for an empty value."""
    match = _SIZE.fullmatch(text.strip())
    return int(float(match.group(1)) * _UNITS[match.group(2)]) if match else 0


def job_usage(sstat_output):
    """A :class:`Usage` from sstat's ``JobID|TRESUsageInTot|TRESUsageInMax``
    lines, one per running step: CPU seconds and memory summed over the
    steps (the batch script's, the server's), the peak as the sum of the
    steps' peaks. Slurm does not say how many processes a job has, nor how
    many a memory limit killed while the job runs."""
    usage = Usage()
    for line in sstat_output.splitlines():
        fields = line.split("|")
        if len(fields) < 3:
            continue
        total, peak = tres(fields[1]), tres(fields[2])
        usage.cpu_seconds += slurm_seconds(total.get("cpu", "0"))
        usage.mem_bytes += slurm_bytes(total.get("mem", ""))
        usage.mem_peak_bytes += slurm_bytes(peak.get("mem", ""))
    return usage


def _kill_session(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the command and what it started (runuser's child)
    except ProcessLookupError:
        pass


class SlurmCommands(LoggingConfigurable):
    """How ClassroomSlurmSpawner runs Slurm's commands (a mixin over batchspawner)."""

    slurm_command_timeout = Float(
        30,
        help="""Seconds a Slurm command (sbatch, squeue, scancel, sstat,
        scontrol) may take; then it is killed with everything it started. A
        query that times out counts as "state unknown" (the server is kept);
        a submission that times out fails the start.""",
    ).tag(config=True)

    batch_query_cmd = Unicode(
        "squeue -h -t all -j {job_id} -o '%T %r %B'",
        help="""The job's state, reason and node, run as the hub (never as the
        owner, who could stall it). ``-t all``: a job that ended is still
        listed, with its end state, for Slurm's ``MinJobAge`` (300 s by
        default), so the hub's poll can tell the owner why it ended.""",
    ).tag(config=True)

    batch_cancel_cmd = Unicode(
        "scancel {job_id}",
        help="Cancels the job; run as the hub, which may cancel any job.",
    ).tag(config=True)

    usage_cmd = Unicode(
        "sstat -n -P -a -j {job_id} -o JobID,TRESUsageInTot,TRESUsageInMax",
        help="""The job's CPU time and memory, one line per running step
        (``|``-separated: step, TRESUsageInTot, TRESUsageInMax); run as the hub.""",
    ).tag(config=True)

    async def run_command(self, cmd, input=None, env=None):
        """batchspawner's shell command runner, with `slurm_command_timeout`:
        the command runs in a session of its own, killed whole when it
        times out or the caller is cancelled."""
        proc = await asyncio.create_subprocess_shell(
            cmd,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(input.encode() if input else None), self.slurm_command_timeout
            )
        except asyncio.TimeoutError:
            _kill_session(proc)
            await proc.wait()
            raise SlurmCommandTimeout(f"{cmd}: no answer in {self.slurm_command_timeout:g} s; killed") from None
        except BaseException:
            _kill_session(proc)
            raise
        if proc.returncode:
            error = err.decode(errors="replace").strip()
            self.log.debug("%s: exit status %s: %s", cmd, proc.returncode, error)
            raise RuntimeError(error or f"{cmd}: exit status {proc.returncode}")
        return out.decode(errors="replace").strip()

    async def hub_command(self, template):
        """Run *template* (formatted with the ``req_*`` values and ``job_id``) as the hub."""
        subvars = self.get_req_subvars()
        subvars["job_id"] = self.job_id
        return await self.run_command(format_template(template, **subvars))

    async def query_job_status(self):
        if not self.job_id:
            self.job_status = ""
            return JobStatus.NOTFOUND
        try:
            self.job_status = await self.hub_command(self.batch_query_cmd)
        except SlurmCommandTimeout as e:
            self.log.warning("State of job %s of %s unknown: %s", self.job_id, self.user.name, e)
            self.job_status = ""
            return JobStatus.UNKNOWN
        except RuntimeError as e:
            self.job_status = str(e)  # stderr: the state patterns tell unknown from gone
        if self.state_isrunning():
            return JobStatus.RUNNING
        if self.state_ispending():
            return JobStatus.PENDING
        if self.state_isunknown():
            return JobStatus.UNKNOWN
        return JobStatus.NOTFOUND

    async def cancel_batch_job(self):
        self.log.info("Cancelling job %s of %s", self.job_id, self.user.name)
        await self.hub_command(self.batch_cancel_cmd)

    async def job_usage(self):
        """The running job's :class:`Usage` (sstat), or None if Slurm did not say."""
        try:
            return job_usage(await self.hub_command(self.usage_cmd))
        except RuntimeError as e:  # includes the timeout
            self.log.warning("No usage of job %s of %s: %s", self.job_id, self.user.name, e)
            return None
