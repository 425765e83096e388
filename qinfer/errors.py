"""Exceptions shared by the engine, the queue and the client (light: no torch)."""


class QinferError(Exception):
    """Base of every qinfer error."""


class InvalidRequestError(QinferError, ValueError):
    """A request that can never run as given (empty or too-long prompt, bad token ids, ...).

    The message is written for the user who sent it.
    """
