"""The plugin's HMAC-signed JSON-RPC API (``POST /rpc``) plus health and metrics."""
