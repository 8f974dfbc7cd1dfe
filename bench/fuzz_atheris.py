"""Coverage-guided fuzzing (atheris, libFuzzer) of what reads untrusted input before the model:
request validation with tokenization, KServe tensor and parameter decoding, detokenization.

    python -m bench.fuzz_atheris --bundle models/default -runs=200000

Only the declared refusals may come out (InvalidArgumentError; protobuf's DecodeError for bytes
that are no message, which the interceptor turns into INVALID_ARGUMENT); anything else is a
finding: libFuzzer stops, prints the exception and writes the input to crash-*. At the end it
prints "Done N runs in S second(s)". Never part of the test run (it needs atheris: `pip install
atheris==3.0.0`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import atheris
from google.protobuf.message import DecodeError

with atheris.instrument_imports():
    from service import kserve
    from service.bundle import load_bundle
    from service.engine import service_limits
    from service.errors import InvalidArgumentError
    from service.pb.inference import grpc_predict_v2_pb2 as kserve_pb
    from service.settings import EngineSettings
    from service.tokenizer import load_tokenizer
    from service.types import RequestedOptions
    from service.validation import RequestValidator

DECLARED = (InvalidArgumentError, DecodeError)


def _target(validator: RequestValidator, decode: object, vocab: int) -> object:
    def one_input(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        kind = fdp.ConsumeIntInRange(0, 3)
        try:
            if kind == 0:
                penalty = fdp.ConsumeFloat() if fdp.ConsumeBool() else None
                requested = RequestedOptions(
                    beam_size=fdp.ConsumeIntInRange(-2, 70),
                    max_output_tokens=fdp.ConsumeIntInRange(-2, 2000),
                    length_penalty=penalty,
                    n_best=fdp.ConsumeIntInRange(-2, 70),
                )
                options = validator.options(requested)
                segments = [fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 80)) for _ in range(3)]
                target = fdp.PickValueInList([*validator.limits.languages, fdp.ConsumeUnicode(3)])
                validator.segments(segments, target, fdp.ConsumeUnicode(2), options)
            elif kind == 1:
                kserve.decode_bytes_tensor(fdp.ConsumeBytes(200), "text")
            elif kind == 2:
                request = kserve_pb.ModelInferRequest.FromString(fdp.ConsumeBytes(300))
                kserve._input_texts(request)
                kserve._options(request)
                kserve._requested_outputs(request)
            else:
                ids = [
                    fdp.ConsumeIntInRange(0, vocab - 1) for _ in range(fdp.ConsumeIntInRange(0, 40))
                ]
                assert isinstance(decode(ids), str)  # type: ignore[operator]
        except DECLARED:
            pass

    return one_input


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/default"))
    args, libfuzzer = parser.parse_known_args()
    bundle = load_bundle(args.bundle, verify_graphs=False)
    tokenizer = load_tokenizer(bundle)
    validator = RequestValidator(tokenizer, service_limits(bundle.manifest, EngineSettings()))
    target = _target(validator, tokenizer.decode, bundle.manifest.vocab_size)
    atheris.Setup([sys.argv[0], *libfuzzer], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
