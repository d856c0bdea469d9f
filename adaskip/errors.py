"""The base of every error adaskip reports to users as one line (stage scripts exit 2 on these)."""


class AdaskipError(Exception):
    """A problem the user can fix (bad params, data, checkpoint, tracking store, diverging training)."""
