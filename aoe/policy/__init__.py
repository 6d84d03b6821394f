"""The engine's rules as pure code: costs and budgets, rate limits, retries,
output checks and the worst-case plan. No I/O; time comes from an injected clock."""
