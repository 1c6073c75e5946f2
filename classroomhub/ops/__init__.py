"""What running a hub on a server needs: the example config's fail-safe
checks (:mod:`.config`), the systemd unit (:mod:`.systemd`), the end of
term (:mod:`.term`), and backups, restores and database upgrades
(:mod:`.backup`, :mod:`.locations`; the commands in :mod:`.commands`;
copying a database is :mod:`classroomhub.databases`, below the service)."""
