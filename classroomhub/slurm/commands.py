"""Running Slurm's commands from the hub: each with a time limit, only
sbatch as the server's owner, and every other one restricted to the owner's
jobs.

batchspawner runs every command through `exec_prefix` as the owner and waits
for it without limit. The owner can stop (SIGSTOP) their own ``squeue``, and
the hub's poll of their server then waits forever. Here sbatch alone runs as
the owner (the job must be theirs); ``squeue``, ``scancel``, ``sstat`` and
``scontrol`` run as the hub's own user (root, whom Slurm lets see and cancel
every job). Every command, and whatever it started, is killed after
`slurm_command_timeout`.

sbatch's answer is the owner's to forge (they may ptrace their own sbatch),
so the job id in it is checked before the hub records it: one line of ASCII
digits (:func:`parse_job_id`), a job of the owner that carries the start's
nonce in its ``--comment``. Otherwise the start fails and the owner's real
job, found by that nonce, is cancelled. The hub's squeue and scancel name
the owner too (``-u``, ``--user``): a wrong id never reaches another
person's job.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal

from batchspawner.batchspawner import JobStatus, format_template
from traitlets import Float, Unicode
from traitlets.config import LoggingConfigurable

from ..spawner.enforcement import Usage

#: sstat's TRES memory values: a number and a unit
_SIZE = re.compile(r"(\d+(?:\.\d+)?)([KMGTP]?)")
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}


#: ``sbatch --parsable``'s answer: the job id, then ``;cluster`` on a multi-cluster setup
_JOB_ID = re.compile(r"([0-9]+)(?:;\S+)?", re.ASCII)


class SlurmCommandTimeout(RuntimeError):
    """A Slurm command did not finish within `slurm_command_timeout` (it was killed)."""


def parse_job_id(output):
    """The job id in sbatch's *output*: exactly one line (a final newline
    allowed) of ASCII digits, with ``;cluster`` after them or not; else
    ValueError. ``int()`` would also take spaces, ``_`` and other scripts'
    digits, and batchspawner reads only the last line."""
    lines = output.split("\n")
    if len(lines) == 2 and lines[1] == "":
        lines.pop()
    match = _JOB_ID.fullmatch(lines[0]) if len(lines) == 1 else None
    if not match:
        raise ValueError(f"sbatch did not answer with one job id: {output!r}")
    return match.group(1)


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
        "squeue -h -t all -u {username} -j {job_id} -o '%T %r %B'",
        help="""The job's state, reason and node, run as the hub (never as the
        owner, who could stall it). ``-t all``: a job that ended is still
        listed, with its end state, for Slurm's ``MinJobAge`` (300 s by
        default), so the hub's poll can tell the owner why it ended.
        ``-u {username}``: another person's job is never reported as the
        owner's.""",
    ).tag(config=True)

    batch_cancel_cmd = Unicode(
        "scancel --user={username} {job_id}",
        help="""Cancels the job; run as the hub, which may cancel any job, so
        restricted to the owner's (``--user``).""",
    ).tag(config=True)

    job_owner_cmd = Unicode(
        "squeue -h -t all -j {job_id} -o '%u %k'",
        help="""The job's user and comment, run as the hub: a job id is taken
        (after sbatch, before sstat) only if they are the owner and the
        start's nonce (`job_nonce`).""",
    ).tag(config=True)

    owner_jobs_cmd = Unicode(
        "squeue -h -t all -u {username} -o '%i %k'",
        help="""The owner's jobs with their comments, run as the hub: where a
        start whose job id was refused finds its real job (by `job_nonce`)
        to cancel it.""",
    ).tag(config=True)

    job_nonce = Unicode(
        help="""A secret of each start, in its job's ``--comment`` (the
        ``{job_nonce}`` of `batch_submit_cmd`): tells the start's job from any
        other of the owner's. Kept in the server's state.""",
    )

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

    async def hub_command(self, template, job_id=None):
        """Run *template* (formatted with the ``req_*`` values and *job_id*,
        by default `job_id`) as the hub."""
        subvars = self.get_req_subvars()
        subvars["job_id"] = job_id or self.job_id
        return await self.run_command(format_template(template, **subvars))

    def get_req_subvars(self):
        subvars = super().get_req_subvars()
        subvars["job_nonce"] = self.job_nonce
        return subvars

    def parse_job_id(self, output):
        try:
            return parse_job_id(output)
        except ValueError as e:
            self._refused_answer = str(e)  # batchspawner logs it and leaves job_id empty
            raise

    async def submit_batch_script(self):
        """batchspawner's submission, with a new nonce, and the job id
        checked before it is kept (see the module's docstring)."""
        self.job_nonce = secrets.token_hex(16)
        self._refused_answer = "sbatch gave no job id"
        try:
            submitted = await super().submit_batch_script()
        except RuntimeError:  # sbatch failed or was killed: it may have queued the job all the same
            await self.cancel_jobs_of_this_start()
            raise
        if submitted:
            why = await self.not_owners_job()
            if not why:
                return self.job_id
        else:
            why = self._refused_answer
        self.job_id = ""
        await self.cancel_jobs_of_this_start()
        raise RuntimeError(f"Job submission for {self.user.name} failed: {why}")

    async def not_owners_job(self):
        """Why `job_id` is not the owner's job of this start (its user and
        comment, from `job_owner_cmd`); None if it is. Without a nonce (state
        saved before there were nonces), the user alone decides."""
        try:
            found = (await self.hub_command(self.job_owner_cmd)).split()
        except RuntimeError as e:
            return f"job {self.job_id} not found ({e})"
        expected = [self.user.name, self.job_nonce] if self.job_nonce else [self.user.name]
        if found[: len(expected)] != expected:
            return f"job {self.job_id} is not {self.user.name}'s job of this start"
        return None

    async def cancel_jobs_of_this_start(self):
        """Cancel the owner's jobs that carry this start's nonce (what sbatch
        queued when its answer is not trusted)."""
        try:
            jobs = await self.hub_command(self.owner_jobs_cmd)
        except RuntimeError as e:
            self.log.error("Could not list the jobs of %s to cancel this start's: %s", self.user.name, e)
            return
        for line in jobs.splitlines():
            job_id, _, comment = line.partition(" ")
            if comment == self.job_nonce and job_id.isascii() and job_id.isdigit():
                self.log.warning("Cancelling job %s of %s: its submission's answer was refused", job_id, self.user.name)
                try:
                    await self.hub_command(self.batch_cancel_cmd, job_id=job_id)
                except RuntimeError as e:
                    self.log.error("Could not cancel job %s of %s: %s", job_id, self.user.name, e)

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
        """The running job's :class:`Usage` (sstat), or None if Slurm did not
        say or the job is not the owner's (sstat has no ``--user``)."""
        why = await self.not_owners_job()
        if why:
            self.log.warning("No usage of job %s of %s: %s", self.job_id, self.user.name, why)
            return None
        try:
            return job_usage(await self.hub_command(self.usage_cmd))
        except RuntimeError as e:  # includes the timeout
            self.log.warning("No usage of job %s of %s: %s", self.job_id, self.user.name, e)
            return None
