"""The Python API's implementation: :mod:`aoe.api.engine` (the library's
:class:`~aoe.api.engine.Engine` and :func:`~aoe.api.engine.run`) and
:mod:`aoe.api.results` (what a run returns). Users import them from :mod:`aoe`.
"""
