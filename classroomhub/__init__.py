"""classroomhub: a JupyterHub plugin package for classrooms and research groups."""

from ._version import __version__


def __getattr__(name):
    # Lazy, so `import classroomhub` (e.g. for the CLI or roster checks) does
    # not import JupyterHub's authenticator and spawner machinery.
    if name in ("ClassroomGitHubAuthenticator", "ClassroomPasswordAuthenticator", "RosterAuthenticatorMixin"):
        from . import authenticator

        return getattr(authenticator, name)
    if name == "ClassroomSpawner":
        from .spawner import ClassroomSpawner

        return ClassroomSpawner
    raise AttributeError(name)


__all__ = [
    "__version__",
    "ClassroomGitHubAuthenticator",
    "ClassroomPasswordAuthenticator",
    "ClassroomSpawner",
    "RosterAuthenticatorMixin",
]
