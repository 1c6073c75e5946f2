"""The service's rules, without HTTP: releases and their delivery
(:mod:`.releases`), due dates, extensions and the submission that counts
(:mod:`.assignments`), collection (:mod:`.collect`), graders' copies and
feedback (:mod:`.grading`), rate limits, the audit trail; and what they all
share (:mod:`.context`). It may import from :mod:`..files`
and :mod:`..db` and from classroomhub's lower layers, never from :mod:`..web`
or :mod:`classroomhub.service.app`.
"""
