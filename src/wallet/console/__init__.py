"""The operator console: a single static page (`static/`: HTML, one hand-written JavaScript module,
one stylesheet) served at `/console` by `wallet.api.routes.console`, and the few reads it needs
beyond the public API (`reports`: user search, the audit, daily volume).

The page talks to the same JSON API as every other client, with the API key the operator enters
(kept in the browser tab's sessionStorage and sent as a Bearer token): the API's scopes, errors
and idempotency apply to it unchanged. Nothing here needs a build step.
"""
