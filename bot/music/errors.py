"""Everything that can go wrong while making a track, as one exception tree.

    GenerationError            user_message (one sentence for the asker) + detail (for logs)
    ├── TransientError         worth another try: connection trouble, 429, 5xx, a worker that died
    │   ├── RateLimitedError   429; carries retry_after from the Retry-After header
    │   └── ServiceUnavailableError
    └── PermanentError         another try would fail the same way (and every create is billed)
        ├── InvalidRequestError        our own validation: nothing was sent, nothing was paid
        ├── AuthenticationError        401/403: REPLICATE_API_TOKEN is wrong
        ├── BillingError               402
        ├── ModelNotFoundError         404 on the model or version
        ├── InputRejectedError         422
        ├── PredictionFailedError      the model ran and failed for a reason retrying won't fix
        ├── PredictionCanceledError
        ├── GenerationTimeoutError     GENERATION_TIMEOUT_SECONDS passed
        ├── OutputError                the output was missing, malformed, too big or undownloadable
        └── UnexpectedResponseError    a 2xx answer that isn't the prediction JSON we expect

Third-party exceptions (httpx, replicate) are translated once, in the Replicate adapter; nothing
else catches them. Neither text ever contains a token: details are built from status codes and
the service's own error fields, never from request headers.
"""

from __future__ import annotations


class GenerationError(Exception):
    """Base of the tree. `str(error)` is the log detail; `user_message` is for the end user."""

    transient = False
    default_message = "Something went wrong while making your track."

    def __init__(self, user_message: str | None = None, detail: str | None = None) -> None:
        self.user_message = user_message or self.default_message
        self.detail = detail or self.user_message
        super().__init__(self.detail)


class TransientError(GenerationError):
    transient = True
    default_message = "Replicate is having trouble right now; please try again in a minute."

    def __init__(
        self,
        user_message: str | None = None,
        detail: str | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(user_message, detail)
        self.retry_after = retry_after


class RateLimitedError(TransientError):
    default_message = "Replicate is rate-limiting this bot; please try again in a minute."


class ServiceUnavailableError(TransientError):
    pass


class TransientPredictionError(TransientError):
    """The model failed for a reason that may not repeat (out of memory, a lost worker)."""

    default_message = "The model crashed while making your track; please try again."


class PermanentError(GenerationError):
    pass


class InvalidRequestError(PermanentError):
    default_message = "That request isn't valid."


class AuthenticationError(PermanentError):
    default_message = (
        "Replicate rejected the bot's API token; the bot owner must fix REPLICATE_API_TOKEN."
    )


class BillingError(PermanentError):
    default_message = (
        "The bot owner's Replicate account is out of credit; they need to add billing on "
        "replicate.com before tracks can be made."
    )


class ModelNotFoundError(PermanentError):
    default_message = (
        "Replicate doesn't know the configured model; the bot owner must fix REPLICATE_MODEL."
    )


class InputRejectedError(PermanentError):
    default_message = "Replicate rejected the request's settings."


class PredictionFailedError(PermanentError):
    default_message = "The model couldn't make this track."


class PredictionCanceledError(PermanentError):
    default_message = "The generation was cancelled."


class GenerationTimeoutError(PermanentError):
    default_message = "The track took too long to make and was cancelled; please try again."


class OutputError(PermanentError):
    default_message = "Replicate finished, but the track couldn't be fetched."


class UnexpectedResponseError(PermanentError):
    """Replicate, or a proxy in front of it, answered a request with something other than JSON.

    Permanent because of creates: after a garbled create answer nobody knows whether a billed
    prediction was started, so creating again could pay twice. The adapter turns a garbled
    *poll* answer into a transient error instead, since polling again costs nothing.
    """

    default_message = (
        "Replicate sent an answer the bot couldn't understand, so your track couldn't be "
        "made; please try again in a few minutes."
    )
