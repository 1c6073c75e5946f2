"""The only code that touches people's homes (privileged).

Inside the worker, which runs as a home's owner (standard library only):
:mod:`.worker` (its protocol and :func:`~.worker.become`), :mod:`.nofollow`
(file operations that never follow a link, and the one walker),
:mod:`.placing` (delivering into a home) and :mod:`.exporting` (handing a
folder's files to the service). In the service: starting workers as a person
(:mod:`.runas`), the content-addressed store (:mod:`.store`), delivery to
many homes (:mod:`.delivery`) and freezing a student's processes at a
deadline (:mod:`.freezer`). It may import only from :mod:`..db` and from
classroomhub's lower layers, never from :mod:`..web` or :mod:`..domain`.
A worker imports this package on its own, as ``files``: keep this file free
of imports.
"""
