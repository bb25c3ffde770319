"""Tiny random-init causal LMs (a 2-layer Llama and a 2-layer GPT-2) with a fast word-level tokenizer over the
test vocabulary, saved with save_pretrained; and the prompt files the causal-LM and endpoint tests use."""

from __future__ import annotations

from pathlib import Path

from helpers.assets import LABELS, VOCAB

# A chat template in the usual shape (role markers, generation prompt), small enough to read in a test.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
PROMPT = "Classify the topic of this text.\nText: {text}\nTopic:"
# Multi-word verbalizers sharing their first token: scoring them needs the full sequences.
SHARED_FIRST_TOKEN = "politics=news on politics,sports=news on sports,tech=news on tech"
_EXTRA = ["Classify", "topic", "text", "Text", "Topic", "news", "on", "N", "A", "user", "assistant", *LABELS,
          ":", ".", "/", "<|", "|>", "\n"]
LM_VOCAB = ["<pad>", "<unk>", "<s>", "</s>", *dict.fromkeys(w for w in [*VOCAB[5:], *_EXTRA])]


def make_lm_tokenizer(chat: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(LM_VOCAB)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    if chat:  # Llama-style: BOS added to plain prompts; a chat template writes its own
        core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>",
                                        bos_token="<s>", eos_token="</s>")
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_causal_lm(directory: Path, arch: str = "llama", seed: int = 0) -> Path:
    """`llama` has the chat template and a BOS token; `gpt2` has neither (plain prompts)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(vocab_size=len(LM_VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             pad_token_id=0, bos_token_id=2, eos_token_id=3, tie_word_embeddings=False)
        model = LlamaForCausalLM(config)
    elif arch == "gpt2":
        config = GPT2Config(vocab_size=len(LM_VOCAB), n_embd=32, n_layer=2, n_head=2, n_positions=512,
                            bos_token_id=2, eos_token_id=3, pad_token_id=0)
        model = GPT2LMHeadModel(config)
    else:
        raise ValueError(arch)
    with torch.no_grad():  # random init predicts near-uniformly; a sharper head makes classes differ
        model.get_output_embeddings().weight.mul_(20.0)
    model.save_pretrained(directory)
    make_lm_tokenizer(chat=arch == "llama").save_pretrained(directory)
    return directory


def write_prompt(path: Path, text: str = PROMPT) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
