"""The service's rules, without HTTP: releases and their delivery, collection
and deadlines, rate limits, the audit trail. It may import from :mod:`..files`
and :mod:`..db` and from classroomhub's lower layers, never from :mod:`..web`
or :mod:`classroomhub.service.app`.
"""
