"""Prompts the embedding model cannot read whole: past its 256-token window, or spans its
vocabulary does not know. Their embeddings say nothing of those parts, so a semantic hit may reuse
an answer only when those parts are identical: a document followed by a new question is never
served the answer to another question about the same document."""

from __future__ import annotations

import pytest
from semcache.v1 import semcache_pb2 as pb
from semcache_client import build_request
from semcache_server.adapters.embedders.local import LocalEmbedder
from semcache_server.adapters.embedders.ollama import OllamaEmbedder
from semcache_server.testing.ollama_protocol import FakeOllama

from tests.conftest import Running
from tests.test_ask import MODEL, ask

CLAUSES = [
    "This Supply Agreement is made between Northwind Components GmbH, the Supplier, with its "
    "registered office in Hamburg, and Lakeside Robotics Ltd, the Buyer, with its office in Leeds.",
    "The Supplier shall deliver the goods listed in Schedule A in the quantities and at the times "
    "the Buyer states in each purchase order, packed for transport by road and sea.",
    "Risk in the goods passes to the Buyer on delivery at the Buyer's warehouse; title passes on "
    "payment in full of the price stated in the purchase order.",
    "The Buyer shall pay each invoice within forty-five days of its date by bank transfer to the "
    "account the Supplier names; late payments bear interest at four percent above the base rate.",
    "The Supplier warrants that the goods conform to the specification in Schedule B and are free "
    "from defects in design, material and workmanship for twenty-four months from delivery.",
    "Either party may terminate this agreement by ninety days' written notice, or at once if the "
    "other party commits a material breach and fails to remedy it within thirty days of notice.",
    "Neither party is liable for a failure caused by events beyond its reasonable control, "
    "including fire, flood, war, strikes and the failure of public utilities or carriers.",
    "All notices shall be in writing and delivered by hand, by courier or by email to the "
    "addresses stated above, and take effect on receipt during business hours.",
    "The Supplier shall keep confidential all drawings, prices and plans it receives from the "
    "Buyer and use them only to perform this agreement, during its term and five years after.",
    "This agreement is governed by the laws of England and Wales, and the courts of London have "
    "exclusive jurisdiction over any dispute arising from it.",
]
CONTRACT = "\n\n".join(f"{number}. {clause}" for number, clause in enumerate(CLAUSES * 3, start=1))
STORED_QUESTION = "Who is the supplier in this contract?"
SUPPLIER_ANSWER = "The supplier is Northwind Components GmbH, of Hamburg."
OTHER_QUESTIONS = [
    "What is the payment term for the buyer?",
    "Translate the contract into French.",
    "Is this contract legally binding in Germany?",
]


def about_the_contract(question: str) -> str:
    return f"Read this contract.\n\n{CONTRACT}\n\n{question}"


def test_the_contract_is_longer_than_the_embedder_reads(embedder: LocalEmbedder) -> None:
    """The premise of this module: without it, the tests below prove nothing."""
    assert len(CONTRACT) > 4_000
    assert embedder._model._tokenizer.encode(CONTRACT).overflowing


@pytest.mark.asyncio
async def test_the_same_document_with_another_question_is_not_served_the_stored_answer(
    semcache: Running, ollama: FakeOllama
) -> None:
    ollama.replies[about_the_contract(STORED_QUESTION)] = SUPPLIER_ANSWER
    stored = await semcache.stub.Ask(ask(about_the_contract(STORED_QUESTION)), timeout=10)
    assert stored.source == pb.SOURCE_LLM and stored.stored

    for question in OTHER_QUESTIONS:
        response = await semcache.stub.Ask(ask(about_the_contract(question)), timeout=10)
        assert response.source == pb.SOURCE_LLM, question
        assert response.text != SUPPLIER_ANSWER
        assert response.semantic_status == pb.SEMANTIC_STATUS_SEARCHED_PARTLY_READ

    streamed = [
        message
        async for message in semcache.stub.AskStream(
            build_request(
                pb.AskStreamRequest, about_the_contract("Who is the buyer?"), model=MODEL
            ),
            timeout=10,
        )
    ]
    assert streamed[0].start.source == pb.SOURCE_LLM
    assert "".join(m.delta.text for m in streamed if m.HasField("delta")) != SUPPLIER_ANSWER


@pytest.mark.asyncio
async def test_the_same_document_and_question_are_still_reused(semcache: Running) -> None:
    """Exactly (whitespace aside), and by meaning where only the part the model read changed
    (here a word for a word: a change of length moves the window's end, and then what lies past
    it differs, which is a miss)."""
    stored = await semcache.stub.Ask(ask(about_the_contract(STORED_QUESTION)), timeout=10)

    spaced = about_the_contract(STORED_QUESTION).replace("\n\n", "\n")
    exact = await semcache.stub.Ask(ask(spaced), timeout=10)
    reworded = about_the_contract(STORED_QUESTION).replace(
        "Read this contract.", "Read the contract.", 1
    )
    semantic = await semcache.stub.Ask(ask(reworded), timeout=10)

    assert exact.source == pb.SOURCE_EXACT and exact.text == stored.text
    assert semantic.source == pb.SOURCE_SEMANTIC and semantic.text == stored.text
    assert semantic.semantic_status == pb.SEMANTIC_STATUS_SEARCHED_PARTLY_READ


@pytest.mark.asyncio
async def test_prompts_of_one_unknown_word_are_not_served_each_others_answers(
    semcache: Running,
) -> None:
    """Each is a single unknown token to the model: identical embeddings, different prompts."""
    await semcache.stub.Ask(ask("y" * 32_000), timeout=10)

    response = await semcache.stub.Ask(ask("z" * 31_999), timeout=10)

    assert response.source == pb.SOURCE_LLM
    assert response.semantic_status == pb.SEMANTIC_STATUS_SEARCHED_PARTLY_READ


@pytest.mark.asyncio
async def test_a_prompt_differing_only_in_an_emoji_is_not_served_the_other_answer(
    semcache: Running,
) -> None:
    await semcache.stub.Ask(ask("What does 🍎 mean in a text message?"), timeout=10)

    other = await semcache.stub.Ask(ask("What does 🍌 mean in a text message?"), timeout=10)
    same = await semcache.stub.Ask(ask("What does 🍎 mean in a text message ?"), timeout=10)

    assert other.source == pb.SOURCE_LLM
    assert same.source == pb.SOURCE_SEMANTIC  # identical emoji, the rest compared by meaning


@pytest.mark.asyncio
async def test_the_local_embedder_reports_what_it_did_not_read(embedder: LocalEmbedder) -> None:
    embedded = await embedder.embed(
        ["How tall is Mont Blanc?", "What does 🍎 mean?", about_the_contract("Who pays?")]
    )

    assert embedded.unread[0] == ""
    assert embedded.unread[1] == "🍎"
    assert embedded.unread[2].endswith("Who pays?")
    assert embedded.unread[2] in about_the_contract("Who pays?")


@pytest.mark.asyncio
async def test_the_ollama_embedder_reports_a_prompt_past_the_models_context_unread(
    ollama: FakeOllama,
) -> None:
    """Ollama truncates silently unless asked not to; a prompt that does not fit matches only
    itself."""
    ollama.embed_context_chars = 40
    embedder = OllamaEmbedder(ollama.url, ollama.embed_model)
    try:
        short = await embedder.embed(["What is Redis?"])
        long = await embedder.embed(["Tell me everything about Redis, from its start to today."])
    finally:
        await embedder.aclose()

    assert short.unread == [""]
    assert long.unread == ["Tell me everything about Redis, from its start to today."]
    assert long.vectors.shape == (1, ollama.embed_dim)
