"""The base of jsar's domain errors: what a user can cause and fix (a folder in no known layout, a file that
does not decode, weights that cannot be found, a store built by another model, ground truth that cannot be
read). The CLI prints these, OS errors and ValueErrors as one line; anything else is a bug and shows its
traceback."""


class JsarError(Exception):
    """Raised for bad input or a missing resource; the message is one line saying what to do."""
