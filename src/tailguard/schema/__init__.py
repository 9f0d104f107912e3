"""Wire structs, status codes and length-prefixed framing of the binary protocol (docs/protocol.md)."""
