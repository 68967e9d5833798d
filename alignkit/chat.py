"""Chat formatting in one place: a prompt through the chat template up to the assistant header (as text or token
ids), and a (prompt, reply) turn as the token ids a model learns or is scored on. Sampling, SFT, preference
pairs, reward models and KL measurement all go through these, so a prompt is always the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase


def format_chat(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict], *, system: str | None = None) -> str:
    """The text the model sees for one user prompt (or a list of messages), ending with the assistant header."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system is not None:
        messages = [{"role": "system", "content": system}] + messages
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, prompts: list[str] | list[list[dict]], *,
                    system: str | None = None) -> list[list[int]]:
    """Each prompt through the chat template up to the assistant header, as token ids (no special tokens added:
    the template writes its own)."""
    texts = [format_chat(tokenizer, p, system=system) for p in prompts]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


@dataclass
class ChatExample:
    """A tokenized prompt and the response to learn, as token ids."""

    prompt_ids: list[int]
    response_ids: list[int]


def tokenize_turn(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict], response: str,
                  max_length: int, *, ended: bool = True) -> ChatExample | None:
    """Prompt ids (chat template up to the assistant header) and response ids (text + end-of-turn token).

    ``ended=False`` (a reply cut at a sampling limit) leaves the end-of-turn token out: the model should not learn,
    or be scored for, stopping where a token budget happened to stop it. Returns None when the prompt alone
    leaves no room for a response token within ``max_length``.
    """
    prompt_ids = chat_prompt_ids(tokenizer, [prompt])[0]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if ended else [])
    if not response_ids:
        raise ValueError("a truncated reply with no text has no token to learn or score; drop it or mark it ended")
    room = max_length - len(prompt_ids)
    if room < 1:
        return None
    return ChatExample(prompt_ids, response_ids[:room])
