"""Launching gcfl simulations: a private SuperLink, ``flwr run``, status and results."""
