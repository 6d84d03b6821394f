"""The asyncio engine. It never prints: what happens is told as
:mod:`aoe.events`, and the UI, the results, the run records and the metrics
subscribe to them. It is handed its providers, rate limiter and daily spend,
never picks them (:mod:`aoe.service.wiring` does).

- :mod:`.engine`: :class:`~.engine.Engine`, many runs at a time;
- :mod:`.scheduler`: one run: ready agents, ``max_parallel``, final states,
  cancellation; :mod:`.foreach`: an agent's ``when`` and ``foreach`` items;
- :mod:`.unit`: one unit of work: its prompt, its models and fallbacks, retries;
- :mod:`.attempt`: one call: the cache, the provider within its timeout, the
  output check; :mod:`.admission`: budgets and rate limits before a call,
  settlement after it;
- :mod:`.agents`: the per-agent state they share; :mod:`.context`: what
  templates see; :mod:`.resumption`: what earlier sessions of a run left.
"""
