"""The key order of answers (wallet.domain.documents): applied at every depth but inside metadata,
numbers kept as their JSON text, and the stored answers of older revisions returned verbatim."""

from __future__ import annotations

import orjson

from wallet.domain.documents import key_order, ordered, render, stored_answer


def test_identity_then_amounts_then_type_status_then_the_rest_alphabetically():
    keys = [
        "metadata",
        "status",
        "fee",
        "created_at",
        "type",
        "amount",
        "asset_type",
        "user_id",
        "id",
        "debt",
    ]
    assert key_order(keys) == [
        "id", "user_id", "asset_type", "amount", "debt", "fee", "type", "status", "created_at", "metadata",
    ]  # fmt: skip


def test_every_depth_is_ordered_but_the_callers_metadata():
    document = {
        "metadata": {"zeta": 1, "amount": {"y": 1, "id": 2}},
        "entries": [{"amount": 5, "account": "u", "account_kind": "user", "account_id": 1}],
        "id": "t",
    }
    assert orjson.dumps(ordered(document)) == (
        b'{"id":"t","entries":[{"account_id":1,"account":"u","amount":5,"account_kind":"user"}],'
        b'"metadata":{"zeta":1,"amount":{"y":1,"id":2}}}'
    )


def test_numbers_keep_their_text():
    text = (
        '{"metadata": {"price": 1.10, "big": 123456789012345678901234567890, "e": -2.5E-3,'
        ' "nested": [{"x": 1.0}]}, "amount": 18446744073709551615, "id": 9}'
    )
    assert render(text) == (
        b'{"id":9,"amount":18446744073709551615,"metadata":{"price":1.10,'
        b'"big":123456789012345678901234567890,"e":-2.5E-3,"nested":[{"x":1.0}]}}'
    )
    assert render(text.encode()) == render(text)
    assert render('{"b": 1, "id": "2"}') == b'{"id":"2","b":1}'


def test_a_stored_answer_of_an_older_revision_is_its_text_verbatim():
    old = '{"id": "x", "fee": 0, "amount": 5}'  # as jsonb wrote it, spaces and all
    assert stored_answer(orjson.dumps(old).decode()) == old.encode()
    assert stored_answer(old) == b'{"id":"x","amount":5,"fee":0}'
