"""Add STS to your TRL script: an ``SFTTrainer`` run with ``STSTrainerCallback.attach``.

    python examples/trl_sts.py                             # embedded SmolLM2 + its cached SAE
    python examples/trl_sts.py --model DIR --sae SAE_DIR --steps 8

Everything but the ``attach`` line is a plain TRL script. STS metrics go through
``trainer.log``: they are in ``trainer.state.log_history`` and reach any ``report_to`` backend.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from sts_lightning.data.domains import load_training_set
from sts_lightning.hf import STSTrainerCallback
from sts_lightning.model.loading import load_model_and_tokenizer


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="embedded:smollm2")
    p.add_argument("--sae", default=None, help="SAE id or dir (default: the embedded default's)")
    p.add_argument("--domains", nargs="+", default=["math", "law", "code"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--k", type=int, default=100, help="shifted latents tracked")
    p.add_argument("--budget", type=int, default=2000, help="forecast token budgets")
    p.add_argument("--out", default="runs/trl_sts")
    args = p.parse_args(argv)

    model, tokenizer = load_model_and_tokenizer(args.model)
    train = load_training_set("arithmetic", 256, seed=0)
    data = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": e.prompt}],
                "completion": [{"role": "assistant", "content": e.answer}],
            }
            for e in train
        ]
    )
    config = SFTConfig(
        output_dir=args.out,
        max_steps=args.steps,
        per_device_train_batch_size=8,
        learning_rate=1e-4,
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)

    sae = args.sae
    if sae is None:
        from lightning_sts import embedded_sae

        sae = embedded_sae(model, tokenizer)
    # The one line; its train examples are read from `trainer.train_dataset` (conversational
    # prompt/completion here: the user turn is the prompt, the assistant turn the answer).
    STSTrainerCallback.attach(
        trainer,
        sae=sae,
        domains=args.domains,
        k=args.k,
        every_n_steps=args.every,
        predict_config={
            "domain_demos": 1,
            "train_tokens": args.budget,
            "domain_tokens": args.budget,
        },
        tracker_config={"probe_tokens": args.budget // 2},
    )
    trainer.train()
    sts = [h for h in trainer.state.log_history if any(k.startswith("sts/") for k in h)]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "sts_history.json").write_text(json.dumps(sts, indent=1))
    print(f"{len(sts)} STS log entries: {args.out}/sts_history.json, plots: {args.out}/sts")


if __name__ == "__main__":
    main()
