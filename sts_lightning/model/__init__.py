"""Stage 2, the model side: loading a causal LM (the embedded default offline), capturing its
residual stream, and the SAE that reads it: its contract, loading and quality (``sae``), its
training (``sae_training``) and which SAE a run reads (``sae_source``)."""
