"""The only code that touches people's homes (privileged): the worker that
runs as a home's owner (:mod:`.worker`), starting it as that person
(:mod:`.runas`), the content-addressed store (:mod:`.store`), delivery into
homes (:mod:`.delivery`) and freezing a student's processes at a deadline
(:mod:`.freezer`). It may import only from :mod:`..db` and from classroomhub's
lower layers (below the service), never from :mod:`..web` or :mod:`..domain`.
"""
