"""Stage 4, monitoring during training: the tracker both STS callbacks share, held-out
evaluation, and the plots and tables of a tracked run."""
