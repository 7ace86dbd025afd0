"""Mote's development server: the chat page, the browser assets and the GGUF files (web/app.py).

Not part of the engine: this package runs only in CPython (FastAPI + uvicorn) and is never shipped
to the browser. Start it with `mote serve` or `python -m web`.
"""
