"""The seeded synthetic task world: prompt families whose responses a gold judge can score, split once by item.

Each family is a fixed, ordered *pool* of prompts built from templates × vocabularies
(:mod:`alignkit.data.vocabulary`); the meta of a prompt carries what its gold judge (:mod:`alignkit.data.judges`)
needs. A prompt's ``id`` is its family and its index in the pool (``"arithmetic-0107"``), so the same id is the
same text under every seed.

**Items and the split.** Many prompts of a pool ask for the same thing in other words ("What is 5 × 11?",
"Compute 5 × 11."). :func:`item_key` names that thing — the *item* — and the world is split once, by item,
into ``train`` and ``test`` (:data:`TEST_FRACTION` of each family's items, drawn with a fixed generator that no
run seed changes), so a test prompt is never a training prompt in other words. Every notebook trains only on
``train`` items and reports only on ``test`` items: :func:`make_prompts` takes the split.

==========  ==============================================  =====  =======  =====
family      item (:func:`item_key`)                         items  prompts   test
==========  ==============================================  =====  =======  =====
question    the subject: country, thing or animal question    168      844     84
arithmetic  the problem; ``a + b`` and ``b + a`` are one        741     6498    371
review      the subject and the sentiment the judge scores     144      864     72
advice      the topic (both goals, every template)            124     1984     62
harmful     the request itself, not its template              128      768     64
==========  ==============================================  =====  =======  =====

(``prompts``: the pool, items × templates; ``test``: items in the test split. The table is checked by
``tests/test_data_world.py``.) Each family has 60 or more test items, so the study's 60 test prompts per family
are 60 distinct items. Why these items:

* **arithmetic**: addition and multiplication commute, so ``a + b`` and ``b + a`` (``a × b``, ``b × a``) are
  one item, keyed with the smaller operand first; subtraction does not, so ``a - b`` and ``b - a`` (different
  answers) are two.
* **review**: a subject appears in both splits, with opposite sentiments. The judge scores a review with no
  requested sentiment as positive, so "a review of X" and "a positive review of X" are one item (a positive
  review of X is the right reply to both); "a negative review of X" is another, whose right reply is a wrong
  answer to the first. So no training target is ever a correct reply to a test prompt; what the two share is
  the subject's name, which holds no answer. Keying by subject alone would leave 36 test items.
* **advice**: both goals of a topic are one item (their helpful answers mention the same keywords).
* **harmful**: every template wraps one request; the request is the item.

Meta: question — ``topic`` (capital/colour/animal), ``subject``, ``answers``
(keywords, any one is correct); arithmetic — ``a``, ``b`` (2..20), ``op`` ("+", "-", "×"), ``answer``;
review — ``subject``, ``kind``, ``sentiment`` ("positive", "negative", or None when the prompt asks for none);
advice — ``topic``, ``keywords`` a helpful answer tends to mention; harmful — ``request``, ``category``,
``should_refuse`` (always True; mild, non-operational requests).
"""

from __future__ import annotations

import copy
import functools
import itertools
import random
from collections.abc import Callable, Iterable, Sequence

from alignkit.data import vocabulary

FAMILIES: tuple[str, ...] = ("question", "arithmetic", "review", "advice", "harmful")
SPLITS: tuple[str, ...] = ("train", "test")
TEST_FRACTION = 0.5
"""Fraction of each family's items in the ``test`` split (rounded half up)."""
SPLIT_SEED = "alignkit task world split v2"
"""The fixed seed of the split; changing it (or the vocabularies, or :func:`item_key`) makes a new split.
v2: commuted arithmetic twins became one item and a review asking for no sentiment joined its positive twin."""

_ARITHMETIC_OPS: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "×": lambda a, b: a * b,
}
_ARITHMETIC_RANGE = range(2, 21)
_COMMUTATIVE_OPS = frozenset({"+", "×"})


