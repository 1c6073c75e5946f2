"""What running a hub on a server needs: the example config's fail-safe
checks (:mod:`.config`), the systemd unit (:mod:`.systemd`), the end of
term (:mod:`.term`), and backups, restores and database upgrades
(:mod:`.backup`, :mod:`.dbcopy`, :mod:`.locations`; the commands in
:mod:`.commands`)."""
