"""Mote's runtime: a pure-numpy GGUF inference engine for CPython and Pyodide (the browser wheel).

The pipeline, one module per stage, in data-flow order:

    GGUF bytes -> gguf.py -> quants.py -> matmul.py -> model.py -> sampler.py -> generate.py -> session.py -> bridge.py
      (file or    header,    block       W @ x on      forward(tokens)   logits     yields         request ->    JS <-> Py
       fetch)     metadata,  layouts     quant blocks  + KV cache        -> id      TokenEvent     event dicts   (browser only)
                  tensor views
                     -> config.py (hyperparameters, read once) + tokenizer.py (vocabulary) + chat.py (template)

Beside it: shard.py spreads one model over several workers (model.py builds each shard, shard.py
moves bytes and partial sums between them); atome.py is model.py's counterpart for the `atome`
architecture. CPython-only tools (the `mote` CLI, importers, quantizer, benchmarks) live in the
`mote` package, which this one never imports. Only numpy and the standard library are imported at
run time (jinja2 when present, for chat templates).
"""

__version__ = "0.1.0"
