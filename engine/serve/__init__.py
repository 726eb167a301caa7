"""`embedscope serve`: the engine over HTTP (FastAPI + uvicorn), with keys, limits and audit.

Importing this package imports neither FastAPI nor uvicorn; `engine.serve.app` does.
"""
