"""The server side: the ServerApp, server-side evaluation and the results file."""
