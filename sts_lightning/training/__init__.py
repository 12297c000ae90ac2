"""Stage 5, fine-tuning: the SFT and GRPO LightningModules, GRPO's math, rollouts and rewards,
and the DataModules (``sts-lightning fit|validate`` drives them: :mod:`sts_lightning.cli.fit`)."""
