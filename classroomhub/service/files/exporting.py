"""The worker's ``export`` job: the regular files of a folder handed to the
service as open descriptors over a Unix socket.

The files are opened as the person, found by the one walker
(:func:`.nofollow.walk`); the service only copies from descriptors it was
given. Run inside the worker: the standard library only.
"""

import errno
import json
import os
import socket
import struct

from .nofollow import DIR_FLAGS, READ_FLAGS, Refused, describe_error, open_path, split_relpath, walk

# an export's messages: a 4-byte length, then JSON (with an fd or not)
FRAME = struct.Struct("!I")
# files an export hands over before it waits for the service to finish one
WINDOW = 64


def open_export_root(job):
    """The folder to export: ``path`` as given (an instructor's own choice of
    source), or ``base`` below ``home`` reached without following any link
    (a student's work, collected)."""
    if "path" in job:
        return os.open(job["path"], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    home_fd = os.open(job["home"], DIR_FLAGS)
    try:
        return open_path(home_fd, split_relpath("/".join(job["base"])), create=False)
    finally:
        os.close(home_fd)


def send_frame(sock, message, fd=None):
    """One length-prefixed JSON message, with *fd* attached to it if given."""
    data = json.dumps(message).encode()
    frame = FRAME.pack(len(data)) + data
    sent = socket.send_fds(sock, [frame], [fd]) if fd is not None else 0
    sock.sendall(frame[sent:])


def export(job, sock):
    """Hand the service the regular files below the job's folder, opened.

    Each file is opened here, as the person, without following links, and
    its descriptor passed over *sock* with its path: the service copies it
    into the store in the kernel, so no byte crosses a pipe. At most
    ``WINDOW`` files are in flight; the service answers one byte per file
    done. Leaves out names in ``skip`` (anywhere) and ``skip_top`` (directly
    in the folder), files on another file system, files over
    ``max_file_bytes`` and everything once ``max_bytes`` are taken; the last
    message lists what was left out and why, and the folders changed after
    ``since_ns`` (see :func:`walk`).
    """
    limits = {"entries": job.get("max_entries", 100_000), "depth": job.get("max_depth", 64), "since_ns": job.get("since_ns")}
    max_bytes = job.get("max_bytes", 10 * 1024**3)
    max_file = job.get("max_file_bytes") or max_bytes
    total = in_flight = 0
    skipped = limits["skipped"] = []
    try:
        root_fd = open_export_root(job)
    except Refused as e:
        raise OSError(errno.ENOTDIR, str(e)) from None
    try:
        device = os.fstat(root_fd).st_dev
        for rel, dir_fd, name, st in walk(root_fd, limits, job.get("skip", ()), job.get("skip_top", ())):
            if st.st_dev != device:
                skipped.append((rel, "on another file system; skipped"))
                continue
            if st.st_size > max_file:
                skipped.append((rel, f"larger than {max_file} bytes; skipped"))
                continue
            if total + st.st_size > max_bytes:
                skipped.append((rel, f"over the limit of {max_bytes} bytes"))
                continue
            try:
                fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
            except OSError as e:
                skipped.append((rel, describe_error(e)))
                continue
            try:
                now = os.fstat(fd)
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                    continue  # swapped after the walk saw it
                while in_flight >= WINDOW:
                    done = sock.recv(in_flight)
                    if not done:
                        raise OSError(errno.EPIPE, "the service went away")
                    in_flight -= len(done)
                send_frame(sock, {"path": rel}, fd)
                in_flight += 1
                total += now.st_size
            finally:
                os.close(fd)
        send_frame(sock, {"skipped": skipped, "changed": limits["changed"]})
    finally:
        os.close(root_fd)
