"""servekit's exceptions, each carrying the HTTP status it answers with.

Hierarchy::

    ServekitError (500)
    ├── BadRequestError (400)            malformed JSON, wrong content
    │   └── InvalidInputError (422)      a field or tensor at fault (``field=``)
    ├── PayloadTooLargeError (413)       body or record count over a limit (``limit=``)
    ├── UnauthorizedError (401)          admin route without a valid token
    ├── NotFoundError (404)
    │   └── ModelNotFoundError (404)     unknown model or version
    ├── ConflictError (409)              a version that already exists
    ├── UnavailableError (503)           try again later (``retry_after=`` seconds)
    │   ├── OverloadedError (503)        the batcher's queue is full
    │   ├── ModelLoadError (503)         a model that cannot be loaded now
    │   └── ModelTimeoutError (503)      a model's backend call ran past its timeout
    ├── ArtifactIntegrityError (500)     artifact bytes do not match their sha256
    └── StoreError (500)                 the artifact store failed

The HTTP layer (``services.edge.http``) turns them into JSON: 4xx show the message, 5xx a
generic one (details go to the log).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any


class ServekitError(Exception):
    """Root of servekit's errors."""

    error_code: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = context

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of the error response."""
        # "error" holds the message, as Triton and KServe clients expect.
        body: dict[str, Any] = {"error": self.message, "type": type(self).__name__}
        body.update({k: v for k, v in self.context.items() if v is not None})
        return body


class BadRequestError(ServekitError):
    """The request cannot be read at all."""

    error_code = HTTPStatus.BAD_REQUEST


class InvalidInputError(BadRequestError):
    """A field or tensor of the request is wrong; ``field`` names it."""

    error_code = HTTPStatus.UNPROCESSABLE_ENTITY

    def __init__(self, message: str, *, field: str | None = None, **context: Any) -> None:
        super().__init__(message, field=field, **context)
        self.field = field


class PayloadTooLargeError(ServekitError):
    """The body or the number of records is over a configured limit."""

    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE

    def __init__(self, message: str, *, limit: int, **context: Any) -> None:
        super().__init__(message, limit=limit, **context)
        self.limit = limit


class UnauthorizedError(ServekitError):
    """An admin route was called without a valid bearer token."""

    error_code = HTTPStatus.UNAUTHORIZED


class NotFoundError(ServekitError):
    """No such resource."""

    error_code = HTTPStatus.NOT_FOUND


class ModelNotFoundError(NotFoundError):
    """No such model, or no such version of it."""

    def __init__(self, model: str, version: str | None = None) -> None:
        what = f"model {model!r}" if version is None else f"version {version!r} of model {model!r}"
        super().__init__(f"unknown {what}", model=model, version=version)
        self.model = model
        self.version = version


class ConflictError(ServekitError):
    """The resource exists already."""

    error_code = HTTPStatus.CONFLICT


class UnavailableError(ServekitError):
    """Temporarily unable to serve; ``retry_after`` says when to try again (seconds)."""

    error_code = HTTPStatus.SERVICE_UNAVAILABLE

    def __init__(self, message: str, *, retry_after: float = 1.0, **context: Any) -> None:
        super().__init__(message, retry_after=retry_after, **context)
        self.retry_after = retry_after


class OverloadedError(UnavailableError):
    """The runner's queue is full: shed at once rather than queue without bound."""


class ModelLoadError(UnavailableError):
    """A model could not be loaded (bad artifact, missing file, store down)."""


class ModelTimeoutError(UnavailableError):
    """A model's backend call ran past its timeout; the model is unhealthy until it returns."""


class ArtifactIntegrityError(ServekitError):
    """An artifact's bytes do not match the sha256 recorded at registration."""


class StoreError(ServekitError):
    """The artifact store (local folder, S3, BentoML store) failed."""
