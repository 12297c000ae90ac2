"""Stage 5, fine-tuning: the SFT and GRPO LightningModules, GRPO's math, rollouts and rewards,
and the LightningCLI behind ``sts-lightning fit|validate``."""
