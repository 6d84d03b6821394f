"""The exception tree of aoe.

::

    AoeError                       root; never raised itself
    ├── UserError                  the user can fix it; exit code 2
    │   ├── DiagnosticsError       ... described by located diagnostics
    │   │   ├── WorkflowInvalid    a workflow file with one or more diagnostics
    │   │   ├── ConfigInvalid      the engine config (file, environment, flags)
    │   │   ├── InputsInvalid      run-time inputs that do not fit the workflow
    │   │   └── YamlError          text that is not a usable YAML document (format.yamlsource)
    │   ├── MissingApiKey          a provider the workflow uses has no key
    │   ├── StateUnusable          the run store cannot be opened (corrupt, newer, unreadable)
    │   ├── RunNotFound            no run with that id in the store
    │   ├── ResumeRefused          the run cannot be resumed as asked (file changed, running)
    │   ├── OptionInvalid          an option's value cannot be used (a port in use, no token)
    │   ├── FileRefused            a named file that cannot be read (format.files)
    │   ├── TemplateProblem        a template unparsable or too costly (format.environment)
    │   ├── NumberTooLarge         an integer beyond what aoe reads (format.yamlsource)
    │   └── BodyInvalid            an HTTP body or query that cannot be used (service.models)
    ├── StateWriteFailed           the run store could not be written (disk full): exit 1
    ├── RedisFailed                the shared Redis refused a command (out of memory): exit 1
    │   └── RedisUnreachable       ... or cannot be reached (down, restarting, failing over)
    ├── GraphError                 a graph that is not a DAG of known nodes: a bug (format.graph)
    ├── RunError                   an agent's attempt failed; exit code 1
    │   ├── ProviderError          the provider refused or failed (SDK errors end here)
    │   │   ├── RateLimited        429: retryable, with retry-after when given
    │   │   ├── ProviderUnavailable  5xx, 529, 408, 409, connection: retryable
    │   │   ├── RequestRejected    other 4xx (bad request, auth, not found): final
    │   │   └── ProviderFault      a reply that breaks the request (more than max_tokens): final
    │   ├── AttemptTimeout         the per-attempt timeout: retryable
    │   ├── OutputInvalid          a reply that is not the JSON its schema asks: retryable
    │   ├── ReplyTruncated         a reply cut off at max_tokens, not allowed: retryable
    │   ├── SchemaUnusable         the output schema cannot be applied (not the reply's fault)
    │   ├── RepliesTooLarge        a run's replies passed what a service keeps of one run
    │   ├── BudgetExceeded         the next attempt does not fit a cost limit (policy.costs)
    │   ├── RequestTooLarge        a request over tokens_per_minute by itself (policy.limits)
    │   ├── SandboxFailed          a template or check the sandbox could not finish (sandbox.pool)
    │   └── TooLarge               a rendered text over the limit (format.rendering)
    └── Signal                     control flow between aoe's own modules; never reaches a user
        ├── Superseded             another process took the run's Redis record over (redis.records)
        ├── Partial                Redis holds a run's journal only past the copy (redis.copies)
        └── Refused                the HTTP service answers a request with a status (service.models)

Every error carries a message that says what is wrong and how to fix it. The
command line prints ``str(error)`` (or its diagnostics) and exits with
``error.exit_code``; it never shows a traceback unless asked to with ``--debug``.
Run errors end an attempt; whether the attempt is retried is ``retryable``.

The classes named with a module are defined there, beside what raises them;
``aoe.format.graph`` may import this module because it is pure. A few also
derive from ``ValueError`` (``GraphError``, ``NumberTooLarge``, ``TooLarge``,
``BodyInvalid``): they are raised inside code (Jinja, PyYAML, parsers) whose
callers catch ``ValueError``, and stay catchable there. Third-party errors are
translated where they enter: redis-py's in :mod:`aoe.redis.client`, sqlite3's in
:mod:`aoe.state.store`, the vendor SDKs' in :mod:`aoe.providers`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aoe.types import Diagnostic


class AoeError(Exception):
    """Root of every error aoe raises on purpose."""

    exit_code: int = 1


class UserError(AoeError):
    """Bad usage or bad input: a file, a value or an option the user can fix."""

    exit_code = 2


class DiagnosticsError(UserError):
    """A user error described by located diagnostics (``FILE:LINE:COL: error: ...``)."""

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.diagnostics: tuple[Diagnostic, ...] = tuple(diagnostics)
        super().__init__("\n".join(d.format() for d in self.diagnostics))


class WorkflowInvalid(DiagnosticsError):
    """A workflow file that cannot be used; ``diagnostics`` says every reason."""


class ConfigInvalid(DiagnosticsError):
    """The engine configuration (config file, environment or flags) is invalid."""


class InputsInvalid(DiagnosticsError):
    """Inputs given at run time that are missing, undeclared or of the wrong type."""


class MissingApiKey(UserError):
    """Providers the workflow uses whose API key variable is not set."""

    def __init__(self, missing: Sequence[tuple[str, str]]) -> None:
        self.missing = tuple(missing)
        lines = [
            f"no API key for provider '{provider}': set {variable} "
            "(in the environment or in a .env file), or run with --mock to try it offline"
            for provider, variable in self.missing
        ]
        super().__init__("\n".join(lines))


class RunError(AoeError):
    """Something that ends an attempt of an agent.

    ``retryable`` says whether another attempt may succeed; ``retry_after`` is
    the least wait the provider asked for, in seconds.
    """

    exit_code = 1
    retryable: bool = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class ProviderError(RunError):
    """The provider refused the request or failed to answer it."""

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | None = None,
        retry_after: float | None = None,
        sent: bool = True,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.provider = provider
        self.status = status
        self.sent = sent  # False: the request never left (no connection): nothing billed


class RateLimited(ProviderError):
    """HTTP 429: the provider's own limits were hit."""

    retryable = True


