"""A typed async Python client for the Embedd-compatible gRPC API."""

from embedd_client.client import EmbeddClient, error_reason

__all__ = ["EmbeddClient", "error_reason"]
