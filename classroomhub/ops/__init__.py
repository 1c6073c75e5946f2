"""What running a hub on a server needs: the example config's fail-safe
checks (:mod:`.config`), the systemd unit (:mod:`.systemd`) and the end of
term (:mod:`.term`)."""
