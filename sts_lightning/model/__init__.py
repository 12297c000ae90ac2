"""Stage 2, the model side: loading a causal LM (the embedded default offline), capturing its
residual stream, and the SAE that reads it (load, check, encode, train, resolve)."""
