"""The operator's console: an HTTP API with a resumable event stream, and web pages.

Private: started by `stageline serve APP --http HOST:PORT` and `stageline console`.
`app.build_app` assembles the Starlette application; `server` runs it under uvicorn.
See docs/console.md.
"""
