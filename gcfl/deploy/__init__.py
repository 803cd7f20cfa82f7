"""Deployment: SuperLink and SuperNodes as separate processes (or containers), TLS and auth."""
