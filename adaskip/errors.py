"""The base of every error adaskip reports to users as one line (stage scripts exit 2 on these)."""


class AdaskipError(Exception):
    """A problem the user can fix (bad params, data, checkpoint, tracking store, diverging training)."""

    recurs: bool = True  # raised again by any retry (a bad value or file); False: a retry may pass (a server was down)


def describe(error: BaseException) -> str:
    """``TrainingDiverged: loss is nan ...``: the original error inside Ray's wrapper (``RayTaskError.cause``),
    its last non-empty line, credentials redacted, at most 300 characters (an MLflow tag, a line of a report)."""
    from .redact import redact

    cause = getattr(error, "cause", None) or error
    lines = [line for line in redact(str(cause)).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"[:300]
