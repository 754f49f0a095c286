"""One error hierarchy for every deployable.

The class of an exception *is* the policy, as in the reference coprocessor:

* ``Recoverable``   - try again later (database down, S3 unavailable, inputs not ready).
                      Jobs exit 75 (EX_TEMPFAIL) so the Job controller retries the pod.
* ``Irrecoverable`` - this piece of work can never succeed (bad ciphertext bytes,
                      unsupported op/type, malformed input). Mark it failed with the
                      reason; Jobs exit 3, which the podFailurePolicy turns into FailJob.
* ``Fatal``         - the process itself is broken (misconfiguration, corrupt state);
                      exit 1 and let the supervisor restart it.

A ``UserError`` is an ``Irrecoverable`` caused by what a person typed: the CLI prints
its message as one line, without a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_IRRECOVERABLE = 3
EXIT_RECOVERABLE = 75


class CoprocessorError(Exception):
    """Base of every error the product raises on purpose."""

    exit_code: int = EXIT_FATAL


class Recoverable(CoprocessorError):
    """Transient: the same work may succeed if retried later."""

    exit_code = EXIT_RECOVERABLE


class Irrecoverable(CoprocessorError):
    """Permanent for this work item: retrying gives the same failure."""

    exit_code = EXIT_IRRECOVERABLE


class Fatal(CoprocessorError):
    """The process cannot go on; it should exit and be restarted."""

    exit_code = EXIT_FATAL


class UserError(Irrecoverable):
    """Bad input from a person or a file; shown as one line, never as a traceback."""


class ConfigError(UserError):
    """A setting is malformed or missing. The message names the setting."""


class ServiceUnavailable(Recoverable):
    """A dependency (PostgreSQL, S3, chain RPC, API server) did not answer."""

    def __init__(self, service: str, detail: str) -> None:
        super().__init__(f"{service} is unavailable: {detail}")
        self.service = service
        self.detail = detail


class MissingInputs(Recoverable):
    """Inputs of a computation are not stored yet (another batch may still produce them)."""

    def __init__(self, handles: list[bytes], why: str = "") -> None:
        shown = ", ".join("0x" + h.hex() for h in handles[:5])
        more = f" and {len(handles) - 5} more" if len(handles) > 5 else ""
        super().__init__(f"missing input ciphertexts: {shown}{more}{why}")
        self.handles = handles


class InvalidRow(Irrecoverable):
    """A row offered to the database breaks the wire contract (size, code, cycle)."""


class SchemaTooNew(Fatal):
    """The database was migrated by a newer release than this code."""


def exit_code_for(error: BaseException) -> int:
    """Map any exception to the process exit code its class asks for."""
    if isinstance(error, CoprocessorError):
        return error.exit_code
    return EXIT_FATAL
