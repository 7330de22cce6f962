"""Talking to the Fiber Network Node: types, errors, the HTTP client and the simulator.

- :mod:`.types`     frozen results and the :class:`FiberNode` protocol actors depend on
- :mod:`.errors`    the error tree (transport / node / contract) and outcome helpers
- :mod:`.hexcodec`  FNN's strict hex encodings (u64/u128, Hash256, Pubkey)
- :mod:`.client`    :class:`FnnClient`, JSON-RPC over an injected ``httpx.AsyncClient``
- :mod:`.simulator` a faithful loopback FNN for tests and ``fiberlinkd demo``
"""
