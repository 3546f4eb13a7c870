"""One exception root, subclassed by who must act (STYLE habit 7)."""

from __future__ import annotations

from dataclasses import dataclass


class NsvisorError(Exception):
    """Root of every error nsvisor raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One validation problem: where (field/key), what, and how to fix it."""

    field: str
    message: str
    line: int | None = None

    def render(self, source: str | None = None) -> str:
        where = self.field
        if source:
            where = (
                f"{source}:{self.line}: {self.field}" if self.line else f"{source}: {self.field}"
            )
        return f"{where}: {self.message}"


class ConfigError(NsvisorError):
    """The user must act: bad config file, bad CLI option, bad API request body."""

    def __init__(self, problems: list[Problem], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__("\n".join(p.render(source) for p in self.problems))


class StateError(NsvisorError):
    """The caller must act: the request conflicts with a container's state
    (duplicate name, removing a running container without force, ...)."""


class NotFoundError(NsvisorError):
    """No such container (or other named object)."""


class KernelError(NsvisorError):
    """The kernel refused: carries errno and the path or call involved."""

    def __init__(self, message: str, *, errno: int | None = None, path: str | None = None) -> None:
        self.errno = errno
        self.path = path
        super().__init__(message)
