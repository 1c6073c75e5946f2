"""The classroom service: course content released into students' homes.

A JupyterHub-managed service (``classroomhub-service``), laid out by layer:
:mod:`.app` composes the parts; :mod:`.web` answers HTTP; :mod:`.domain` holds
the rules; :mod:`.files` does the file work in homes, always as the home's
owner; :mod:`.db` is the database. Each layer imports only from those after it.
"""
