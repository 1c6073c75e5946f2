"""The service's database: the tables (:mod:`.models`) and the versioned
migrations that bring an existing database up to them (:mod:`.migrations`).
It may import only from classroomhub's lower layers (below the service),
never from another part of the service.
"""
