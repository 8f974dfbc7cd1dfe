"""Hostile Unicode through Translate and TranslateStream: every answer is OK with valid UTF-8 or
INVALID_ARGUMENT naming the segment, and the server goes on serving."""

from __future__ import annotations

import unicodedata

import grpc
import pytest

from service.pb.translator.v1 import translator_pb2 as pb
from tests.service.service_harness import ServerThread, stub, translate_request

CASES = {
    "nul": "forty\x00two",
    "bom": "\ufeffGood morning.",
    "zwj emoji": "I \u2764\ufe0f \U0001f468\u200d\U0001f469\u200d\U0001f467 twenty-one",
    "rtl and bidi controls": "\u202eforty-two\u202c \u05e9\u05dc\u05d5\u05dd"
    " \u0645\u0631\u062d\u0628\u0627",
    "nfc": unicodedata.normalize("NFC", "caf\u00e9 na\u00efve"),
    "nfd": unicodedata.normalize("NFD", "caf\u00e9 na\u00efve"),
    "4-byte characters": "\U0001d54f\U0001d550 \U00020000\U0002a6d6",
    "10k-character word": "a" * 10_000,
    "control characters only": "\x01\x02\x03\x1b",
    "lone combining mark": "\u0301",
    "noncharacter": "\ufffe\uffff",
    "line and paragraph separators": "one\u2028two\u2029three",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_unicode_is_translated_or_refused_cleanly(server: ServerThread, name: str) -> None:
    text = CASES[name]
    channel, translator = stub(server.address)
    with channel:
        try:
            reply = translator.Translate(translate_request([text], "de"), timeout=30)
            reply.translations[0].text.encode("utf-8")
            stream = list(
                translator.TranslateStream(
                    pb.TranslateStreamRequest(text=text.encode(), target_language="de"), timeout=30
                )
            )
            assert stream[-1].final.text == reply.translations[0].text
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, error.details())
            assert "segments[0]" in error.details()
        assert translator.Translate(translate_request(["forty-two"], "de"), timeout=30)
