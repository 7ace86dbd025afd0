"""Mote: a pure-numpy GGUF inference engine for CPython and Pyodide.

The pipeline, one module per stage, in data-flow order:

    GGUF bytes -> gguf.py -> quants.py -> matmul.py -> model.py -> sampler.py -> generate.py -> bridge.py
      (file or    header,    block       W @ x on      forward(tokens)   logits     yields          JS <-> Py
       fetch)     metadata,  layouts     quant blocks  + KV cache        -> id      TokenEvent      (browser only)
                  tensor views
                     -> config.py (hyperparameters, read once) + tokenizer.py (vocabulary from metadata)

Only numpy and the standard library are imported at run time.
"""

__version__ = "0.1.0"