class ProviderUnavailable(ProviderError):
    """A server error (5xx, Anthropic's 529), 408, 409, or no connection: try again."""

    retryable = True


class RequestRejected(ProviderError):
    """Any other 4xx: bad request, authentication, permission, not found. Not retried."""

    retryable = False


class ProviderFault(ProviderError):
    """The server answered, but not as asked: it reported more output tokens than
    ``max_tokens`` allows (it ignores the limit aoe sent). Billed as reported; not
    retried on the same provider, which would do the same (fallbacks are tried)."""

    retryable = False


class AttemptTimeout(RunError):
    """The attempt took longer than the agent's ``timeout``."""

    retryable = True


class OutputInvalid(RunError):
    """The reply is not JSON, or does not match the output schema."""

    retryable = True


class ReplyTruncated(RunError):
    """The reply was cut off at ``max_tokens`` and the agent asks for complete
    replies (``output.allow_truncated: false``): tried again, as the retry
    policy allows."""

    retryable = True


class RepliesTooLarge(RunError):
    """The replies of one run, together, passed what the service running it keeps of
    a run (``aoe serve --max-reply-bytes``). Another attempt would only add more."""

    retryable = False


class SchemaUnusable(RunError):
    """The output schema cannot be applied to a reply: a ``$ref`` the loader did not
    resolve, a type the validator does not know. Another attempt would fail alike.

    The message is aoe's own: never the text of the exception behind it, which
    may quote the schema (or a file it names) whole."""

    retryable = False


class StateUnusable(UserError):
    """The run store cannot be opened: corrupt, written by a newer aoe, unreadable."""


class RunNotFound(UserError):
    """No run with the id given is in the store."""


class ResumeRefused(UserError):
    """The run cannot be resumed as asked: its workflow changed, or it is still running."""


class OptionInvalid(UserError):
    """An option's value cannot be used: a port in use, a bad address, a missing token."""


class StateWriteFailed(AoeError):
    """The run store could not be written during a run (a full disk, an I/O error).

    The run stops before its next call: work it cannot record could be paid for
    twice. What was committed before stays, and the run can be resumed."""

    exit_code = 1


class RedisFailed(AoeError):
    """The shared Redis refused a command: out of memory, a script error, a
    replica being promoted. Raised only by :func:`aoe.redis.client.translated`,
    the one place redis-py's errors enter aoe; the message is Redis's own."""

    exit_code = 1


class RedisUnreachable(RedisFailed):
    """The shared Redis cannot be reached (down, restarting, loading, a read-only
    replica during a failover): what waiting, or falling back, is for."""


class Signal(AoeError):
    """Control flow between aoe's own modules: raised and caught inside aoe, so
    it never reaches a user; it is in the tree so that no ``except AoeError``
    mistakes it for a third party's error."""


_KEYS = re.compile(r"(sk-[A-Za-z0-9_\-*]{3})[A-Za-z0-9_\-*]{5,}")
_URL_PASSWORD = re.compile(r"(//[^@/:\s]*):[^@/\s]*@")


def scrub(message: str, secrets: tuple[str, ...] = ()) -> str:
    """A provider's message without API keys: the key itself, anything shaped
    like one (the vendors echo part of a wrong key back), and the password of a
    URL (``https://user:password@proxy``)."""
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    message = _URL_PASSWORD.sub(r"\1:***@", message)  # a proxy's credentials
    return _KEYS.sub(r"\1***", message)
