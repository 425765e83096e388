"""The OpenAI-compatible gateway: /v1/chat/completions, /v1/completions, /v1/models,
/v1/files and /v1/batches over the fleet (docs/gateway.md).

Stateless: every piece of state lives in Redis or the file store, so any number of
replicas serve behind a load balancer. `qinfer.gateway.app.create_app` builds the
ASGI app; `qinfer serve` runs it. Needs the `gateway` extra (FastAPI, uvicorn).
"""
