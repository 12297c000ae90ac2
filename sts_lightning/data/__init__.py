"""Stage 1, data: examples and prompts, the one row reader (:mod:`~sts_lightning.data.row_reader`),
named domains and training sets, any training source (files, ``datasets``) and batching."""