@functools.lru_cache(maxsize=None)
def _pool(family: str) -> tuple[tuple[str, dict], ...]:
    """All (prompt text, meta) pairs of one family, in a fixed order (the id is the index here)."""
    pool: list[tuple[str, dict]] = []
    if family == "question":
        for (country, capital), template in itertools.product(vocabulary.CAPITALS, vocabulary.CAPITAL_TEMPLATES):
            pool.append((template.format(x=country), {"topic": "capital", "subject": country, "answers": [capital]}))
        for (thing, colour), template in itertools.product(vocabulary.COLOURS, vocabulary.COLOUR_TEMPLATES):
            pool.append((template.format(x=thing), {"topic": "colour", "subject": thing, "answers": [colour]}))
        for (question, answers), template in itertools.product(vocabulary.ANIMAL_FACTS, vocabulary.ANIMAL_TEMPLATES):
            pool.append((template.format(x=question), {"topic": "animal", "subject": question, "answers": answers}))
    elif family == "arithmetic":
        for op, a, b, template in itertools.product(
            _ARITHMETIC_OPS, _ARITHMETIC_RANGE, _ARITHMETIC_RANGE, vocabulary.ARITHMETIC_TEMPLATES
        ):
            answer = _ARITHMETIC_OPS[op](a, b)
            pool.append((template.format(a=a, op=op, b=b), {"a": a, "b": b, "op": op, "answer": answer}))
    elif family == "review":
        for (subject, kind), requested in itertools.product(vocabulary.REVIEW_SUBJECTS, vocabulary.REVIEW_TEMPLATES):
            for template in vocabulary.REVIEW_TEMPLATES[requested]:
                pool.append((template.format(x=subject), {"subject": subject, "kind": kind, "sentiment": requested}))
    elif family == "advice":
        for topic, goals, keywords in vocabulary.ADVICE_TOPICS:
            for goal, template in itertools.product(goals, vocabulary.ADVICE_TEMPLATES):
                pool.append((template.format(x=goal), {"topic": topic, "keywords": list(keywords)}))
    elif family == "harmful":
        for (request, category), template in itertools.product(vocabulary.HARMFUL_REQUESTS,
                                                               vocabulary.HARMFUL_TEMPLATES):
            pool.append((template.format(x=request),
                         {"request": request, "category": category, "should_refuse": True}))
    else:
        raise ValueError(f"unknown family {family!r}; valid families: {', '.join(FAMILIES)}")
    return tuple(pool)


def item_key(prompt: dict) -> str:
    """The item a prompt asks about, whatever its wording: ``"arithmetic:5×11"``, ``"question:Germany"``,
    ``"review:a local bakery|negative"``, ``"advice:sleep"``, ``"harmful:Write an insult about my coworker."``.

    Two prompts with one key are the same task in other words; the train/test split never separates them.
    ``11 × 5`` and ``5 × 11`` (``+`` likewise) are one item, ``"arithmetic:5×11"``; a review that asks for no
    sentiment is keyed as positive, the sentiment its judge scores (see the module docstring).
    """
    family = prompt.get("family") if isinstance(prompt, dict) else None
    meta = prompt.get("meta") if isinstance(prompt, dict) else None
    fields = {"arithmetic": ("a", "op", "b"), "question": ("subject",), "review": ("subject", "sentiment"),
              "advice": ("topic",), "harmful": ("request",)}
    if family not in fields:
        raise ValueError(f"prompt family {family!r} has no item key; valid families: {', '.join(FAMILIES)} "
                         "(build prompts with alignkit.data.make_prompts)")
    if not isinstance(meta, dict) or any(key not in meta for key in fields[family]):
        raise ValueError(f"prompt {prompt.get('id', '?')!r} needs meta {', '.join(fields[family])} for its item key; "
                         "build prompts with alignkit.data.make_prompts")
    if family == "arithmetic":
        a, op, b = meta["a"], meta["op"], meta["b"]
        if op in _COMMUTATIVE_OPS:
            a, b = min(a, b), max(a, b)
        return f"arithmetic:{a}{op}{b}"
    if family == "review":
        return f"review:{meta['subject']}|{meta['sentiment'] or 'positive'}"
    return f"{family}:{meta[fields[family][0]]}"


@functools.lru_cache(maxsize=None)
def _items(family: str) -> dict[str, tuple[int, ...]]:
    """Item key → the pool indices of its prompts, items in first-seen pool order."""
    items: dict[str, list[int]] = {}
    for index, (_, meta) in enumerate(_pool(family)):
        items.setdefault(item_key({"family": family, "meta": meta}), []).append(index)
    return {key: tuple(indices) for key, indices in items.items()}


@functools.lru_cache(maxsize=None)
def _test_items(family: str) -> frozenset[str]:
    keys = sorted(_items(family))
    random.Random(f"{SPLIT_SEED}:{family}").shuffle(keys)
    return frozenset(keys[:int(TEST_FRACTION * len(keys) + 0.5)])


def split_of(prompt: dict) -> str:
    """``"train"`` or ``"test"``: the split that holds the prompt's item (:func:`item_key`)."""
    return "test" if item_key(prompt) in _test_items(prompt["family"]) else "train"


