"""``python -m eval.maxent`` end to end on a tiny random Llama with an in-process tokenizer and
chat template (one item per task, tiny budgets): every method answers every item, the report's
numbers are consistent with items.csv, and the outputs exist."""

from __future__ import annotations

import csv
import json

import pytest
from flax import nnx
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
from tokenizers.models import BPE

from bridges import llama as bridge
from eval import maxent
from jaxts.models.llama import Llama, LlamaConfig

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    corpus = ["Answer: walking, sitting, laying, standing", "0.12, -1.05, 19.10, 23.80"] * 20
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    cfg = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, bos_token_id=0,
        eos_token_id=1,
    )  # fmt: skip
    d = tmp_path_factory.mktemp("tiny") / "hf"
    bridge.save_hf(Llama(cfg, rngs=nnx.Rngs(0)), d)
    tok.save(str(d / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "chat_template": TEMPLATE}
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    return d


def test_every_method_answers_every_item(tiny_dir, tmp_path, capsys):
    out = tmp_path / "maxent"
    argv = ["--model", str(tiny_dir), "--n", "1", "--num-rollouts", "2", "--expansion-k", "2",
            "--max-depth", "2", "--max-new-tokens", "6", "--out", str(out), "--no-progress"]  # fmt: skip
    assert maxent.main(argv) == 0
    rows = list(csv.DictReader(open(out / "items.csv")))
    assert {(r["task"], r["method"]) for r in rows} == {
        (t, m) for t in maxent.TASKS for m in maxent.METHODS
    }
    for r in rows:
        assert 1 <= int(r["tokens"]) <= 6 and int(r["nfe"]) > 0
    res = json.loads((out / "results.json").read_text())
    for t in maxent.TASKS:
        s = res["summary"][t]
        greedy = [float(r["reward"]) for r in rows if r["task"] == t and r["method"] == "greedy"]
        assert s["greedy"]["reward"] == pytest.approx(greedy[0])
        d = s["maxent_ts"]["reward_vs_greedy"]
        assert d["diff"] == pytest.approx(s["maxent_ts"]["reward"] - s["greedy"]["reward"])
    # the searches spend more than one decoding pass; greedy spends the prompt plus its tokens
    assert res["summary"]["har"]["maxent_ts"]["nfe"] > res["summary"]["har"]["greedy"]["nfe"]
    assert (out / "nfe.png").stat().st_size > 0
    assert "### caption (the metric is the reward itself" in capsys.readouterr().out
    assert maxent.main(argv) == 2  # not replaced without --force


def test_bad_options_are_named(tmp_path, capsys):
    assert maxent.main(["--methods", "greedy,magic", "--out", str(tmp_path / "x")]) == 2
    assert "magic" in capsys.readouterr().err
    assert maxent.main(["--methods", "beam", "--out", str(tmp_path / "x")]) == 2
    assert "greedy" in capsys.readouterr().err
