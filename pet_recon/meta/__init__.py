"""Meta-information: prompt building, tokenizer, encoder, LoRA."""
