"""What a domain object refuses, and why: the web layer answers 400 or 404
with the message (``TooMany``, for limits, is in :mod:`.limits`)."""


class Invalid(ValueError):
    """The request cannot be done as asked (a 400)."""


class NotFound(LookupError):
    """What the request names does not exist (a 404)."""
