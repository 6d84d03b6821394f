"""Where untrusted template work runs: a child process bounded in time and memory.

:mod:`aoe.sandbox.pool` is the engine's side, :mod:`aoe.sandbox.child` the
process's. Only :mod:`aoe.sandbox.pool` is imported by the engine; the child
keeps its imports to Jinja (and jsonschema when it checks a reply).
"""
