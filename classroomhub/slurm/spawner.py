"""ClassroomSlurmSpawner: a person's tier settings as a Slurm job.

batchspawner's ``SlurmSpawner`` submits the job and watches it start; this
module decides what the job asks for. The owner's settings are resolved as
for ClassroomSpawner (tier, then JupyterHub's ``group_overrides``, then
``user_settings``: :mod:`..spawner.settings`), and then ``mem_limit``
becomes ``--mem``, ``cpu_limit`` ``--cpus-per-task`` and ``max_age``
``--time`` (:mod:`.request`). The partition and the account are
batchspawner's ``req_partition`` and ``req_account``, set per tier, group (a
course) or person in the same settings. Slurm's cgroups on the node enforce
the limits; the commands run with time limits (:mod:`.commands`); usage,
culling and end notices come from :mod:`.jobwatch`.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import time

from batchspawner import SlurmSpawner
from batchspawner.batchspawner import JobStatus
from traitlets import Float, Integer, TraitError, Unicode, validate

from ..spawner import notices
from ..spawner.classroomsync import ClassroomSync
from ..spawner.kernels import ManagedKernels
from ..spawner.serverargs import ServerArguments
from ..spawner.settings import TierSettings
from ..spawner.users import SystemUsers
from ..units import human_bytes
from .commands import SlurmCommands
from .jobwatch import SlurmJobWatch
from .request import SLURM_NAME, slurm_cpus, slurm_memory, slurm_time


class ClassroomSlurmSpawner(
    TierSettings,
    SystemUsers,
    ClassroomSync,
    ServerArguments,
    ManagedKernels,
    SlurmJobWatch,
    SlurmCommands,
    SlurmSpawner,
):
    """batchspawner's SlurmSpawner with the classroom's tier policy.

    Each start resolves the owner's settings (tier, group overrides, person)
    and submits a job with the matching ``--mem``, ``--cpus-per-task``,
    ``--time``, partition and account; the server sees the same
    ``MEM_LIMIT``/``CPU_LIMIT`` and shared environments as under
    ClassroomSpawner. Stopping cancels the job (``scancel``), and Slurm
    removes every process of it.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        template_vars = self.user.settings.get("template_vars") if self.user else None
        if template_vars is not None:
            notices.install(template_vars)  # the end-of-job notice on the hub's pages

    max_age = Integer(
        0,
        help="""Seconds a server may run: the job's ``--time``, after which
        Slurm ends it. 0 leaves the partition's default time limit.""",
    ).tag(config=True)

    exec_prefix = Unicode(
        "runuser -u {username} --",
        help="""How the hub (as root, like ClassroomSpawner's) runs sbatch as the
        server's owner, so the job is theirs (the other commands run as the
        hub: see `batch_query_cmd`). batchspawner's default, ``sudo -E -u
        {username}``, needs sudo and a sudoers rule; runuser keeps the
        environment and comes with util-linux.""",
    ).tag(config=True)

    batch_submit_cmd = Unicode(
        "sbatch --parsable --no-requeue --comment={{job_nonce}}{% if account %} --account={{account}}{% endif %}",
        help="""The submit command (a template over the ``req_*`` values and
        ``job_nonce``). ``--comment={{job_nonce}}`` must stay: the hub takes
        the job id sbatch prints only for a job that carries it.
        batchspawner's Slurm script has no ``--account`` line; on the
        command line it also overrides a script's ``#SBATCH`` directive.
        ``--no-requeue``: a job whose node fails ends (``NODE_FAIL``, told to
        its owner) instead of starting again elsewhere, where its server
        would have an address and port the hub does not know.""",
    ).tag(config=True)

    @validate("req_account", "req_partition")
    def _validate_slurm_name(self, proposal):
        # these go into a shell command line (batchspawner runs it with a shell)
        if not SLURM_NAME.fullmatch(proposal.value):
            raise TraitError(f"{proposal.trait.name}: {proposal.value!r} is not a Slurm account or partition name")
        return proposal.value

    job_listen_ip = Unicode(
        "0.0.0.0",
        help="""Address the server listens on inside the job. Any interface by
        default, since the hub reaches it at the node's address
        (``NodeAddr``); ``127.0.0.1`` only where every node is the hub's own
        host. batchspawner ignores ``ip`` (it resets it at each start).""",
    ).tag(config=True)

    node_address_cmd = Unicode(
        "scontrol -o show node {node}",
        help="""Command whose output gives a node's ``NodeAddr=``, where the hub
        reaches the server: Slurm names nodes, and a node name need not
        resolve (several slurmd on one host). If it fails, the node name is
        used as the host.""",
    ).tag(config=True)

    port_wait_timeout = Float(
        30,
        help="""Seconds `start` waits for the server in the job to accept
        connections once it has reported its port (within what is left of
        `start_timeout`), so the hub's first readiness check succeeds instead
        of backing off while jupyter_server starts. A slower server is not
        failed here: the hub keeps checking up to `http_timeout`. 0 returns
        at once.""",
    ).tag(config=True)

    def job_request(self):
        """What the job asks Slurm for, from the owner's resolved settings:
        batchspawner's template variables (memory, nprocs, runtime); a limit
        that is not set leaves the configured ``req_*`` value."""
        request = {}
        if self.mem_limit:
            request["memory"] = slurm_memory(self.mem_limit)
        if self.cpu_limit:
            request["nprocs"] = str(slurm_cpus(self.cpu_limit))
        if self.max_age:
            request["runtime"] = slurm_time(self.max_age)
        return request

    def get_req_subvars(self):
        subvars = super().get_req_subvars()
        subvars.update(self.job_request())
        return subvars

    async def submit_batch_script(self):
        # batchspawner has just reset ip to its class default; the job's
        # JUPYTERHUB_SERVICE_URL (from get_env) carries the address to listen on
        self.ip = self.job_listen_ip
        request = self.get_req_subvars()
        self.log.info(
            "ClassroomSlurmSpawner: %s (%s tier): memory %s, CPUs %s, time %s, partition %s, account %s",
            self.user.name,
            self.tier,
            human_bytes(self.mem_limit or None),
            request.get("nprocs") or "default",
            request.get("runtime") or "default",
            request.get("partition") or "default",
            request.get("account") or "default",
        )
        return await super().submit_batch_script()

    async def start(self):
        deadline = time.monotonic() + self.start_timeout
        self.check_named_server_limit()
        await self.ensure_account()  # never a job as root, a system account or someone else's account
        await self.sync_classroom(deadline)
        node, port = await super().start()
        self.ip = await self.node_address(node)
        self._start_monitor(time.time())
        await self._wait_for_port(self.ip, port, min(self.port_wait_timeout, deadline - time.monotonic() - 1))
        return self.ip, port

    async def poll(self):
        """batchspawner's poll, which also tells the owner when Slurm ended the job."""
        status = await self.query_job_status()
        if status in (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.UNKNOWN):
            return None
        self.note_job_end()
        self._stop_monitor()
        self.clear_state()
        return 1

    async def stop(self, now=False):
        self._stopping = True  # the job's end is the hub's doing, not Slurm's
        self._stop_monitor()
        if self.job_id:
            await super().stop(now)

    def get_state(self):
        state = super().get_state()
        state["tier"] = self.tier
        if self.job_nonce:
            state["job_nonce"] = self.job_nonce
        if self.ended and time.time() - self.ended[0] < notices.NOTICE_SECONDS:
            state["ended"] = self.ended
        return state

    def load_state(self, state):
        super().load_state(state)
        self.tier = state.get("tier", self.tier)
        self.job_nonce = state.get("job_nonce", "")
        self.ended = state.get("ended", [])
        if self.job_id:
            # a job that outlived a hub restart: watch it again, with its settings
            self._restore_settings = True
            self._start_monitor()

    def clear_state(self):
        super().clear_state()
        self.job_nonce = ""
        self.usage = {}

    async def _wait_for_port(self, ip, port, timeout):
        """Return once the server accepts connections, or after *timeout* s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.open_connection(ip, port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return
        self.log.info("Server of %s (job %s) not listening on %s:%s after %.0f s; the hub keeps checking", self.user.name, self.job_id, ip, port, timeout)

    async def node_address(self, node):
        """The address of *node* (its ``NodeAddr``), else its name."""
        try:
            out = await self.run_command(self.node_address_cmd.format(node=shlex.quote(node)))
        except Exception as e:
            self.log.warning("Could not look up the address of node %s (%s): using its name", node, e)
            return node
        match = re.search(r"\bNodeAddr=(\S+)", out)
        return match.group(1) if match else node
