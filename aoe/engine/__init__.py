"""The asyncio executor and its event bus. The engine never prints: what
happens is told as :mod:`aoe.events`, and the UI, the results and (in
later releases) the run records and metrics subscribe to them."""
