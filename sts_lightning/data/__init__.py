"""Stage 1, data: examples and prompts, named domains and training sets, any training source
(files, ``datasets``), batching and the LightningDataModules."""
