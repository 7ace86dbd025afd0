"""`python -m web [--host 127.0.0.1] [--port 8000] [--models DIR]`: run the dev server."""

import argparse

from web.app import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m web", description="Mote dev server")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--models", default="models", help="folder of .gguf files to serve")
    parser.add_argument("--cors-origin", action="append", default=[],
                        help="an origin allowed to fetch runtime, wheels and models (repeatable; '*' for any)")
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.models, cors_origins=tuple(args.cors_origin))


if __name__ == "__main__":
    main()
