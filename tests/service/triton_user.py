"""A Triton user's client, run as its own process: `python triton_user.py ADDRESS < CASES.json`.

It speaks to the server only through the real `tritonclient[grpc]` (`InferenceServerClient`,
`InferInput(..., "BYTES")`), and prints what it saw as JSON. Its own process, because
tritonclient's generated `inference` messages and the server's share one protobuf namespace:
a real client never has both.

CASES: {"infer": [{"model", "texts", "shape", "parameters"}...], "bad": [same...]}.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException


def _infer(client: triton.InferenceServerClient, case: dict[str, Any]) -> triton.InferResult:
    texts = [t.encode() for t in case["texts"]]
    data = np.array(texts, dtype=np.object_).reshape(case.get("shape") or [len(texts)])
    tensor = triton.InferInput("text", list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return client.infer(case["model"], [tensor], parameters=case["parameters"])


def _answer(result: triton.InferResult) -> dict[str, Any]:
    response = result.get_response()
    translations = result.as_numpy("translation")
    scores = result.as_numpy("score")
    return {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "shape": list(translations.shape),
        "translations": [t.decode() for t in translations.reshape(-1)],
        "score_dtype": str(scores.dtype),
        "scores": [float(s) for s in scores.reshape(-1)],
    }


def _error(call: Any) -> dict[str, str]:
    try:
        call()
    except InferenceServerException as error:
        return {"status": str(error.status()), "message": str(error.message())}
    return {"status": "OK", "message": ""}


def main() -> None:
    address, cases = sys.argv[1], json.load(sys.stdin)
    with triton.InferenceServerClient(address) as client:
        metadata = client.get_model_metadata("default")
        seen = {
            "server_live": client.is_server_live(),
            "server_ready": client.is_server_ready(),
            "model_ready": {
                "default": client.is_model_ready("default"),
                "default@1": client.is_model_ready("default", "1"),
                "default@7": client.is_model_ready("default", "7"),
                "nope": client.is_model_ready("nope"),
            },
            "server_name": client.get_server_metadata().name,
            "metadata": {
                "name": metadata.name,
                "versions": list(metadata.versions),
                "inputs": [[t.name, t.datatype, list(t.shape)] for t in metadata.inputs],
                "outputs": [[t.name, t.datatype, list(t.shape)] for t in metadata.outputs],
            },
            "unknown_metadata": _error(lambda: client.get_model_metadata("nope")),
            "infer": [_answer(_infer(client, case)) for case in cases["infer"]],
            "bad": [_error(lambda case=case: _infer(client, case)) for case in cases["bad"]],
        }
    json.dump(seen, sys.stdout)


if __name__ == "__main__":
    main()
