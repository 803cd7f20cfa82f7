"""Tools for testing gcfl deployments: clients that misbehave on purpose."""
