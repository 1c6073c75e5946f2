"""The service's HTTP layer: REST handlers, HTML pages and their templates,
the OpenAPI document, and who is asking (:mod:`.hub`: the hub API client and
:class:`~.hub.Person`, :mod:`.scopes`: the OAuth scopes). It may import from
:mod:`..domain`, :mod:`..files` and :mod:`..db` and from classroomhub's lower
layers, never from :mod:`classroomhub.service.app` or above the service.
"""