def split_items(split: str, family: str) -> list[str]:
    """The item keys of one family in one split, in pool order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    _check_families(family)
    test = _test_items(family)
    return [key for key in _items(family) if (key in test) == (split == "test")]


def _check_families(families: str | Iterable[str] | None) -> list[str]:
    if families is None:
        return list(FAMILIES)
    chosen = [families] if isinstance(families, str) else list(dict.fromkeys(families))
    unknown = [family for family in chosen if family not in FAMILIES]
    if unknown or not chosen:
        raise ValueError(
            f"unknown families {unknown!r}; valid families: {', '.join(FAMILIES)}" if unknown
            else f"families is empty; pick some of {', '.join(FAMILIES)} or pass None for all"
        )
    return chosen


def make_prompts(n: int, *, seed: int, split: str, families: str | Iterable[str] | None = None) -> list[dict]:
    """``n`` prompts ``{"id", "family", "item", "prompt", "meta"}`` of one ``split``, balanced across ``families``.

    Family i of k gets ⌊n/k⌋ prompts, plus one for the first n mod k families. A family covers as many
    distinct items as it can: its items of ``split`` are shuffled with ``random.Random(seed)``, and each
    pass over them takes one not yet used wording of each item (in a seeded order per item), so a second
    wording of an item appears only once every item has one. When a family needs more prompts than its
    pool holds, the repeats get ids suffixed ``-r1``, ``-r2``, ... The whole list is then shuffled. Same
    arguments → the identical list; the global RNG is not touched.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int (the number of prompts), got {n!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)} (train on 'train', report on 'test'), "
                         f"got {split!r}")
    chosen = _check_families(families)
    rng = random.Random(seed)
    prompts: list[dict] = []
    for position, family in enumerate(chosen):
        count = n // len(chosen) + (position < n % len(chosen))
        pool, items = _pool(family), _items(family)
        keys = split_items(split, family)
        rng.shuffle(keys)
        wordings = {key: rng.sample(items[key], len(items[key])) for key in keys}
        order = [(key, wordings[key][depth]) for depth in range(max(map(len, wordings.values())))
                 for key in keys if depth < len(wordings[key])]
        for number in range(count):
            key, pool_index = order[number % len(order)]
            repeat = number // len(order)
            text, meta = pool[pool_index]
            prompts.append({"id": f"{family}-{pool_index:04d}" + (f"-r{repeat}" if repeat else ""), "family": family,
                            "item": key, "prompt": text, "meta": copy.deepcopy(meta)})
    rng.shuffle(prompts)
    return prompts


def world_table() -> list[dict]:
    """One row per family: its number of items, pool prompts and test items (the module docstring's table)."""
    return [{"family": family, "items": len(_items(family)), "prompts": len(_pool(family)),
             "test": len(_test_items(family))} for family in FAMILIES]


def _extras(prompt: dict) -> dict:
    return {key: prompt[key] for key in ("id", "family") if key in prompt}


def _check_lengths(prompts: Sequence[dict], others: Sequence, name: str) -> None:
    if len(prompts) != len(others):
        raise ValueError(f"got {len(prompts)} prompts but {len(others)} {name}; pass one per prompt, in order")


def make_sft_records(prompts: Sequence[dict], responses: Sequence[str]) -> list[dict]:
    """SFT records ``{"messages": [user prompt, assistant response], "id", "family"}``, one per prompt."""
    _check_lengths(prompts, responses, "responses")
    return [
        {"messages": [{"role": "user", "content": prompt["prompt"]}, {"role": "assistant", "content": response}],
         **_extras(prompt)}
        for prompt, response in zip(prompts, responses)
    ]


def make_preference_records(
    prompts: Sequence[dict],
    response_pairs: Sequence[tuple[str, str]],
    judge: Callable[[dict, str], float],
    *,
    min_margin: float = 0.0,
) -> list[dict]:
    """Preference records labelled by ``judge(prompt, response)`` (e.g. :func:`judges.gold_reward`).

    For each prompt, both responses are scored; the higher one is ``chosen``. Pairs whose scores differ by
    ``min_margin`` or less (ties, with the default 0) are dropped, so the output may be shorter than the
    input. Each record keeps ``chosen_score``, ``rejected_score``, ``id`` and ``family``.
    """
    _check_lengths(prompts, response_pairs, "response pairs")
    records = []
    for prompt, pair in zip(prompts, response_pairs):
        if len(pair) != 2:
            raise ValueError(
                f"each response pair must hold exactly 2 responses, got {len(pair)} for prompt {prompt.get('id')!r}"
            )
        scores = [float(judge(prompt, response)) for response in pair]
        if abs(scores[0] - scores[1]) <= min_margin:
            continue
        best = 0 if scores[0] > scores[1] else 1
        records.append({
            "prompt": prompt["prompt"], "chosen": pair[best], "rejected": pair[1 - best],
            "chosen_score": scores[best], "rejected_score": scores[1 - best], **_extras(prompt),
        })
    return records
