"""Domain-adaptive pretraining: masked-LM on the train window's behaviour texts.

The base encoder learned English; behaviour texts are a dialect of counts, event words and
digit pieces. A short masked-LM pass on them (Hugging Face's ``BertForMaskedLM`` and its
masking collator) adapts the encoder before the purchase task sees it. Only train-window
texts are read.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import BertForMaskedLM, DataCollatorForLanguageModeling, PreTrainedTokenizerFast

MASK_PROBABILITY = 0.15


def pretrain(
    base_model: Path,
    texts: Sequence[str],
    out_dir: Path,
    *,
    max_length: int,
    epochs: int = 1,
    batch_size: int = 16,
    lr: float = 5e-5,
    seed: int = 0,
) -> dict:
    """Masked-LM on `texts` from `base_model`; the adapted encoder is saved to `out_dir`
    (Hugging Face format, with the base model's tokenizer) and a summary is returned."""
    torch.manual_seed(seed)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(base_model / "tokenizer.json"),
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=MASK_PROBABILITY)
    model = BertForMaskedLM.from_pretrained(base_model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    order = list(range(len(texts)))
    steps = epochs * -(-len(order) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=steps, pct_start=0.1
    )
    rng = random.Random(seed)
    losses: list[float] = []
    started = time.perf_counter()
    model.train()
    with tqdm(total=steps, desc="masked-LM pretraining", unit="batch") as bar:
        for _ in range(epochs):
            rng.shuffle(order)
            for start in range(0, len(order), batch_size):
                batch = [texts[i] for i in order[start : start + batch_size]]
                encoded = tokenizer(batch, truncation=True, max_length=max_length)
                inputs = collator([{"input_ids": ids} for ids in encoded["input_ids"]])
                loss = model(**inputs).loss
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.bert.save_pretrained(out_dir)
    shutil.copy2(base_model / "tokenizer.json", out_dir / "tokenizer.json")
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "texts": len(texts),
        "epochs": epochs,
        "seconds": round(time.perf_counter() - started, 1),
        "first_loss": round(losses[0], 3) if losses else None,
        "last_loss": round(sum(tail) / len(tail), 3) if tail else None,
    }
