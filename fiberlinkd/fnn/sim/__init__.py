"""The FNN simulator's parts: ``params`` (serde-like parsing), ``invoices`` (the invoice
string codec), ``node`` (state and FNN semantics), ``server`` (HTTP/1.1 + JSON-RPC).
The public entry point is :mod:`fiberlinkd.fnn.simulator`.
"""
