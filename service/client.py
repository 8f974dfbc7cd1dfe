"""A command-line client for people.

    python -m service.client --to de "forty-two" "Good morning."
    echo "How are you?" | python -m service.client --to fr
    python -m service.client --to de --beam 4 --n-best 2 "forty-two"
    python -m service.client --to de --stream "It is a long sentence."
    python -m service.client --model en-de "Good morning."
    python -m service.client --list
    python -m service.client --tls-ca ca.pem --address translator.example.com:443 "Hello."
    python -m service.client --tls-ca ca.pem --tls-cert me.pem --tls-key me.key "Hello."   # mTLS

Each argument (or each stdin line) is one segment; one output line per segment (per hypothesis
with --n-best). Errors print the gRPC status and message and exit 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

from service.pb.translator.v1 import translator_pb2 as pb
from service.pb.translator.v1 import translator_pb2_grpc as pb_grpc

# The service config of a client that reaches several replicas (a headless Service's DNS name,
# `dns:///translator-headless.translator.svc:50051`): a connection to every replica, requests
# spread round robin over the ready ones (grpc.health.v1 watch of the readiness service), and
# retries of what a draining or full replica answers, within the call's deadline.
CLIENT_SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": "translator.v1.Translator"},
    "methodConfig": [
        {
            "name": [{"service": "translator.v1.Translator"}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.05s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
            },
        }
    ],
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service.client", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "text", nargs="*", help="segments to translate; none: read lines from stdin"
    )
    parser.add_argument("--to", dest="target", default="de", help="target language (default de)")
    parser.add_argument("--address", default="localhost:50051", help="host:port of the service")
    parser.add_argument("--model", default="", help="model name (default: the server's default)")
    parser.add_argument(
        "--beam", type=int, default=0, help="beam size (1 = greedy; 0 = the model's default)"
    )
    parser.add_argument(
        "--n-best", type=int, default=0, help="hypotheses per segment (0 = the model's default)"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=0, help="max output tokens (0 = model limit)"
    )
    parser.add_argument("--length-penalty", type=float, default=None, help="beam length penalty")
    parser.add_argument("--stream", action="store_true", help="stream partial output (one segment)")
    parser.add_argument(
        "--list", action="store_true", help="print the loaded models, languages and limits"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")
    parser.add_argument("--tls-ca", type=Path, help="PEM CA to verify the server (turns TLS on)")
    parser.add_argument("--tls-cert", type=Path, help="PEM client certificate (mTLS)")
    parser.add_argument("--tls-key", type=Path, help="PEM key of --tls-cert")
    return parser


def channel(args: argparse.Namespace) -> grpc.Channel:
    """Plaintext, or TLS when --tls-ca is given (with a client certificate for mTLS)."""
    if args.tls_ca is None:
        return grpc.insecure_channel(args.address)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=args.tls_ca.read_bytes(),
        private_key=args.tls_key.read_bytes() if args.tls_key else None,
        certificate_chain=args.tls_cert.read_bytes() if args.tls_cert else None,
    )
    return grpc.secure_channel(args.address, credentials)


def _options(args: argparse.Namespace) -> pb.DecodingOptions:
    options = pb.DecodingOptions(
        beam_size=args.beam, max_output_tokens=args.max_tokens, n_best=args.n_best
    )
    if args.length_penalty is not None:
        options.length_penalty = args.length_penalty
    return options


def _translate(stub: pb_grpc.TranslatorStub, args: argparse.Namespace, segments: list[str]) -> None:
    request = pb.TranslateRequest(
        segments=[s.encode() for s in segments],
        target_language=args.target,
        options=_options(args),
        model=args.model,
    )
    response = stub.Translate(request, timeout=args.timeout)
    for translation in response.translations:
        if args.n_best > 1:
            for hyp in translation.hypotheses:
                print(f"{hyp.score:.4f}\t{hyp.text}")
        else:
            print(translation.text)


def _stream(stub: pb_grpc.TranslatorStub, args: argparse.Namespace, segment: str) -> None:
    request = pb.TranslateStreamRequest(
        text=segment.encode(), target_language=args.target, options=_options(args), model=args.model
    )
    for message in stub.TranslateStream(request, timeout=args.timeout):
        if message.HasField("partial"):
            print(f"... {message.partial.text}", file=sys.stderr)
        else:
            print(message.final.text)


def _list(stub: pb_grpc.TranslatorStub, args: argparse.Namespace) -> None:
    listing = stub.ListModels(pb.ListModelsRequest(), timeout=args.timeout)
    for model in listing.models:
        default = " (default)" if model.name == listing.default_model else ""
        state = pb.ModelStatus.State.Name(model.state)
        print(
            f"model {model.name}{default} version {model.version} {state}"
            f" ({model.precision}, {model.provider})"
        )
        print(f"  {model.source_language} -> {', '.join(model.target_languages)}")
        print("  " + str(model.limits).strip().replace("\n", ", "))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    segments = list(args.text)
    if not segments and not args.list:
        segments = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    with channel(args) as connected:
        stub = pb_grpc.TranslatorStub(connected)
        try:
            if args.list:
                _list(stub, args)
            elif args.stream:
                for segment in segments:
                    _stream(stub, args, segment)
            else:
                _translate(stub, args, segments)
        except grpc.RpcError as error:
            print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
