"""The classroom service: course content released into students' homes.

A JupyterHub-managed service (``classroomhub-service``). The file work in
homes is done by :mod:`.worker`, always as the home's owner.
"""
